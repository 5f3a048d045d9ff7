"""What Triton and KServe clients call beyond inference, against a live gateway: model
configuration, statistics and the repository index over HTTP and gRPC (tritonclient), one
version's metadata, and KServe V1's `instances` and readiness (httpx)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from service.app import v1_predictions
from service.pipeline.request import Prediction
from service.protocol import json_codec
from tests.integration.test_grpc_api import Fronts, start_fronts
from tests.integration.test_grpc_api import client as grpc_client
from tests.integration.test_http_api import reference, store_url

# Imported fixtures: the HTTP suite's seeded Redis db, and a tritonclient.grpc client of this
# module's `fronts`.
__all__ = ["grpc_client", "store_url"]

LOADED = [("fraud_mlp", "1"), ("fraud_mlp", "2"), ("heavy_mlp", "1")]


@pytest.fixture(scope="module")
def fronts(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    # One worker: statistics count one process, as Triton's count one server.
    started = start_fronts(tmp_path_factory.mktemp("gw"), "--feature-store", store_url)
    try:
        yield started
    finally:
        started.gateway.stop()


@pytest.fixture(scope="module")
def http(fronts: Fronts) -> Iterator[triton_http.InferenceServerClient]:
    c = triton_http.InferenceServerClient(f"127.0.0.1:{fronts.gateway.port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def web(fronts: Fronts) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fronts.gateway.url, timeout=10) as c:
        yield c


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32)).astype(np.float32)


def assert_v2_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    (message,) = r.json().values()
    assert r.json() == {"error": message} and all(w in message for w in words), message


# ---- model configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "version"), [("fraud_mlp", ""), ("fraud_mlp", "1"), ("heavy_mlp", "")]
)
def test_http_model_config_is_what_grpc_model_config_serves(
    http: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    model: str,
    version: str,
) -> None:
    doc = http.get_model_config(model, version)
    assert doc["name"] == model and doc["max_batch_size"] > 0
    # Triton's JSON: proto field names, integers as numbers.
    assert doc["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [32]}]
    over_grpc = grpc_client.get_model_config(model, version).config
    assert json_format.ParseDict(doc, model_config_pb2.ModelConfig()) == over_grpc


def test_config_of_an_unknown_version_is_a_v2_404(web: httpx.Client) -> None:
    assert_v2_error(web.get("/v2/models/fraud_mlp/versions/9/config"), 404, "version '9'")


# ---- metadata of one version --------------------------------------------------------------


def test_version_metadata_describes_that_version_only(
    web: httpx.Client, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    assert web.get("/v2/models/fraud_mlp").json()["versions"] == ["1", "2"]
    for version in ("1", "2"):
        doc = web.get(f"/v2/models/fraud_mlp/versions/{version}").json()
        assert doc["versions"] == [version]
        assert grpc_client.get_model_metadata("fraud_mlp", version).versions == [version]
    assert_v2_error(web.get("/v2/models/fraud_mlp/versions/9"), 404, "no version '9'")


# ---- statistics ---------------------------------------------------------------------------


def stats_of(http: triton_http.InferenceServerClient, model: str, version: str) -> dict[str, Any]:
    (doc,) = http.get_inference_statistics(model, version)["model_stats"]
    assert (doc["name"], doc["version"]) == (model, version)
    return doc


def count(doc: dict[str, Any], duration: str) -> int:
    value: int = doc["inference_stats"][duration]["count"]
    return value


def test_statistics_count_answers_failures_batches_and_rows(
    http: triton_http.InferenceServerClient,
) -> None:
    before = stats_of(http, "fraud_mlp", "1")
    other = stats_of(http, "fraud_mlp", "2")
    for seed in range(3):
        inp = triton_http.InferInput("features", [4, 32], "FP32")
        inp.set_data_from_numpy(rows(4, seed))
        http.infer("fraud_mlp", [inp], model_version="1")
    # A 1 µs timeout has passed before the request reaches the batcher: it fails, unrun.
    with pytest.raises(InferenceServerException, match="deadline"):
        http.infer("fraud_mlp", [inp], model_version="1", timeout=1)
    after = stats_of(http, "fraud_mlp", "1")

    for duration, added in [("success", 3), ("fail", 1), ("queue", 3), ("compute_infer", 3)]:
        assert count(after, duration) - count(before, duration) == added, duration
    for duration in ("compute_input", "compute_output"):
        assert count(after, duration) - count(before, duration) == 3, duration
    assert after["execution_count"] - before["execution_count"] == 3
    assert after["inference_count"] - before["inference_count"] == 12
    success = after["inference_stats"]["success"]
    infer = after["inference_stats"]["compute_infer"]
    assert success["ns"] > infer["ns"] > 0
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert stats_of(http, "fraud_mlp", "2") == other


def test_statistics_of_a_model_a_server_and_over_grpc(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    every = http.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in every] == LOADED
    model = http.get_inference_statistics("fraud_mlp")["model_stats"]
    assert [s["version"] for s in model] == ["1", "2"]
    for name, version in [("", ""), ("fraud_mlp", ""), ("fraud_mlp", "2")]:
        over_grpc = grpc_client.get_inference_statistics(name, version)
        over_http = http.get_inference_statistics(name, version)
        assert json_format.ParseDict(over_http, service_pb2.ModelStatisticsResponse()) == over_grpc
    with pytest.raises(InferenceServerException, match="no version '9'"):
        grpc_client.get_inference_statistics("fraud_mlp", "9")


def test_statistics_of_unknown_models_and_versions_are_v2_404s(web: httpx.Client) -> None:
    assert_v2_error(web.get("/v2/models/nope/stats"), 404, "unknown model 'nope'")
    assert_v2_error(web.get("/v2/models/fraud_mlp/versions/9/stats"), 404, "no version '9'")


# ---- repository index ---------------------------------------------------------------------


def test_repository_index_lists_every_loaded_version(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    index = http.get_model_repository_index()
    assert index == [
        {"name": name, "version": version, "state": "READY", "reason": ""}
        for name, version in LOADED
    ]
    over_grpc = grpc_client.get_model_repository_index()
    assert json_format.ParseDict({"models": index}, service_pb2.RepositoryIndexResponse()) == (
        over_grpc
    )


def test_repository_index_takes_tritons_body_and_refuses_a_bad_one(web: httpx.Client) -> None:
    assert web.post("/v2/repository/index", json={"ready": True}).status_code == 200
    assert_v2_error(web.post("/v2/repository/index", json={"ready": "yes"}), 400, "ready")
    assert_v2_error(web.post("/v2/repository/index", json={"nope": 1}), 400, "nope")


# ---- KServe V1 ----------------------------------------------------------------------------


def predict(web: httpx.Client, body: Any, path: str = "fraud_mlp/versions/1") -> httpx.Response:
    return web.post(f"/v1/models/{path}:predict", json=body)


def test_v1_instances_are_answered_with_predictions(web: httpx.Client) -> None:
    x = rows(3, seed=7)
    expected = reference("1", x).reshape(-1)
    for instances in (x.tolist(), [{"features": row} for row in x.tolist()]):
        r = predict(web, {"instances": instances})
        assert r.status_code == 200, r.text
        assert list(r.json()) == ["predictions"]
        np.testing.assert_allclose(r.json()["predictions"], expected, atol=1e-6)
        assert r.headers["x-mlgate-version"] == "1"


def round_trips(web: httpx.Client) -> float:
    text = web.get("/metrics").text
    found = re.findall(r"^mlgate_feature_store_round_trips_total\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(v) for v in found)


def test_v1_instances_are_routed_and_audited_without_a_feature_read(
    web: httpx.Client, fronts: Fronts
) -> None:
    x = rows(2, seed=8)
    reads = round_trips(web)
    r = web.post(
        "/v1/models/fraud_mlp:predict",
        json={"instances": x.tolist()},
        headers={"x-request-id": "v1-audited"},
    )
    assert r.status_code == 200, r.text
    # No version named: the routing policy's stable version answers.
    assert r.headers["x-mlgate-version"] == "2"
    assert round_trips(web) == reads
    (record,) = fronts.gateway.audited("v1-audited")
    assert record.entity_ids is None and record.route == "primary"
    np.testing.assert_array_equal(record.inputs["features"], x)
    np.testing.assert_allclose(record.outputs["probability"].reshape(-1), r.json()["predictions"])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            {"instances": [[0.0] * 32], "entities": ["u1"]},
            ["'instances'", "'entities'", "not both"],
        ),
        ({}, ["needs", "'instances'", "'entities'"]),
        ({"instances": []}, ["instances"]),
        ({"instances": [[0.0] * 32, [0.0] * 31]}, ["input 'features'", "rows of numbers"]),
        ({"instances": [[0.0] * 31]}, ["shape [1, 31]", "[-1, 32]"]),
        # Past float32's range: infinite once converted.
        ({"instances": [[1e39] * 32]}, ["NaN or infinite"]),
        ({"instances": [{"features": [0.0] * 32}, [0.0] * 32]}, ["all be objects"]),
        ({"instances": [{"nope": [0.0] * 32}]}, ["unknown input 'nope'"]),
        ({"instances": [{"user_id": "u1"}]}, ["'entities'", "'user_id'"]),
        ({"instances": [{"features": [0.0] * 32}, {}]}, ["instances[1]"]),
    ],
)
def test_bad_v1_bodies_are_400_naming_the_problem(
    web: httpx.Client, body: dict[str, Any], words: list[str]
) -> None:
    assert_v2_error(web.post("/v1/models/fraud_mlp:predict", json=body), 400, *words)


def test_v1_model_readiness(web: httpx.Client) -> None:
    assert web.get("/v1/models/fraud_mlp").json() == {"name": "fraud_mlp", "ready": True}
    assert_v2_error(web.get("/v1/models/nope"), 404, "unknown model 'nope'")
    assert web.get("/v1/models/fraud_mlp:predict").status_code == 405


def test_v1_predictions_of_several_outputs_are_an_object_per_instance() -> None:
    outputs = {"p": np.array([[0.1], [0.2]]), "logits": np.array([[1.0, 2.0], [3.0, 4.0]])}
    result = Prediction("r", "m", "1", outputs=outputs, inputs={})
    doc = orjson.loads(json_codec.dumps(v1_predictions(result)))
    assert doc == {
        "predictions": [{"p": [0.1], "logits": [1.0, 2.0]}, {"p": [0.2], "logits": [3.0, 4.0]}]
    }
