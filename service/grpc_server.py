"""The gRPC front: the Open Inference Protocol's GRPCInferenceService on the shared Pipeline.

Handlers decode, call the pipeline, encode, like the HTTP routes. The composition root
(service/server.py) starts it on the HTTP front's event loop, so both fronts share one
pipeline, its model sessions, store connections and metrics. Beside the inference service it serves
grpc.health.v1 (for Kubernetes gRPC probes) and server reflection (for grpcurl).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from grpc.aio import ServicerContext
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from service.metrics import in_flight
from service.pipeline import extensions
from service.pipeline.pipeline import Pipeline
from service.pipeline.request import RequestContext
from service.protocol.grpc_codec import (
    Message,
    decode_infer_request,
    encode_infer_response,
    grpc_status,
    stream_error,
)
from service.protocol.limits import DEFAULT_LIMITS, Limits
from service.protocol.v2 import InferRequest
from service.settings import Settings
from service.tokens import INFERENCE, Forbidden, Tokens, Unauthenticated

log = logging.getLogger(__name__)

_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME: str = _SERVICE.full_name
# In-flight calls get this long to finish when the process stops; new ones are refused.
STOP_GRACE_S = 5.0
# How often the health service re-checks readiness (a feature store ping).
HEALTH_POLL_S = 1.0
# Requests of one stream run concurrently, so they can meet in the batcher, up to this many;
# answers still leave in request order: tritonclient hands a stream's error to its callback
# without the request id, so the order is all a client has to pair them.
STREAM_WINDOW = 64

Unary = Callable[[Any, Message, ServicerContext], Awaitable[Message]]


def unary(handler: Unary) -> Unary:
    """Answer a failed call with its status code and message, never a traceback."""

    @functools.wraps(handler)
    async def call(self: Any, request: Message, context: ServicerContext) -> Message:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            code, message = grpc_status(exc)
            await context.abort(code, message)

    return call


def client_deadline(context: ServicerContext) -> float | None:
    """The call's deadline on time.monotonic(), if the client set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer:
    """inference.GRPCInferenceService: health, metadata, config, statistics, the repository
    index and inference."""

    def __init__(self, pipeline: Pipeline, limits: Limits = DEFAULT_LIMITS) -> None:
        self.pipeline = pipeline
        self.limits = limits
        # Set when the process drains: still serving, but asking clients to go elsewhere.
        self.draining = False

    @unary
    async def ServerLive(self, request: Message, context: ServicerContext) -> Message:
        return service_pb2.ServerLiveResponse(live=True)

    @unary
    async def ServerReady(self, request: Message, context: ServicerContext) -> Message:
        ready = not self.draining and await self.pipeline.ready()
        return service_pb2.ServerReadyResponse(ready=ready)

    @unary
    async def ModelReady(self, request: Message, context: ServicerContext) -> Message:
        self.pipeline.route.version(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=not self.draining)

    @unary
    async def ServerMetadata(self, request: Message, context: ServicerContext) -> Message:
        return service_pb2.ServerMetadataResponse(**self.pipeline.server_metadata())

    @unary
    async def ModelMetadata(self, request: Message, context: ServicerContext) -> Message:
        return service_pb2.ModelMetadataResponse(
            **self.pipeline.model_metadata(request.name, request.version)
        )

    @unary
    async def ModelConfig(self, request: Message, context: ServicerContext) -> Message:
        doc = extensions.model_config(self.pipeline.route, request.name, request.version)
        return service_pb2.ModelConfigResponse(
            config=json_format.ParseDict(doc, model_config_pb2.ModelConfig())
        )

    @unary
    async def ModelStatistics(self, request: Message, context: ServicerContext) -> Message:
        doc = extensions.statistics(self.pipeline.registry, request.name, request.version)
        return json_format.ParseDict(doc, service_pb2.ModelStatisticsResponse())

    @unary
    async def RepositoryIndex(self, request: Message, context: ServicerContext) -> Message:
        # Every version listed is loaded and ready, so `ready` filters nothing out.
        models = extensions.repository_index(self.pipeline.registry)
        return json_format.ParseDict({"models": models}, service_pb2.RepositoryIndexResponse())

    @unary
    async def ModelInfer(self, request: Message, context: ServicerContext) -> Message:
        with in_flight("grpc_infer").track_inprogress():
            decoded = decode_infer_request(request, client_deadline(context), self.limits)
            ctx = context_of("grpc_infer", request, decoded, self.limits)
            result = await self.pipeline.infer(ctx, decoded)
            return encode_infer_response(result, raw=decoded.binary_all_outputs)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Message], context: ServicerContext
    ) -> AsyncIterator[Message]:
        """Every request is answered on the stream; a failed one as error_message."""
        deadline = client_deadline(context)
        window = asyncio.Semaphore(STREAM_WINDOW)
        answers: asyncio.Queue[asyncio.Task[Message] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    answers.put_nowait(asyncio.create_task(self._stream_answer(request, deadline)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield await answer
                window.release()
            await reader
        finally:
            reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is not None:
                    pending.cancel()

    async def _stream_answer(self, request: Message, deadline: float | None) -> Message:
        decoded = None
        try:
            with in_flight("grpc_stream").track_inprogress():
                decoded = decode_infer_request(request, deadline, self.limits)
                ctx = context_of("grpc_stream", request, decoded, self.limits)
                result = await self.pipeline.infer(ctx, decoded)
        except Exception as exc:
            # A refused id is not echoed: the client pairs answers by their order anyway.
            echoed = decoded.id if decoded is not None else None
            return stream_error(grpc_status(exc)[1], echoed or "")
        return service_pb2.ModelStreamInferResponse(
            infer_response=encode_infer_response(result, raw=decoded.binary_all_outputs)
        )


def context_of(
    endpoint: str, request: Message, decoded: InferRequest, limits: Limits
) -> RequestContext:
    return RequestContext(
        endpoint,
        request.model_name,
        request.model_version or None,
        request_id=decoded.id or "",
        deadline=decoded.deadline,
        outputs=decoded.outputs,
        limits=limits,
    )


def _not_served(name: str) -> Unary:
    async def call(self: Any, request: Message, context: ServicerContext) -> Message:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"mlgate does not serve {name}")

    return call


# Triton's other extras (repository control, shared memory, trace and log settings) are not
# served. The generated base servicer answers them too, but logs a traceback each time.
for _method in _SERVICE.methods:
    if _method.name not in vars(InferenceServicer):
        setattr(InferenceServicer, _method.name, _not_served(_method.name))


class InferenceTokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """ModelInfer and ModelStreamInfer ask for `authorization: Bearer <token>` metadata with
    the inference scope (--require-inference-token); other calls pass untouched."""

    METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("ModelInfer", "ModelStreamInfer"))

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method not in self.METHODS:
            return await continuation(details)
        header = next(
            (str(v) for k, v in details.invocation_metadata or () if k == "authorization"), None
        )
        try:
            self._tokens.check(header, INFERENCE)
        except Unauthenticated:
            return _refusal(details.method, grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
        except Forbidden:
            return _refusal(details.method, grpc.StatusCode.PERMISSION_DENIED, "forbidden")
        return await continuation(details)


def _refusal(method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: ServicerContext) -> None:
        await context.abort(code, message)

    if method.endswith("/ModelStreamInfer"):
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class GrpcFront:
    """The grpc.aio server: inference, health and reflection services on one port."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        assert settings.grpc_port is not None
        limit = settings.grpc_max_message_bytes
        self._pipeline = pipeline
        interceptors = []
        if settings.require_inference_token:
            interceptors.append(InferenceTokenCheck(Tokens.load(settings)))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # `--workers N` processes all bind this port; the kernel spreads connections.
                ("grpc.so_reuseport", 1),
            ],
        )
        self._inference = InferenceServicer(pipeline, Limits.of(settings))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._inference, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        port = self._server.add_insecure_port(f"{host}:{settings.grpc_port}")
        # The bound port: --grpc-port 0 asks for any free one.
        self.address = f"{host}:{port}"
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, pipeline: Pipeline, settings: Settings) -> GrpcFront:
        front = cls(pipeline, settings)
        await front._update_readiness()
        for model in pipeline.registry.models:
            await front._health.set(model, health_pb2.HealthCheckResponse.SERVING)
        await front._server.start()
        front._poller = asyncio.create_task(front._poll_readiness())
        log.info("gRPC front on %s", front.address)
        return front

    async def drain(self) -> None:
        """Every health status NOT_SERVING and V2 ServerReady and ModelReady false from now on
        (later readiness checks are ignored); calls are still served until stop()."""
        self._inference.draining = True
        await self._health.enter_graceful_shutdown()

    async def stop(self) -> None:
        await self.drain()
        if self._poller is not None:
            self._poller.cancel()
        await self._server.stop(STOP_GRACE_S)

    async def _poll_readiness(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            await self._update_readiness()

    async def _update_readiness(self) -> None:
        """The server-wide status ("" and the inference service) follows Pipeline.ready()."""
        try:
            ready = await self._pipeline.ready()
        except Exception:
            # The poller must outlive a surprise, or the status would freeze at its last value.
            log.exception("readiness check failed")
            ready = False
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
