"""The gRPC front end to end: `mlgate serve --grpc-port` against a real redis-server.

Clients are tritonclient.grpc (sync and aio), which always sends raw tensors, and the generated
stub for what tritonclient cannot send (typed contents, malformed requests).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.repository.config import read_config
from tests.conftest import MODELS_DIR, GatewayProcess, free_port, start_gateway
from tests.integration.test_http_api import features_of, reference, store_url

# The HTTP suite's seeded Redis db (db 2): imported, the fixture serves this module too.
__all__ = ["store_url"]

MAX_MESSAGE = 65536


@dataclass
class Fronts:
    gateway: GatewayProcess
    grpc_port: int

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_fronts(tmp_dir: Path, *args: str) -> Fronts:
    grpc_port = free_port()
    gateway = start_gateway(
        tmp_dir,
        "--grpc-port",
        str(grpc_port),
        *args,
        env={"MLGATE_GRPC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)},
    )
    return Fronts(gateway, grpc_port)


@pytest.fixture(scope="module")
def fronts(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    # Two workers, as in production: both serve gRPC on the one port (SO_REUSEPORT).
    started = start_fronts(
        tmp_path_factory.mktemp("gw"), "--workers", "2", "--feature-store", store_url
    )
    try:
        yield started
    finally:
        started.gateway.stop()


@pytest.fixture(scope="module")
def client(fronts: Fronts) -> Iterator[triton_grpc.InferenceServerClient]:
    c = triton_grpc.InferenceServerClient(fronts.grpc_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def channel(fronts: Fronts) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fronts.grpc_address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN on `port`, whichever process holds them (Linux /proc).

    grpc listens on 127.0.0.1 through an IPv6 socket ([::ffff:127.0.0.1]): both tables count.
    """
    found: list[list[str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            found += [line.split() for line in lines.readlines()[1:]]
    return sum(1 for row in found if row[1].endswith(f":{port:04X}") and row[3] == "0A")


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32)).astype(np.float32)


def raw_input(name: str, arr: np.ndarray) -> triton_grpc.InferInput:
    datatype = "BYTES" if arr.dtype.kind == "O" else "FP32"
    inp = triton_grpc.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def typed_request(x: np.ndarray, model: str = "fraud_mlp", version: str = "") -> Any:
    msg = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="typed")
    tensor = msg.inputs.add(name="features", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return msg


def ids_of(*ids: str) -> np.ndarray:
    return np.array([i.encode() for i in ids], dtype=np.object_)


# ---- health, metadata, config -------------------------------------------------------------


def test_health_and_metadata(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud_mlp") and client.is_model_ready("fraud_mlp", "1")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "mlgate" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("fraud_mlp", as_json=True)
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "32"]}]
    assert meta["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": ["-1", "1"]}]


@pytest.mark.parametrize("model", ["fraud_mlp", "heavy_mlp"])
def test_model_config_is_what_config_yaml_says(
    client: triton_grpc.InferenceServerClient, model: str
) -> None:
    declared = read_config(MODELS_DIR / model / "config.yaml")
    config = client.get_model_config(model).config
    assert (config.name, config.platform, config.backend) == (
        model,
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == declared.max_batch_size
    # The demo models' tensors are all FP32.
    fp32 = triton_grpc.model_config_pb2.TYPE_FP32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        (s.name, fp32, s.dims) for s in declared.inputs
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        (s.name, fp32, s.dims) for s in declared.outputs
    ]
    batching = declared.dynamic_batching
    assert config.HasField("dynamic_batching") == (batching is not None)
    if batching is not None:
        dynamic = config.dynamic_batching
        assert dynamic.max_queue_delay_microseconds == batching.max_queue_delay_us
        assert list(dynamic.preferred_batch_size) == batching.preferred_batch_sizes
        assert dynamic.default_queue_policy.max_queue_size == batching.max_queue_size


def test_health_service_follows_readiness(channel: grpc.Channel) -> None:
    check = health_pb2_grpc.HealthStub(channel).Check
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "inference.GRPCInferenceService", "fraud_mlp", "heavy_mlp"):
        assert check(health_pb2.HealthCheckRequest(service=service)).status == serving
    with pytest.raises(grpc.RpcError) as err:
        check(health_pb2.HealthCheckRequest(service="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(channel: grpc.Channel) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    assert set(db.get_services()) >= {"inference.GRPCInferenceService", "grpc.health.v1.Health"}
    described = db.FindFileContainingSymbol("inference.GRPCInferenceService")
    assert any(s.name == "GRPCInferenceService" for s in described.service)


@pytest.mark.skipif(sys.platform != "linux", reason="port sharing by SO_REUSEPORT is Linux's")
def test_every_worker_listens_on_the_grpc_port(fronts: Fronts) -> None:
    # HTTP answers as soon as one worker is up; the other may still be starting.
    deadline = time.monotonic() + 20
    while listening_sockets(fronts.grpc_port) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listening_sockets(fronts.grpc_port) == 2
    inp = raw_input("features", rows(1))
    for _ in range(10):
        # A channel per call: the kernel spreads new connections over the listeners.
        with triton_grpc.InferenceServerClient(fronts.grpc_address) as c:
            assert c.infer("fraud_mlp", [inp]).as_numpy("probability") is not None


# ---- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("version", ["1", "2"])
def test_raw_infer_matches_onnxruntime(
    client: triton_grpc.InferenceServerClient, n: int, version: str
) -> None:
    x = rows(n, seed=n)
    result = client.infer("fraud_mlp", [raw_input("features", x)], model_version=version)
    response = result.get_response()
    assert response.model_version == version and len(response.raw_output_contents) == 1
    np.testing.assert_allclose(result.as_numpy("probability"), reference(version, x), atol=1e-6)


@pytest.mark.parametrize("n", [1, 8])
def test_typed_infer_is_answered_typed(stub: Any, n: int) -> None:
    x = rows(n, seed=10 + n)
    response = stub.ModelInfer(typed_request(x, version="1"))
    assert response.id == "typed" and not response.raw_output_contents
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("probability", "FP32", [n, 1])
    got = np.array(out.contents.fp32_contents, dtype=np.float32).reshape(n, 1)
    np.testing.assert_allclose(got, reference("1", x), atol=1e-6)


async def test_aio_client_runs_concurrent_calls(fronts: Fronts) -> None:
    async with triton_aio.InferenceServerClient(fronts.grpc_address) as aio:
        assert await aio.is_server_ready()
        xs = [rows(4, seed=20 + i) for i in range(8)]
        results = await asyncio.gather(
            *(aio.infer("fraud_mlp", [raw_input("features", x)], model_version="2") for x in xs)
        )
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("probability"), reference("2", x), atol=1e-6)


def test_entity_ids_fetch_features(
    client: triton_grpc.InferenceServerClient, store_url: str
) -> None:
    ids = ["u1", "u17", "u1999"]
    result = client.infer("fraud_mlp", [raw_input("user_id", ids_of(*ids))])
    expected = reference("2", features_of(store_url, ids))
    np.testing.assert_allclose(result.as_numpy("probability"), expected, atol=1e-6)


def test_http_and_grpc_answer_identically(
    client: triton_grpc.InferenceServerClient, fronts: Fronts
) -> None:
    x = rows(8, seed=99)
    http = triton_http.InferenceServerClient(f"127.0.0.1:{fronts.gateway.port}")
    try:
        for inputs in (("features", x), ("user_id", ids_of("u3", "u4", "u5"))):
            name, arr = inputs
            http_input = triton_http.InferInput(
                name, list(arr.shape), raw_input(*inputs).datatype()
            )
            http_input.set_data_from_numpy(arr, binary_data=True)
            over_http = http.infer("fraud_mlp", [http_input]).as_numpy("probability")
            over_grpc = client.infer("fraud_mlp", [raw_input(*inputs)]).as_numpy("probability")
            assert over_http is not None and over_grpc is not None
            assert over_http.tobytes() == over_grpc.tobytes()
    finally:
        http.close()
    # One core path: the gRPC calls land in the same metrics as the HTTP ones.
    text = httpx.get(f"{fronts.gateway.url}/metrics").text
    assert 'endpoint="grpc_infer",model="fraud_mlp",outcome="ok"' in text


def test_grpc_predictions_are_audited(
    client: triton_grpc.InferenceServerClient, fronts: Fronts
) -> None:
    ids = ids_of("u6", "u7")
    result = client.infer("fraud_mlp", [raw_input("user_id", ids)], request_id="grpc-audited")
    (record,) = fronts.gateway.audited("grpc-audited")
    assert record.entity_ids == ["u6", "u7"] and record.model == "fraud_mlp"
    np.testing.assert_array_equal(record.outputs["probability"], result.as_numpy("probability"))


# ---- streaming ----------------------------------------------------------------------------


def test_stream_answers_in_order_and_survives_a_bad_request(
    client: triton_grpc.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        xs = [rows(2, seed=30 + i) for i in range(5)]
        for i, x in enumerate(xs):
            sent = x[:, :3].copy() if i == 2 else x
            client.async_stream_infer("fraud_mlp", [raw_input("features", sent)], request_id=str(i))
        for i, x in enumerate(xs):
            result, error = answers.get(timeout=10)
            if i == 2:
                assert result is None and "shape [2, 3] does not match [-1, 32]" in str(error)
                continue
            assert error is None and result.get_response().id == str(i)
            np.testing.assert_allclose(result.as_numpy("probability"), reference("2", x), atol=1e-6)
    finally:
        client.stop_stream()


async def test_aio_stream_mixes_entities_tensors_and_errors(fronts: Fronts, store_url: str) -> None:
    requests = [
        {"model_name": "fraud_mlp", "inputs": [raw_input("user_id", ids_of("u8"))]},
        {"model_name": "nope", "inputs": [raw_input("features", rows(1))]},
        {"model_name": "fraud_mlp", "inputs": [raw_input("features", rows(3, seed=5))]},
    ]

    async def sent() -> Any:
        for request in requests:
            yield request

    async with triton_aio.InferenceServerClient(fronts.grpc_address) as aio:
        answers = [answer async for answer in aio.stream_infer(sent())]
        # stream_infer ends when the server closes the stream after the last answer.
    assert len(answers) == 3
    (first, e1), (_, e2), (third, e3) = answers
    assert e1 is None and e3 is None and "unknown model 'nope'" in str(e2)
    # features_of runs its own event loop: off this one.
    expected = reference("2", await asyncio.to_thread(features_of, store_url, ["u8"]))
    np.testing.assert_allclose(first.as_numpy("probability"), expected, atol=1e-6)
    expected = reference("2", rows(3, seed=5))
    np.testing.assert_allclose(third.as_numpy("probability"), expected, atol=1e-6)


# ---- errors -------------------------------------------------------------------------------


def short_raw() -> Any:
    msg = service_pb2.ModelInferRequest(model_name="fraud_mlp")
    msg.inputs.add(name="features", datatype="FP32", shape=[1, 32])
    msg.raw_input_contents.append(np.zeros(31, np.float32).tobytes())
    return msg


def one_tensor(name: str, datatype: str, arr: np.ndarray, model: str = "fraud_mlp") -> Any:
    msg = service_pb2.ModelInferRequest(model_name=model)
    msg.inputs.add(name=name, datatype=datatype, shape=arr.shape)
    msg.raw_input_contents.append(arr.tobytes())
    return msg


def with_nan() -> Any:
    x = rows(1)
    x[0, 5] = np.nan
    return one_tensor("features", "FP32", x)


def unknown_output() -> Any:
    msg = one_tensor("features", "FP32", rows(1))
    msg.outputs.add(name="logits")
    return msg


def oversized() -> Any:
    return one_tensor("features", "FP32", rows(600))


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_REQUESTS: list[tuple[str, Callable[[], Any], grpc.StatusCode, str]] = [
    (
        "unknown model",
        lambda: one_tensor("features", "FP32", rows(1), model="nope"),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
    ),
    (
        "unknown version",
        lambda: typed_request(rows(1), version="9"),
        grpc.StatusCode.NOT_FOUND,
        "no version '9'",
    ),
    (
        "wrong shape",
        lambda: one_tensor("features", "FP32", rows(1)[:, :3].copy()),
        INVALID,
        "shape [1, 3] does not match [-1, 32]",
    ),
    (
        "wrong datatype",
        lambda: one_tensor("features", "INT64", np.zeros((1, 32), np.int64)),
        INVALID,
        "datatype INT64 does not match the model's FP32",
    ),
    ("unknown input", lambda: one_tensor("x", "FP32", rows(1)), INVALID, "unknown input 'x'"),
    ("unknown output", unknown_output, INVALID, "unknown output 'logits'"),
    ("raw size mismatch", short_raw, INVALID, "needs 128 bytes, got 124"),
    ("NaN", with_nan, INVALID, "NaN or infinite"),
    ("oversized message", oversized, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


@pytest.mark.parametrize(
    ("case", "build", "code", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_their_status_code(
    stub: Any, case: str, build: Callable[[], Any], code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(build())
    assert err.value.code() == code
    assert message in err.value.details()


def test_unknown_model_metadata_and_readiness_are_not_found(stub: Any) -> None:
    for call, request in (
        (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
        (stub.ModelReady, service_pb2.ModelReadyRequest(name="nope")),
        (stub.ModelConfig, service_pb2.ModelConfigRequest(name="fraud_mlp", version="9")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_rpcs_not_served_are_unimplemented(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="fraud_mlp"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "mlgate does not serve RepositoryModelLoad"


def test_client_deadline_is_deadline_exceeded(client: triton_grpc.InferenceServerClient) -> None:
    x = rows(256)
    with pytest.raises(InferenceServerException) as err:
        client.infer("heavy_mlp", [raw_input("features", x)], client_timeout=0.0005)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # The cancelled call leaves the server serving.
    assert (
        client.infer("heavy_mlp", [raw_input("features", x[:2])]).as_numpy("probability")
        is not None
    )


# ---- a feature store that is down ---------------------------------------------------------


def test_store_down_is_unavailable_and_not_serving(tmp_path: Path) -> None:
    down = start_fronts(tmp_path, "--feature-store", f"redis://127.0.0.1:{free_port()}/0")
    try:
        with grpc.insecure_channel(down.grpc_address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            status = health.Check(health_pb2.HealthCheckRequest()).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            assert not stub.ServerReady(service_pb2.ServerReadyRequest()).ready
            entity = one_tensor("user_id", "BYTES", np.frombuffer(b"\x02\x00\x00\x00u1", np.uint8))
            entity.inputs[0].shape[:] = [1]
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(entity)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "feature store unavailable" in err.value.details()
            # Raw tensors need no feature store: they are still served.
            assert stub.ModelInfer(typed_request(rows(1))).outputs[0].name == "probability"
    finally:
        down.gateway.stop()
