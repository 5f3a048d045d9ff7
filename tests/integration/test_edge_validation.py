"""Hostile input at the edge, end to end: `mlgate serve` (HTTP and gRPC) on a real redis-server.

Every case a fuzzer found gets a clear 400 / 413 / INVALID_ARGUMENT instead of a 500, a dropped
connection or an echoed megabyte; limits are enforced before the feature store is read; and a
large legal request does not stall small ones.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from feature_store.views import load_views
from tests.conftest import (
    MODELS_DIR,
    GatewayProcess,
    RedisServer,
    free_port,
    seeded_url,
    start_gateway,
)

DB = 6
# A large legal request: this many entities, the gateway's configured limit.
LARGE = 20_000
PREDICT = "/v1/models/fraud_mlp:predict"
INFER = "/v2/models/fraud_mlp/infer"
ROUND_TRIPS = "mlgate_feature_store_round_trips_total"


@pytest.fixture(scope="module")
def store_url(redis_server: RedisServer) -> str:
    return seeded_url(redis_server, DB, LARGE)


@pytest.fixture(scope="module")
def fronts(
    store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, int]]:
    grpc_port = free_port()
    gateway = start_gateway(
        tmp_path_factory.mktemp("gw"),
        "--feature-store",
        store_url,
        "--grpc-port",
        str(grpc_port),
        "--max-entities",
        str(LARGE),
        "--max-tensor-elements",
        "1000000",
        "--max-request-id-length",
        "64",
    )
    try:
        yield gateway, grpc_port
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def client(fronts: tuple[GatewayProcess, int]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fronts[0].url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def stub(fronts: tuple[GatewayProcess, int]) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{fronts[1]}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def refused(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    message: str = r.json()["error"]
    for word in words:
        assert word in message
    return message


def round_trips(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(ROUND_TRIPS)
    )


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# ---- request ids ------------------------------------------------------------------------

UNSAFE_IDS = [
    pytest.param("a\r\nx-injected: 1", id="crlf"),
    pytest.param("a\0b", id="nul"),
    pytest.param("zürich", id="non-ascii"),
    pytest.param("a b", id="space"),
    pytest.param("x" * 65, id="too-long"),
    pytest.param("x" * (1 << 20), id="one-mebibyte"),
]


@pytest.mark.parametrize("request_id", UNSAFE_IDS)
def test_unsafe_request_id_in_predict_body_is_refused_with_400(
    client: httpx.Client, request_id: str
) -> None:
    r = client.post(PREDICT, json={"entities": ["u1"], "request_id": request_id})
    refused(r, 400, "'request_id'")
    assert "x-request-id" not in r.headers


@pytest.mark.parametrize("value", [123, 1.5, True, ["a"], {"a": 1}])
def test_request_id_that_is_not_a_string_is_refused_with_400(
    client: httpx.Client, value: object
) -> None:
    refused(client.post(PREDICT, json={"entities": ["u1"], "request_id": value}), 400)
    refused(client.post(INFER, json={"id": value, "inputs": [user_ids("u1")]}), 400, "'id'")


@pytest.mark.parametrize("header", [b"a b", b"z\xfcrich", b"x" * 65])
def test_unsafe_x_request_id_header_is_refused_with_400(
    client: httpx.Client, header: bytes
) -> None:
    r = client.post(PREDICT, json={"entities": ["u1"]}, headers={"x-request-id": header})
    refused(r, 400, "x-request-id")


def test_safe_request_id_is_echoed_in_body_and_header(client: httpx.Client) -> None:
    r = client.post(PREDICT, json={"entities": ["u1"]}, headers={"x-request-id": "req-1.a:B_2"})
    assert r.status_code == 200, r.text
    assert r.json()["request_id"] == r.headers["x-request-id"] == "req-1.a:B_2"


@pytest.mark.parametrize("request_id", UNSAFE_IDS)
def test_unsafe_v2_infer_id_is_refused_over_http_and_grpc(
    client: httpx.Client, stub: Any, request_id: str
) -> None:
    r = client.post(INFER, json={"id": request_id, "inputs": [user_ids("u1")]})
    refused(r, 400, "'id'")
    msg = service_pb2.ModelInferRequest(model_name="fraud_mlp", id=request_id)
    msg.inputs.add(name="user_id", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"u1"
    )
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(msg, timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'id'" in failed.value.details()


def user_ids(*ids: str) -> dict[str, Any]:
    return {"name": "user_id", "datatype": "BYTES", "shape": [len(ids)], "data": list(ids)}


# ---- numeric headers --------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9", b"-1", b"1e3", b"9" * 40])
def test_inference_header_content_length_takes_only_ascii_digits(
    client: httpx.Client, value: bytes
) -> None:
    header = b'{"inputs": []}'
    r = client.post(INFER, content=header, headers={"Inference-Header-Content-Length": value})
    refused(r, 400, "Inference-Header-Content-Length")


@pytest.mark.parametrize("value", [b"\xb2", b"nan", b"inf", b"0", b"-5", b"1e3"])
def test_timeout_header_takes_only_a_positive_decimal(client: httpx.Client, value: bytes) -> None:
    r = client.post(PREDICT, json={"entities": ["u1"]}, headers={"x-mlgate-timeout-ms": value})
    refused(r, 400, "x-mlgate-timeout-ms")


# ---- entity ids that are not UTF-8 ------------------------------------------------------


def test_binary_entity_id_that_is_not_utf8_is_refused_over_http(client: httpx.Client) -> None:
    blob = bytes_tensor(b"\xff\xfe")
    header = (
        b'{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], '
        b'"parameters": {"binary_data_size": ' + str(len(blob)).encode() + b"}}]}"
    )
    r = client.post(
        INFER,
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    refused(r, 400, "UTF-8")


def not_utf8_request() -> Any:
    msg = service_pb2.ModelInferRequest(model_name="fraud_mlp", id="bad-bytes")
    msg.inputs.add(name="user_id", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"\xff"
    )
    return msg


def test_entity_id_that_is_not_utf8_is_invalid_argument_over_grpc(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(not_utf8_request(), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in failed.value.details()


def test_entity_id_that_is_not_utf8_is_an_error_message_on_the_stream(stub: Any) -> None:
    good = service_pb2.ModelInferRequest(model_name="fraud_mlp", id="good")
    good.inputs.add(name="user_id", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"u1"
    )
    answers = list(stub.ModelStreamInfer(iter([not_utf8_request(), good]), timeout=10))
    assert len(answers) == 2
    assert "UTF-8" in answers[0].error_message and answers[0].infer_response.id == "bad-bytes"
    assert answers[1].error_message == "" and answers[1].infer_response.id == "good"


# ---- feature push event times -----------------------------------------------------------


A_DAY_MS = 86_400_000


@pytest.mark.parametrize(
    "event_time_ms", [2**63, 2**62, -(2**63), -1, 0, int(time.time() * 1000) + 2 * A_DAY_MS]
)
def test_feature_push_refuses_event_time_outside_the_window(
    client: httpx.Client, event_time_ms: int
) -> None:
    r = client.post(
        "/v1/features/txn_stats", json={"rows": [pushed_row()], "event_time_ms": event_time_ms}
    )
    refused(r, 400, "event_time_ms", "2000-01-01")


def pushed_row() -> dict[str, Any]:
    view = load_views(MODELS_DIR / "feature_views.yaml")["txn_stats"]
    return {"user_id": "pushed", **{name: 1.0 for name in view.feature_names}}


def test_feature_push_takes_an_event_time_inside_the_window(client: httpx.Client) -> None:
    now = int(time.time() * 1000)
    r = client.post(
        "/v1/features/txn_stats", json={"rows": [pushed_row()], "event_time_ms": now - 1000}
    )
    assert r.status_code == 200, r.text
    status = client.post(PREDICT, json={"entities": ["pushed"]}).json()["feature_status"]
    assert status[0]["txn_stats"] == "fresh"


# ---- limits, before any store read ------------------------------------------------------


def test_too_many_entities_are_refused_with_413_before_the_store_is_read(
    client: httpx.Client,
) -> None:
    before = round_trips(client)
    ids = [f"u{i}" for i in range(LARGE + 1)]
    refused(client.post(PREDICT, json={"entities": ids}), 413, str(LARGE))
    refused(client.post(INFER, json={"inputs": [user_ids(*ids)]}), 413, str(LARGE))
    assert round_trips(client) == before
    # The counter does count: one legal request moves it.
    assert client.post(PREDICT, json={"entities": ["u1"]}).status_code == 200
    assert round_trips(client) > before


def test_too_many_tensor_elements_are_refused_with_413_before_any_tensor_is_built(
    client: httpx.Client, stub: Any
) -> None:
    # A shape of 10^12 elements with no data: refused from the shape alone.
    body = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [1 << 20, 1 << 20], "data": []}
        ]
    }
    refused(client.post(INFER, json=body), 413, "tensor elements")
    msg = service_pb2.ModelInferRequest(model_name="fraud_mlp")
    msg.inputs.add(name="features", datatype="FP32", shape=[1 << 20, 1 << 20])
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(msg, timeout=10)
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_large_legal_request_does_not_stall_small_ones(
    fronts: tuple[GatewayProcess, int],
) -> None:
    ids = [f"u{i}" for i in range(LARGE)]
    async with httpx.AsyncClient(base_url=fronts[0].url, timeout=60) as c:
        # Warm: connections and the model's first runs.
        for _ in range(5):
            assert (await c.post(PREDICT, json={"entities": ["u1"]})).status_code == 200
        big = asyncio.create_task(c.post(PREDICT, json={"entities": ids}))
        latencies: list[float] = []
        while not big.done():
            started = time.perf_counter()
            r = await c.post(PREDICT, json={"entities": ["u7"]})
            assert r.status_code == 200, r.text
            latencies.append(time.perf_counter() - started)
        answer = await big
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == LARGE
    # Small requests kept coming back while the large one was served, none held for long.
    assert len(latencies) >= 3, latencies
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
