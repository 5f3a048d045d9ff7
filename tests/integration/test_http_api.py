"""End to end over loopback: `mlgate serve` against a real redis-server, real HTTP clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http

from feature_store.open import open_store
from feature_store.views import load_views
from tests.conftest import MODELS_DIR, GatewayProcess, RedisServer, seeded_url, start_gateway

ENTITIES = 2_000
DB = 2


@pytest.fixture(scope="module")
def store_url(redis_server: RedisServer) -> str:
    return seeded_url(redis_server, DB, ENTITIES)


@pytest.fixture(scope="module")
def gateway(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = start_gateway(
        tmp_path_factory.mktemp("gw"),
        "--feature-store",
        store_url,
        "--max-body-bytes",
        "65536",
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        yield c


def session(version: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(MODELS_DIR / "fraud_mlp" / version / "model.onnx"))


def reference(version: str, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = session(version).run(None, {"features": x})[0]
    return out


def features_of(store_url: str, ids: list[str]) -> np.ndarray:
    async def read() -> np.ndarray:
        views = load_views(MODELS_DIR / "feature_views.yaml")
        store = open_store(store_url)
        try:
            rows = await store.read([views["txn_stats"], views["user_profile"]], ids)
        finally:
            await store.close()
        return np.concatenate([r.values for r in rows], axis=1).astype(np.float32)

    return asyncio.run(read())


def v2_body(x: np.ndarray) -> dict[str, object]:
    return {
        "id": "req-1",
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
        ],
    }


# ---- health and metadata ------------------------------------------------------------


def test_health_endpoints_answer_live_and_ready(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_server_metadata_names_the_gateway(client: httpx.Client) -> None:
    doc = client.get("/v2").json()
    assert doc["name"] == "mlgate" and "binary_tensor_data" in doc["extensions"]


def test_model_metadata_lists_versions_and_tensors(client: httpx.Client) -> None:
    doc = client.get("/v2/models/fraud_mlp").json()
    assert doc["name"] == "fraud_mlp"
    assert doc["versions"] == ["1", "2"]
    assert doc["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 32]}]
    assert doc["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]
    assert client.get("/v2/models/fraud_mlp/versions/1").status_code == 200
    assert client.get("/v2/models/fraud_mlp/versions/1/ready").json() == {
        "name": "fraud_mlp",
        "ready": True,
    }


# ---- inference ------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("version", ["1", "2"])
def test_json_infer_matches_onnxruntime(client: httpx.Client, rows: int, version: str) -> None:
    x = np.random.default_rng(rows).normal(size=(rows, 32)).astype(np.float32)
    r = client.post(f"/v2/models/fraud_mlp/versions/{version}/infer", json=v2_body(x))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-1" and doc["model_version"] == version
    (out,) = doc["outputs"]
    assert out["name"] == "probability" and out["shape"] == [rows, 1]
    np.testing.assert_allclose(
        np.array(out["data"], dtype=np.float32).reshape(rows, 1), reference(version, x), atol=1e-6
    )


def test_default_version_is_the_configured_one(client: httpx.Client) -> None:
    x = np.zeros((1, 32), dtype=np.float32)
    doc = client.post("/v2/models/fraud_mlp/infer", json=v2_body(x)).json()
    assert doc["model_version"] == "2"


def test_entity_id_input_fetches_features(client: httpx.Client, store_url: str) -> None:
    ids = ["u1", "u17", "u1999"]
    body = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [3], "data": ids}]}
    r = client.post("/v2/models/fraud_mlp/infer", json=body)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 1)
    np.testing.assert_allclose(got, reference("2", features_of(store_url, ids)), atol=1e-6)


def test_predict_returns_predictions_and_feature_status(
    client: httpx.Client, store_url: str
) -> None:
    r = client.post("/v1/models/fraud_mlp:predict", json={"entities": ["u5", "nobody"]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "fraud_mlp" and doc["model_version"] == "2"
    assert r.headers["x-mlgate-version"] == "2" and r.headers["x-request-id"] == doc["request_id"]
    assert doc["feature_status"] == [
        {"txn_stats": "fresh", "user_profile": "fresh"},
        {"txn_stats": "missing", "user_profile": "missing"},
    ]
    expected = reference("2", features_of(store_url, ["u5", "nobody"])).reshape(-1)
    np.testing.assert_allclose(doc["predictions"], expected, atol=1e-6)


def test_predict_overrides_change_the_features_used(client: httpx.Client, store_url: str) -> None:
    x = features_of(store_url, ["u5"])
    views = load_views(MODELS_DIR / "feature_views.yaml")
    first = views["txn_stats"].feature_names[0]
    x[0, 0] = 1234.0
    body = {"entities": ["u5"], "features": {f"txn_stats.{first}": 1234.0}}
    doc = client.post("/v1/models/fraud_mlp/versions/1:predict", json=body).json()
    np.testing.assert_allclose(doc["predictions"], reference("1", x).reshape(-1), atol=1e-6)


def test_pushed_features_are_served(client: httpx.Client) -> None:
    views = load_views(MODELS_DIR / "feature_views.yaml")
    row: dict[str, object] = {"user_id": "pushed-1"}
    row.update({name: 0.5 for name in views["txn_stats"].feature_names})
    r = client.post("/v1/features/txn_stats", json={"rows": [row]})
    assert r.status_code == 200 and r.json() == {"view": "txn_stats", "written": 1}
    doc = client.post("/v1/models/fraud_mlp:predict", json={"entities": ["pushed-1"]}).json()
    assert doc["feature_status"] == [{"txn_stats": "fresh", "user_profile": "missing"}]


def test_metrics_count_requests_by_model_and_outcome(client: httpx.Client) -> None:
    client.post("/v1/models/fraud_mlp:predict", json={"entities": ["u1"]})
    text = client.get("/metrics").text
    assert (
        'mlgate_requests_total{endpoint="predict",model="fraud_mlp",outcome="ok",version="2"}'
        in text
    )
    assert "mlgate_feature_fetch_duration_seconds_bucket" in text
    assert 'mlgate_feature_rows_total{status="fresh",view="txn_stats"}' in text


# ---- errors -----------------------------------------------------------------------------

BAD_REQUESTS = [
    ("malformed JSON", b"{not json", 400, "malformed JSON"),
    ("no inputs", b'{"inputs": []}', 400, "non-empty 'inputs'"),
    (
        "wrong shape",
        b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}',
        400,
        "shape [1, 3] does not match [-1, 32]",
    ),
    (
        "wrong datatype",
        b'{"inputs":[{"name":"features","datatype":"INT64","shape":[1,32],"data":'
        + str(list(range(32))).encode()
        + b"}]}",
        400,
        "datatype INT64 does not match the model's FP32",
    ),
    (
        "count does not fit shape",
        b'{"inputs":[{"name":"features","datatype":"FP32","shape":[2,32],"data":[1,2]}]}',
        400,
        "needs 64 values, got 2",
    ),
    (
        "unknown input",
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}',
        400,
        "unknown input 'x'",
    ),
    (
        "strings as numbers",
        b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1],"data":["NaN"]}]}',
        400,
        "FP32 data must be numbers",
    ),
    (
        "unknown datatype",
        b'{"inputs":[{"name":"features","datatype":"FLOAT","shape":[1],"data":[1]}]}',
        400,
        "unsupported datatype 'FLOAT'",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_infer_requests_get_a_clear_error(
    client: httpx.Client, case: str, body: bytes, status: int, message: str
) -> None:
    r = client.post("/v2/models/fraud_mlp/infer", content=body)
    assert r.status_code == status
    assert message in r.json()["error"]


def test_nan_in_binary_tensor_is_refused(client: httpx.Client) -> None:
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 3] = np.nan
    header = (
        b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,32],'
        b'"parameters":{"binary_data_size":128}}]}'
    )
    r = client.post(
        "/v2/models/fraud_mlp/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "NaN" in r.json()["error"]


def test_unknown_model_and_version_are_404(client: httpx.Client) -> None:
    r = client.post("/v2/models/nope/infer", json=v2_body(np.zeros((1, 32), np.float32)))
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = client.get("/v2/models/fraud_mlp/versions/9")
    assert r.status_code == 404 and "version '9'" in r.json()["error"]
    assert client.get("/v2/models/nope/ready").status_code == 404
    r = client.post("/v1/models/nope:predict", json={"entities": ["u1"]})
    assert r.status_code == 404


def test_unknown_route_is_a_json_404(client: httpx.Client) -> None:
    r = client.get("/v3/whatever")
    assert r.status_code == 404 and "error" in r.json()


def test_oversized_body_is_413_without_reading_it(client: httpx.Client) -> None:
    r = client.post("/v2/models/fraud_mlp/infer", content=b"x" * 70_000)
    assert r.status_code == 413 and "exceeds the limit of 65536" in r.json()["error"]


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/v2/models/fraud_mlp/infer", content=chunks())
    assert r.status_code == 413


def test_predict_input_errors(client: httpx.Client) -> None:
    r = client.post("/v1/models/fraud_mlp:predict", json={"entities": []})
    assert r.status_code == 400 and "non-empty list" in r.json()["error"]
    r = client.post(
        "/v1/models/fraud_mlp:predict", json={"entities": ["u1"], "features": {"nope": 1}}
    )
    assert r.status_code == 400 and "unknown feature 'nope'" in r.json()["error"]


def test_store_down_is_503_and_not_ready(tmp_path: Path) -> None:
    from tests.conftest import free_port

    gw = start_gateway(tmp_path, "--feature-store", f"redis://127.0.0.1:{free_port()}/0")
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert c.get("/v2/health/ready").status_code == 503
            r = c.post("/v1/models/fraud_mlp:predict", json={"entities": ["u1"]})
            assert r.status_code == 503 and "unavailable" in r.json()["error"]
            # Raw tensors need no feature store: they are still served.
            x = np.zeros((1, 32), dtype=np.float32)
            assert c.post("/v2/models/fraud_mlp/infer", json=v2_body(x)).status_code == 200
    finally:
        gw.stop()


# ---- tritonclient.http as a client ------------------------------------------------------


@pytest.fixture(scope="module")
def triton(gateway: GatewayProcess) -> Iterator[triton_http.InferenceServerClient]:
    c = triton_http.InferenceServerClient(f"127.0.0.1:{gateway.port}")
    yield c
    c.close()


def test_tritonclient_health_and_metadata(triton: triton_http.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("fraud_mlp")
    assert triton.get_server_metadata()["name"] == "mlgate"
    meta = triton.get_model_metadata("fraud_mlp", "1")
    assert meta["inputs"][0]["shape"] == [-1, 32]


@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_matches_onnxruntime(
    triton: triton_http.InferenceServerClient, rows: int, binary: bool
) -> None:
    x = np.random.default_rng(100 + rows).normal(size=(rows, 32)).astype(np.float32)
    inp = triton_http.InferInput("features", [rows, 32], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton_http.InferRequestedOutput("probability", binary_data=binary)
    result = triton.infer("fraud_mlp", [inp], model_version="1", outputs=[out])
    got = result.as_numpy("probability")
    assert got is not None
    np.testing.assert_allclose(got, reference("1", x), atol=1e-6)


def test_tritonclient_entity_infer(
    triton: triton_http.InferenceServerClient, store_url: str
) -> None:
    ids = np.array([b"u3", b"u4"], dtype=np.object_)
    inp = triton_http.InferInput("user_id", [2], "BYTES")
    inp.set_data_from_numpy(ids)
    result = triton.infer("fraud_mlp", [inp])
    got = result.as_numpy("probability")
    assert got is not None
    np.testing.assert_allclose(got, reference("2", features_of(store_url, ["u3", "u4"])), atol=1e-6)


def test_tritonclient_sees_errors(triton: triton_http.InferenceServerClient) -> None:
    from tritonclient.utils import InferenceServerException

    inp = triton_http.InferInput("features", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="does not match"):
        triton.infer("fraud_mlp", [inp])
