"""The HTTP front: routes only. Each handler decodes, calls the pipeline, encodes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service import __version__
from service.metrics import in_flight
from service.metrics_export import render_metrics
from service.openapi import openapi_with_inference_paths
from service.pipeline import extensions
from service.pipeline.pipeline import Pipeline
from service.pipeline.request import Prediction, RequestContext
from service.protocol import json_codec
from service.protocol.bodies import (
    FeaturePushBody,
    FeedbackBody,
    InstancesBody,
    RepositoryIndexBody,
    predict_body,
)
from service.protocol.errors import GatewayError, InvalidInput, PayloadTooLarge
from service.protocol.limits import Limits, header_count, header_milliseconds
from service.routing.router import VERSION_HEADER
from service.settings import Settings
from service.tokens import (
    FEATURES_WRITE,
    FEEDBACK,
    INFERENCE,
    Forbidden,
    Tokens,
    Unauthenticated,
)
from service.validation import describe

log = logging.getLogger(__name__)

JSON = "application/json"
# A client's deadline over HTTP, in milliseconds (V2 `parameters.timeout` is microseconds).
TIMEOUT_HEADER = "x-mlgate-timeout-ms"

T = TypeVar("T")
# A request still unanswered after this long gets a watcher for its client's disconnect.
WATCH_AFTER_S = 0.002


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_codec.dumps(doc), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: GatewayError) -> Response:
    headers = None
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, round(retry_after)))}
    return json_response({"error": exc.message}, exc.http_status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and header_count("Content-Length", declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def header_deadline(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    return time.monotonic() + header_milliseconds(TIMEOUT_HEADER, raw) / 1000


async def unless_disconnected(request: Request, ctx: RequestContext, work: Awaitable[T]) -> T:
    """Run `work` in this task, cancelled if the client goes away while it waits in a queue.

    A cancelled request still queued in a batcher leaves the queue and never runs; one that
    never queues has nothing to gain, so the watch is armed only when the pipeline says the
    request is queued (`RequestContext.queued`). The watcher task starts once the request has
    taken longer than WATCH_AFTER_S since: most answers come sooner, and a timer costs far less
    than the task it saves on the hot path.
    """
    handler = asyncio.current_task()
    assert handler is not None
    watchers: list[asyncio.Task[None]] = []
    timers: list[asyncio.TimerHandle] = []

    def watch() -> None:
        watchers.append(asyncio.create_task(_cancel_on_disconnect(request, handler)))

    def arm() -> None:
        timers.append(asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch))

    ctx.on_queued = arm
    try:
        return await work
    except asyncio.CancelledError:
        if watchers and watchers[0].done() and not watchers[0].cancelled():
            handler.uncancel()  # this cancellation is handled: it becomes ClientGone
            raise ClientGone() from None
        raise
    finally:
        for timer in timers:
            timer.cancel()
        for watcher in watchers:
            watcher.cancel()


class ClientGone(Exception):
    """The client disconnected before its answer; nobody is left to answer."""


async def _cancel_on_disconnect(request: Request, handler: asyncio.Task[Any]) -> None:
    # The body is read already, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handler.cancel()


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
Endpoint = Callable[[Request], Awaitable[Response]]


def requiring_inference_token(endpoint: Endpoint, tokens: Tokens, required: bool) -> Endpoint:
    """`endpoint`, asking first for a token of the inference scope when `required`; when not,
    `endpoint` itself, so open inference pays nothing per request."""
    if not required:
        return endpoint

    async def checked(request: Request) -> Response:
        tokens.check(request.headers.get("authorization"), INFERENCE)
        return await endpoint(request)

    return checked


def counted_in_flight(name: str, endpoint: Endpoint) -> Endpoint:
    """`endpoint`, counted in mlgate_inflight_requests{endpoint=name} while it runs."""
    gauge = in_flight(name)

    async def counted(request: Request) -> Response:
        with gauge.track_inprogress():
            return await endpoint(request)

    return counted


def authorize_write(request: Request, tokens: Tokens, scope: str) -> None:
    """Feature pushes and label feedback need their scope once any token is configured; with
    none at all they stay open, as the store-less demo needs."""
    if tokens.configured:
        tokens.check(request.headers.get("authorization"), scope)


class V1ModelName(StringConvertor):
    """A model name in a KServe V1 path: no ':', so that `GET /v1/models/m:predict` is the
    predict route's 405, not a readiness check of a model named 'm:predict'."""

    regex = "[^/:]+"


register_url_convertor("v1_model", V1ModelName())


def create_http_app(settings: Settings, lifespan: Lifespan) -> FastAPI:
    """The HTTP routes; `lifespan` puts the pipeline and the lifecycle on `app.state`."""
    app = FastAPI(
        title="mlgate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # A trailing slash is a path of its own (404 with an error body): Starlette's redirect
        # would answer it with an empty 307, outside the V2 error shape.
        redirect_slashes=False,
        # mlgate exports Prometheus metrics (service/metrics.py). FastAPI's native OpenTelemetry
        # would look up three global providers on every request to learn it is unconfigured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    limit = settings.max_body_bytes
    limits = Limits.of(settings)
    tokens = Tokens.load(settings)
    app.openapi = openapi_with_inference_paths(app)  # type: ignore[method-assign]

    def pipeline(request: Request) -> Pipeline:
        found: Pipeline = request.app.state.pipeline
        return found

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return json_response(
            {"error": f"{message}: {request.method} {request.url.path}"}, exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return json_response({"error": f"invalid request: {describe(exc)}"}, 400)

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> Response:
        return json_response({"error": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return json_response({"error": "forbidden"}, 403)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        # 499 in nginx's sense; nobody reads it.
        return json_response({"error": "client closed the request"}, 499)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return json_response({"error": "internal error"}, 500)

    # ---- inference -----------------------------------------------------------------
    # Plain Starlette routes: FastAPI would solve dependencies and validate two string path
    # parameters on every request, about a tenth of the event loop's time under load. Their
    # exceptions still reach the handlers above; service/openapi.py documents them. First
    # in the table (no other route's path overlaps theirs), they are matched soonest.

    async def infer(request: Request) -> Response:
        model, version = path_model_version(request)
        body = await read_body(request, limit)
        header = request.headers.get(json_codec.HEADER_LENGTH)
        header_length = None if header is None else header_count(json_codec.HEADER_LENGTH, header)
        decoded = json_codec.decode_infer_request(body, header_length, limits)
        ctx = RequestContext(
            "infer",
            model,
            version or request.headers.get(VERSION_HEADER),
            request_id=decoded.id or "",
            deadline=header_deadline(request),
            outputs=decoded.outputs,
            limits=limits,
        )
        result = await unless_disconnected(request, ctx, pipeline(request).infer(ctx, decoded))
        payload, json_size = json_codec.encode_infer_response(
            result, decoded.binary_outputs, decoded.binary_all_outputs
        )
        headers = {VERSION_HEADER: result.model_version}
        if json_size is None:
            return Response(payload, media_type=JSON, headers=headers)
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={json_codec.HEADER_LENGTH: str(json_size), **headers},
        )

    async def predict(request: Request) -> Response:
        model, version = path_model_version(request)
        body = predict_body(json_codec.loads(await read_body(request, limit)))
        # The id goes back out in a response header: only a checked one may.
        request_id = limits.request_id(body.request_id, "'request_id'") or limits.request_id(
            request.headers.get("x-request-id"), "x-request-id"
        )
        ctx = RequestContext(
            "predict_instances" if isinstance(body, InstancesBody) else "predict",
            model,
            version or request.headers.get(VERSION_HEADER),
            request_id=request_id,
            deadline=header_deadline(request),
            limits=limits,
        )
        if isinstance(body, InstancesBody):
            work = pipeline(request).predict_instances(ctx, body.instances, body.parameters)
            render = v1_predictions
        else:
            work = pipeline(request).predict(ctx, body.entities, body.features, body.parameters)
            render = entity_predictions
        result = await unless_disconnected(request, ctx, work)
        return json_response(
            render(result),
            headers={"x-request-id": result.request_id, VERSION_HEADER: result.version},
        )

    def inference(name: str, endpoint: Endpoint) -> Endpoint:
        checked = requiring_inference_token(endpoint, tokens, settings.require_inference_token)
        return counted_in_flight(name, checked)

    for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        app.add_route(path, inference("infer", infer), methods=["POST"])
    for path in ("/v1/models/{model}:predict", "/v1/models/{model}/versions/{version}:predict"):
        app.add_route(path, inference("predict", predict), methods=["POST"])

    # ---- health, metadata and metrics ----------------------------------------------

    @app.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> Response:
        # A draining process still serves, but asks load balancers to send no more.
        ok = not request.app.state.drain.draining and await pipeline(request).ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    @app.get("/v2")
    async def server_metadata(request: Request) -> Response:
        return json_response(pipeline(request).server_metadata())

    # Before /v2/models/{model}, which would take "stats" for a model's name.
    @app.get("/v2/models/stats")
    async def all_statistics(request: Request) -> Response:
        return json_response(extensions.statistics(pipeline(request).registry, "", ""))

    @app.get("/v2/models/{model}/stats")
    @app.get("/v2/models/{model}/versions/{version}/stats")
    async def model_statistics(request: Request, model: str, version: str = "") -> Response:
        return json_response(extensions.statistics(pipeline(request).registry, model, version))

    @app.get("/v2/models/{model}/config")
    @app.get("/v2/models/{model}/versions/{version}/config")
    async def model_config(request: Request, model: str, version: str | None = None) -> Response:
        return json_response(extensions.model_config(pipeline(request).route, model, version))

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        # tritonclient sends no body; Triton's `ready` filters nothing here: every version
        # listed is loaded and ready.
        body = await read_body(request, limit)
        if body.strip():
            RepositoryIndexBody.of(json_codec.loads(body))
        return json_response(extensions.repository_index(pipeline(request).registry))

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
        return json_response(pipeline(request).model_metadata(model, version))

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
        served = pipeline(request).route.version(model, version)
        ok = not request.app.state.drain.draining
        return json_response({"name": served.model, "ready": ok}, 200 if ok else 503)

    async def v1_model_ready(request: Request) -> Response:
        served = pipeline(request).route.version(request.path_params["model"], None)
        return json_response({"name": served.model, "ready": True})

    # KServe V1 readiness; a plain route, as FastAPI cannot take the path's convertor.
    app.add_route("/v1/models/{model:v1_model}", v1_model_ready, methods=["GET"])

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)

    # ---- feature push --------------------------------------------------------------

    @app.post("/v1/features/{view_name}")
    async def push_features(request: Request, view_name: str) -> Response:
        authorize_write(request, tokens, FEATURES_WRITE)
        features = pipeline(request).features
        view = features.view(view_name)
        body = FeaturePushBody.of(json_codec.loads(await read_body(request, limit)))
        ids, values = rows_to_matrix(view.entity, view.feature_names, view.np_dtype, body.rows)
        await features.push(view, ids, values, body.event_time_ms)
        return json_response({"view": view.name, "written": len(ids)})

    # ---- label feedback ------------------------------------------------------------

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        authorize_write(request, tokens, FEEDBACK)
        body = FeedbackBody.of(json_codec.loads(await read_body(request, limit)))
        return json_response(await pipeline(request).feedback.submit(body))

    return app


def path_model_version(request: Request) -> tuple[str, str | None]:
    """The model named in the path, and its version: from the path, else `?version=`.

    The query parameter is what FastAPI made of these routes' optional `version` argument;
    clients may send it still.
    """
    params = request.path_params
    version = params.get("version")
    if version is None and request.scope["query_string"]:  # parsing an empty one costs µs
        version = request.query_params.get("version")
    return params["model"], version


def predictions_json(outputs: dict[str, np.ndarray]) -> Any:
    """One output of width 1: a flat list per entity; otherwise name -> rows."""
    if len(outputs) == 1:
        (arr,) = outputs.values()
        return arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
    return outputs


def entity_predictions(result: Prediction) -> dict[str, Any]:
    return {
        "model": result.model,
        "model_version": result.version,
        "request_id": result.request_id,
        "predictions": predictions_json(result.outputs),
        "feature_status": result.feature_status(),
        "flags": result.flags_per_row(),
    }


def v1_predictions(result: Prediction) -> dict[str, Any]:
    """KServe V1's answer: a prediction per instance (one output's values, or an object of
    them per row, as TensorFlow Serving's row format); the rows' contract flags only when a
    contract flagged one."""
    if len(result.outputs) == 1:
        doc: dict[str, Any] = {"predictions": predictions_json(result.outputs)}
    else:
        rows = len(next(iter(result.outputs.values())))
        doc = {
            "predictions": [
                {name: arr[i] for name, arr in result.outputs.items()} for i in range(rows)
            ]
        }
    if result.flags:
        doc["flags"] = result.flags_per_row()
    return doc


def rows_to_matrix(
    entity: str, features: list[str], dtype: np.dtype[Any], rows: list[Any]
) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    values = np.empty((len(rows), len(features)), dtype=dtype)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get(entity), str):
            raise InvalidInput(f"rows[{i}] must be an object with a string '{entity}'")
        missing = [f for f in features if f not in row]
        if missing:
            raise InvalidInput(f"rows[{i}] lacks feature(s): {', '.join(missing)}")
        try:
            values[i] = [row[f] for f in features]
        except (TypeError, ValueError):
            raise InvalidInput(f"rows[{i}]: feature values must be numbers") from None
        ids.append(row[entity])
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InvalidInput("feature values must be finite")
    return ids, values
