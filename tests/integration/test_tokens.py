"""Scoped bearer tokens on both fronts, and the anonymous OpenAPI document, in process.

The gateway runs in this test's event loop (the HTTP app through httpx.ASGITransport, the gRPC
front on a free port through the app's lifespan) with the memory store and the real models.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from feature_store.views import load_views
from loadtests.processes import free_port
from service.server import create_app
from service.settings import Settings
from tests.conftest import MODELS_DIR

INFER = "/v2/models/fraud_mlp/infer"
PREDICT = "/v1/models/fraud_mlp:predict"
PUSH = "/v1/features/txn_stats"
ADMIN_GET = "/admin/models/fraud_mlp"
ADMIN_PATCH = "/admin/models/fraud_mlp/routing"
ROW = np.linspace(0, 1, 32, dtype=np.float32)
V2_BODY = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 32], "data": ROW.tolist()}]
}
# One token per scope, and one with two; the token file's other forms mean admin.
TOKEN_FILE = """\
# name:token:scopes
reader:tok-inference:inference
writer:tok-features:features:write
operator:tok-admin:admin
pipeline:tok-both:inference,features:write
"""


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


def push_body() -> dict[str, Any]:
    view = load_views(MODELS_DIR / "feature_views.yaml")["txn_stats"]
    row: dict[str, Any] = {"user_id": "pushed-1"}
    row.update({name: 0.5 for name in view.feature_names})
    return {"rows": [row]}


@asynccontextmanager
async def gateway(tmp_path: Path, **given: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP front of a gateway with `given` settings; gRPC too when grpc_port is given."""
    settings = Settings(
        models=MODELS_DIR, feature_store="memory://", demo_entities=10, audit="none", **given
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    return path


async def call(client: httpx.AsyncClient, route: str, token: str | None) -> int:
    headers = bearer(token)
    if route == ADMIN_GET:
        r = await client.get(route, headers=headers)
    elif route == ADMIN_PATCH:
        r = await client.patch(route, headers=headers, json={"canary": None})
    else:
        body = {INFER: V2_BODY, PREDICT: {"entities": ["u1"]}, PUSH: push_body()}[route]
        r = await client.post(route, headers=headers, json=body)
    if r.status_code >= 400:
        # The V2 error shape, never the token or a traceback.
        assert set(r.json()) == {"error"} and "tok-" not in r.text
    return r.status_code


async def test_each_scope_allows_exactly_its_routes(tmp_path: Path, token_file: Path) -> None:
    allowed = {
        "tok-inference": {INFER, PREDICT},
        "tok-features": {PUSH},
        "tok-admin": {ADMIN_GET, ADMIN_PATCH},
        "tok-both": {INFER, PREDICT, PUSH},
    }
    routes = [INFER, PREDICT, PUSH, ADMIN_GET, ADMIN_PATCH]
    async with gateway(
        tmp_path, admin_token_file=token_file, require_inference_token=True
    ) as client:
        for route in routes:
            assert await call(client, route, None) == 401, route
            assert await call(client, route, "not-a-token") == 403, route
        got = {token: {r: await call(client, r, token) for r in routes} for token in allowed}
    want = {
        token: {r: 200 if r in routes_of else 403 for r in routes}
        for token, routes_of in allowed.items()
    }
    assert got == want


async def test_a_missing_token_is_401_with_a_bearer_challenge(
    tmp_path: Path, token_file: Path
) -> None:
    async with gateway(
        tmp_path, admin_token_file=token_file, require_inference_token=True
    ) as client:
        r = await client.post(INFER, json=V2_BODY, headers={"authorization": "Basic tok-inference"})
    assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
    assert r.headers["www-authenticate"] == "Bearer"


async def test_inference_is_open_unless_tokens_are_required(
    tmp_path: Path, token_file: Path
) -> None:
    async with gateway(tmp_path, admin_token_file=token_file) as client:
        assert await call(client, INFER, None) == 200
        assert await call(client, PREDICT, None) == 200
        # Still, the push and the admin API keep their scopes.
        assert await call(client, PUSH, None) == 401
        assert await call(client, ADMIN_GET, "tok-inference") == 403


async def test_feature_push_is_open_when_no_token_is_configured(tmp_path: Path) -> None:
    async with gateway(tmp_path) as client:
        assert await call(client, PUSH, None) == 200
        # The admin API is not: with no token configured it refuses everyone.
        assert await call(client, ADMIN_GET, "anything") == 403


async def test_label_feedback_needs_the_feedback_scope_once_any_token_is_configured(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE + "labeller:tok-feedback:feedback\n")
    body = {"model": "fraud_mlp", "request_id": "r1", "labels": [1]}

    async def status(client: httpx.AsyncClient, token: str | None) -> int:
        return (await client.post("/v1/feedback", json=body, headers=bearer(token))).status_code

    async with gateway(tmp_path, admin_token_file=path, require_inference_token=True) as client:
        got = {token: await status(client, token) for token in (None, "tok-inference", "tok-admin")}
        # Past the token check; with no audit log (audit="none") there is nothing to join.
        allowed = await client.post("/v1/feedback", json=body, headers=bearer("tok-feedback"))
    assert got == {None: 401, "tok-inference": 403, "tok-admin": 403}
    assert allowed.status_code == 409 and "audit log" in allowed.json()["error"]
    async with gateway(tmp_path) as client:
        assert await status(client, None) == 409


async def test_the_single_admin_token_is_admin_only(tmp_path: Path) -> None:
    async with gateway(tmp_path, admin_token="tok-env") as client:
        assert await call(client, ADMIN_PATCH, "tok-env") == 200
        assert await call(client, PUSH, None) == 401
        assert await call(client, PUSH, "tok-env") == 403


async def test_token_lines_without_scopes_mean_admin(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("ops:tok-named\ntok-bare\n")
    async with gateway(tmp_path, admin_token_file=path) as client:
        for token in ("tok-named", "tok-bare"):
            assert await call(client, ADMIN_GET, token) == 200
            assert await call(client, PUSH, token) == 403


async def test_grpc_inference_asks_for_a_token_in_metadata(
    tmp_path: Path, token_file: Path
) -> None:
    port = free_port()
    settings = {"admin_token_file": token_file, "require_inference_token": True, "grpc_port": port}
    request = service_pb2.ModelInferRequest(
        model_name="fraud_mlp",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="features",
                datatype="FP32",
                shape=[1, 32],
                contents=service_pb2.InferTensorContents(fp32_contents=ROW.tolist()),
            )
        ],
    )

    def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
        return tuple(bearer(token).items())

    async with (
        gateway(tmp_path, **settings),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def infer(token: str | None) -> grpc.StatusCode:
            try:
                await stub.ModelInfer(request, metadata=metadata(token), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        async def stream(token: str | None) -> grpc.StatusCode:
            call = stub.ModelStreamInfer(iter([request]), metadata=metadata(token), timeout=10)
            try:
                answers = [answer async for answer in call]
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            assert [a.error_message for a in answers] == [""]
            return grpc.StatusCode.OK

        assert await infer(None) == grpc.StatusCode.UNAUTHENTICATED
        assert await infer("tok-features") == grpc.StatusCode.PERMISSION_DENIED
        assert await infer("tok-inference") == grpc.StatusCode.OK
        assert await stream(None) == grpc.StatusCode.UNAUTHENTICATED
        assert await stream("tok-admin") == grpc.StatusCode.PERMISSION_DENIED
        assert await stream("tok-both") == grpc.StatusCode.OK
        # Health and metadata stay open.
        live = await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
        assert live.live


async def test_requiring_inference_tokens_with_none_of_that_scope_is_refused_at_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens"
    path.write_text("ops:tok-admin\n")
    settings = Settings(models=MODELS_DIR, admin_token_file=path, require_inference_token=True)
    with pytest.raises(ValueError, match="no configured token has the 'inference' scope"):
        create_app(settings)
    with pytest.raises(ValidationError, match="require_inference_token needs admin_token_file"):
        Settings(admin_token="tok-admin", require_inference_token=True)


async def test_openapi_documents_the_inference_routes_and_hides_the_admin_api(
    tmp_path: Path, token_file: Path
) -> None:
    async with gateway(tmp_path, admin_token_file=token_file) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    assert not [p for p in paths if p.startswith("/admin")]
    schemas = doc["components"]["schemas"]
    bodies = {
        "/v2/models/{model}/infer": "InferenceRequest",
        "/v2/models/{model}/versions/{version}/infer": "InferenceRequest",
        "/v1/models/{model}:predict": "PredictRequest",
        "/v1/models/{model}/versions/{version}:predict": "PredictRequest",
        "/v1/features/{view_name}": "FeaturePushBody",
    }
    for path, body in bodies.items():
        post = paths[path]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{body}"}, path
        named = {p["name"] for p in post["parameters"] if p["in"] == "path"}
        assert named == set(re.findall(r"\{(\w+)\}", path)), path
        assert {"200", "400", "401", "403", "404"} <= set(post["responses"]), path
    assert schemas["PredictBody"]["required"] == ["entities"]
    assert schemas["FeaturePushBody"]["additionalProperties"] is False
    getters = ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model}"]
    getters += ["/v2/models/{model}/config", "/v2/models/stats", "/v1/models/{model}"]
    for path in getters:
        assert "get" in paths[path], path
    assert schemas["InstancesBody"]["required"] == ["instances"]
    assert "requestBody" in paths["/v2/repository/index"]["post"]
    # Every reference resolves inside the document.
    assert not [ref for ref in refs(doc) if ref.split("/")[-1] not in schemas]


def refs(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        found = [doc["$ref"]] if isinstance(doc.get("$ref"), str) else []
        return found + [r for v in doc.values() for r in refs(v)]
    if isinstance(doc, list):
        return [r for v in doc for r in refs(v)]
    return []
