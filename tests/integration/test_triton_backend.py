"""The Triton backend against real tritonserver processes (pytriton, CPU, loopback).

Two servers start once for the module, side by side: `triton` serves fraud_mlp version 2 and the
faulty model, `spare` only fraud_mlp; the failover test kills `spare`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from service.backends.onnx import OnnxBackend
from service.backends.triton import TritonBackend
from service.backends.triton_options import TritonOptions
from service.pipeline.request import RequestContext
from service.protocol.errors import (
    BackendError,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Unavailable,
)
from service.protocol.v2 import InferRequest
from service.repository.config import ConfigError, read_config
from service.repository.loader import Repository, check_repository
from service.server import serving
from service.settings import Settings
from tests.conftest import MODELS_DIR
from tests.triton_support import (
    FAULTY_MESSAGE,
    MAX_BATCH_SIZE,
    TritonServer,
    start_triton,
)

PROTOCOLS = ["grpc", "http"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    tmp = tmp_path_factory.mktemp("triton")
    started: list[TritonServer] = []
    try:
        # Started together: each takes seconds to load its models.
        started.append(start_triton(tmp))
        started.append(start_triton(tmp, only_fraud_mlp=True))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.kill()


@pytest.fixture(scope="module")
def triton(servers: list[TritonServer]) -> TritonServer:
    return servers[0]


@pytest.fixture(scope="module")
def spare(servers: list[TritonServer]) -> TritonServer:
    return servers[1]


def address(server: TritonServer, protocol: str) -> str:
    return server.grpc if protocol == "grpc" else server.http


@contextlib.asynccontextmanager
async def opened(
    endpoints: list[str], model: str = "fraud_mlp", version: str = "2", **options: Any
) -> AsyncIterator[TritonBackend]:
    backend = await TritonBackend.open(
        TritonOptions(endpoints=endpoints, **options), model, version, MAX_BATCH_SIZE
    )
    try:
        yield backend
    finally:
        await backend.close()


def features(rows: int, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(rows, 32)).astype(np.float32)}


def write_repository(root: Path, **changes: Any) -> Path:
    """fraud_mlp with version 2 in-process and, by default, version 3 from Triton's version 2."""
    config = yaml.safe_load((MODELS_DIR / "fraud_mlp" / "config.yaml").read_text())
    config.update(changes)
    model_dir = root / "fraud_mlp"
    (model_dir / "2").mkdir(parents=True)
    (model_dir / "2" / "model.onnx").symlink_to(MODELS_DIR / "fraud_mlp" / "2" / "model.onnx")
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return model_dir / "config.yaml"


def mixed(endpoint: str, protocol: str = "grpc", **triton: Any) -> dict[str, Any]:
    return {
        "version_backends": {"3": "triton"},
        "triton": {
            "endpoints": [endpoint],
            "protocol": protocol,
            "model_versions": {"3": "2"},
            **triton,
        },
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_triton_version_answers_as_the_in_process_version(
    triton: TritonServer, tmp_path: Path, protocol: str
) -> None:
    write_repository(tmp_path, **mixed(address(triton, protocol), protocol))
    repository = await Repository.load(tmp_path)
    try:
        model = repository.models["fraud_mlp"]
        in_process = model.versions["2"].backend
        remote = model.versions["3"].backend
        assert isinstance(in_process, OnnxBackend)
        assert isinstance(remote, TritonBackend)
        assert remote.signature() == in_process.signature()
        assert model.default_version == "2"
        for rows in (1, 8):
            inputs = features(rows, seed=rows)
            expected = await in_process.infer(inputs)
            answered = await remote.infer(inputs, deadline=time.monotonic() + 5)
            assert answered["probability"].shape == (rows, 1)
            np.testing.assert_array_equal(answered["probability"], expected["probability"])
    finally:
        await repository.close()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"inputs": [{"name": "features", "datatype": "FP32", "dims": [31]}]},
            "Triton model 'fraud_mlp' version 2: input 'features' has shape "
            "[-1, 32], but {config} inputs[0].dims is [31] (dims exclude the batch dimension)",
        ),
        (
            {"outputs": [{"name": "probability", "datatype": "FP64", "dims": [1]}]},
            "Triton model 'fraud_mlp' version 2: output 'probability' is FP32, but {config} "
            "outputs[0].datatype is FP64",
        ),
        (
            {"max_batch_size": 128},
            "{config}: version 3: Triton model 'fraud_mlp' version 2: Triton's max_batch_size is "
            "64 at {endpoint}, below config.yaml max_batch_size 128: larger batches would fail",
        ),
        (
            {"triton": {"model_name": "fraud_mlp_v9"}},
            "{config}: version 3: Triton model 'fraud_mlp_v9' version 2: no endpoint serves it: "
            "{endpoint}: Triton: Request for unknown model: 'fraud_mlp_v9' is not found",
        ),
    ],
    ids=["dims", "datatype", "max_batch_size", "unknown_model"],
)
async def test_load_fails_naming_what_triton_serves_unlike_config(
    triton: TritonServer, tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    config = mixed(triton.grpc, **changes.pop("triton", {}))
    config_path = write_repository(tmp_path, **config, **changes)
    with pytest.raises(ConfigError) as raised:
        await Repository.load(tmp_path)
    assert expected.format(config=config_path, endpoint=triton.grpc) in str(raised.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_triton_errors_map_to_gateway_errors_with_tritons_message(
    triton: TritonServer, protocol: str
) -> None:
    endpoint = address(triton, protocol)
    async with opened([endpoint], protocol=protocol) as backend:
        with pytest.raises(InvalidInput, match=r"^Triton: unexpected shape for input 'features'"):
            await backend.infer({"features": np.zeros((2, 31), np.float32)})
        with pytest.raises(InvalidInput, match=r"^Triton: .*data-type is .FP64."):
            await backend.infer({"features": np.zeros((2, 32), np.float64)})
        with pytest.raises(InvalidInput, match="unknown output 'score'"):
            await backend.infer(features(2), ["score"])
        assert backend.endpoints[0].up
    async with opened([endpoint], "fraud_mlp_faulty", "1", protocol=protocol) as faulty:
        inputs = features(2)
        inputs["features"][0, 0] = -0.001
        with pytest.raises(BackendError) as raised:
            await faulty.infer(inputs)
        assert FAULTY_MESSAGE in raised.value.message
        assert "Traceback" not in raised.value.message
        assert raised.value.http_status == 500
        # A model's error is an answer: the endpoint is fine.
        assert faulty.endpoints[0].consecutive_failures == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_deadline_cuts_the_call_short(triton: TritonServer, protocol: str) -> None:
    async with opened(
        [address(triton, protocol)], "fraud_mlp_faulty", "1", protocol=protocol
    ) as slow:
        inputs = features(1)
        inputs["features"][0, 0] = 0.5  # seconds the faulty model sleeps
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as raised:
            await slow.infer(inputs, deadline=started + 0.1)
        assert time.monotonic() - started < 0.4
        assert raised.value.http_status == 504
        with pytest.raises(DeadlineExceeded, match="passed before Triton was called"):
            await slow.infer(inputs, deadline=time.monotonic())
        # A deadline says nothing of the endpoint's health.
        assert slow.endpoints[0].up
        assert slow.endpoints[0].consecutive_failures == 0


async def test_killing_one_of_two_servers_under_load_fails_no_request(
    triton: TritonServer, spare: TritonServer
) -> None:
    async with opened([triton.grpc, spare.grpc], health_interval_s=0.2) as backend:
        first, second = backend.endpoints
        errors: list[GatewayError] = []
        answered = 0
        stop = asyncio.Event()

        async def client(seed: int) -> None:
            nonlocal answered
            inputs = features(8, seed)
            while not stop.is_set():
                try:
                    await backend.infer(inputs, deadline=time.monotonic() + 5)
                    answered += 1
                except GatewayError as exc:
                    errors.append(exc)

        clients = [asyncio.create_task(client(seed)) for seed in range(16)]
        try:
            await asyncio.sleep(0.5)
            assert first.served > 0 and second.served > 0, "both take load before the kill"
            await asyncio.to_thread(spare.kill)
            killed_at = answered
            served_by_first = first.served
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert errors == []
        # Calls were in flight on the killed server, and went to the other one.
        assert second.consecutive_failures > 0
        assert answered > killed_at
        assert first.served > served_by_first
        assert first.up and not second.up
        assert backend.ready


class Forwarder:
    """A loopback TCP forwarder to stop and start, standing for an endpoint that goes away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


async def wait_until(condition: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_endpoint_is_marked_down_then_probed_back_up(triton: TritonServer) -> None:
    forwarder = Forwarder(triton.grpc_port)
    await forwarder.start()
    async with opened(
        [f"127.0.0.1:{forwarder.port}"], health_interval_s=0.1, failure_threshold=2
    ) as backend:
        await backend.infer(features(1))
        await forwarder.stop()
        with pytest.raises(Unavailable) as raised:
            await backend.infer(features(1))
        assert raised.value.http_status == 503
        await wait_until(lambda: not backend.ready)
        with pytest.raises(Unavailable, match="no endpoint is up"):
            await backend.infer(features(1))

        await forwarder.start()
        await wait_until(lambda: backend.ready)
        assert (await backend.infer(features(1)))["probability"].shape == (1, 1)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"version_backends": {"3": "triton"}},
            "versions served by triton need a triton section",
        ),
        (
            {"triton": {"endpoints": ["127.0.0.1:8001"], "model_versions": {"3": "2"}}},
            "triton.model_versions names version '3', which onnxruntime serves",
        ),
        (
            {"backend": "triton", "triton": {"endpoints": ["localhost"]}},
            "triton.endpoints: 'localhost' is not host:port",
        ),
        (
            {"version_backends": {"v3": "triton"}, "triton": {"endpoints": ["[::1]:8001"]}},
            "version_backends: 'v3' is not a version",
        ),
    ],
    ids=["no_triton_section", "model_version_served_in_process", "endpoint", "version_name"],
)
def test_triton_config_problems_name_the_field(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    config_path = write_repository(tmp_path, **changes)
    with pytest.raises(ConfigError, match=expected):
        read_config(config_path)


async def test_a_model_served_by_triton_alone_maps_its_versions(
    triton: TritonServer, tmp_path: Path
) -> None:
    # Directory 2 (its model.onnx unused) and version 7, named only in config.yaml.
    write_repository(
        tmp_path,
        backend="triton",
        triton={"endpoints": [triton.grpc], "model_versions": {"7": "2"}},
        default_version=None,
    )
    repository = await Repository.load(tmp_path)
    try:
        model = repository.models["fraud_mlp"]
        assert list(model.versions) == ["2", "7"]
        assert model.default_version == "7"
        assert all(isinstance(v.backend, TritonBackend) for v in model.versions.values())
        assert model.versions["7"].path is None
    finally:
        await repository.close()


def test_models_check_reads_tritons_metadata(triton: TritonServer, tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_repository(good, **mixed(triton.grpc))
    assert check_repository(good) == []
    bad = tmp_path / "bad"
    config_path = write_repository(
        bad, **mixed(triton.grpc), outputs=[{"name": "score", "datatype": "FP32", "dims": [1]}]
    )
    problems = check_repository(bad)
    # The in-process version 2 differs from config.yaml as much; its lines name its .onnx file.
    assert problems[2:] == [
        f"Triton model 'fraud_mlp' version 2: output 'probability' not declared in {config_path} "
        "outputs (declared: score)",
        f"Triton model 'fraud_mlp' version 2: no output 'score' as {config_path} outputs[0].name "
        "declares (the graph has: probability)",
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_requests_deadline_cuts_a_triton_call_through_the_whole_pipeline(
    triton: TritonServer, protocol: str, tmp_path: Path
) -> None:
    # Version 3 is Triton's faulty model, which sleeps its first feature's seconds; the
    # configured timeout is far longer than the client's 50 ms deadline.
    write_repository(
        tmp_path,
        **mixed(
            address(triton, protocol),
            protocol,
            model_name="fraud_mlp_faulty",
            model_versions={"3": "1"},
            timeout_s=5.0,
        ),
    )
    settings = Settings(
        models=tmp_path,
        views=MODELS_DIR / "feature_views.yaml",
        feature_store="memory://",
        demo_entities=0,
        audit="none",
    )
    inputs = features(1)
    inputs["features"][0, 0] = 1.0
    async with serving(settings) as (pipeline, _):
        started = time.monotonic()
        ctx = RequestContext("infer", "fraud_mlp", "3", deadline=started + 0.05)
        with pytest.raises(DeadlineExceeded):
            await pipeline.infer(ctx, InferRequest(inputs=inputs))
        took = time.monotonic() - started
    assert took < 0.5  # cut at the client's 50 ms, not at the 1 s sleep or the 5 s timeout
