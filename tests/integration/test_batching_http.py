"""Dynamic batching behind the HTTP front: exact rows, 429, 504, client disconnects."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tests.conftest import MODELS_DIR, GatewayProcess, start_gateway


def repository(tmp: Path, batching: dict[str, Any]) -> Path:
    """A copy of fraud_mlp whose config has the given dynamic_batching section."""
    root = tmp / "models"
    shutil.copytree(MODELS_DIR / "fraud_mlp", root / "fraud_mlp")
    shutil.copy(MODELS_DIR / "feature_views.yaml", root / "feature_views.yaml")
    config_path = root / "fraud_mlp" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["dynamic_batching"] = batching
    config.pop("version_backends", None)
    config_path.write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def slow_batcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Batches wait up to 300 ms to fill; at most 4 requests queue."""
    tmp = tmp_path_factory.mktemp("batching")
    root = repository(tmp, {"max_queue_delay_us": 300_000, "max_queue_size": 4})
    gw = start_gateway(tmp, "--models", str(root), "--demo-entities", "100")
    yield gw
    gw.stop()


def body(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
        ]
    }
    if parameters:
        doc["parameters"] = parameters
    return doc


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for match in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE):
        total += float(match.group(1))
    return total


async def until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Wait until `condition()` (run in a thread: it may block) holds; fail after `within_s`."""
    deadline = time.monotonic() + within_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"still not true after {within_s} s"
        await asyncio.sleep(0.005)


def batch_totals(url: str) -> tuple[float, float]:
    """Batches run so far, and their rows."""
    return metric(url, "mlgate_batch_size_count"), metric(url, "mlgate_batch_size_sum")


def assert_probe_runs_alone(url: str, before: tuple[float, float]) -> None:
    """Send one row and check it ran as the only batch since `before`, with its row alone:
    a request left in the queue would have joined its batch, or run in one of its own."""
    r = httpx.post(
        f"{url}/v2/models/fraud_mlp/infer", json=body(np.ones((1, 32), np.float32)), timeout=10
    )
    assert r.status_code == 200, r.text
    count, rows = batch_totals(url)
    assert (count - before[0], rows - before[1]) == (1, 1)


async def infer_all(url: str, xs: list[np.ndarray]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return await asyncio.gather(
            *(c.post("/v2/models/fraud_mlp/versions/2/infer", json=body(x)) for x in xs)
        )


def test_concurrent_requests_share_batches_and_get_their_own_rows(tmp_path: Path) -> None:
    root = repository(tmp_path, {"max_queue_delay_us": 200_000, "max_queue_size": 64})
    gw = start_gateway(tmp_path, "--models", str(root), "--demo-entities", "10")
    try:
        rng = np.random.default_rng(7)
        xs = [rng.normal(size=(int(n), 32)).astype(np.float32) for n in rng.integers(1, 9, 12)]
        responses = asyncio.run(infer_all(gw.url, xs))
        session = ort.InferenceSession(str(root / "fraud_mlp" / "2" / "model.onnx"))
        for x, r in zip(xs, responses, strict=True):
            assert r.status_code == 200, r.text
            got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, 1)
            np.testing.assert_allclose(got, session.run(None, {"features": x})[0], atol=1e-6)
        batches = metric(gw.url, "mlgate_batch_size_count")
        rows = metric(gw.url, "mlgate_batch_size_sum")
        assert rows == sum(len(x) for x in xs)
        assert batches < len(xs), "no two requests shared a batch"
    finally:
        gw.stop()


def test_requests_over_max_batch_size_are_split_not_refused(tmp_path: Path) -> None:
    root = repository(tmp_path, {"max_queue_delay_us": 0})
    gw = start_gateway(tmp_path, "--models", str(root), "--demo-entities", "200")
    try:
        ids = [f"u{i}" for i in range(150)]  # max_batch_size is 64
        r = httpx.post(f"{gw.url}/v1/models/fraud_mlp:predict", json={"entities": ids}, timeout=10)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 150
        assert metric(gw.url, "mlgate_batch_size_count") == 3
    finally:
        gw.stop()


def test_without_batching_a_request_over_max_batch_size_is_400(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, "--batching", "off", "--demo-entities", "10")
    try:
        ids = [f"u{i}" for i in range(65)]
        r = httpx.post(f"{gw.url}/v1/models/fraud_mlp:predict", json={"entities": ids}, timeout=10)
        assert r.status_code == 400 and "max_batch_size 64" in r.json()["error"]
        assert metric(gw.url, "mlgate_batch_size_count") == 0
    finally:
        gw.stop()


def test_a_full_queue_answers_429_with_retry_after(slow_batcher: GatewayProcess) -> None:
    xs = [np.zeros((1, 32), np.float32)] * 12
    responses = asyncio.run(infer_all(slow_batcher.url, xs))
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    assert all(r.status_code in (200, 429) for r in responses)
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "queue" in refused[0].json()["error"]


def test_a_full_queue_refuses_an_entity_request_before_fetching_its_features(
    slow_batcher: GatewayProcess,
) -> None:
    url = slow_batcher.url
    fetches = metric(url, "mlgate_feature_fetch_duration_seconds_count")

    async def refused_while_full() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            x = body(np.zeros((1, 32), np.float32))
            filling = [
                asyncio.create_task(client.post("/v2/models/fraud_mlp/infer", json=x))
                for _ in range(8)
            ]
            await until(lambda: metric(url, "mlgate_queue_depth") >= 4)
            refused = await client.post("/v1/models/fraud_mlp:predict", json={"entities": ["u1"]})
            await asyncio.gather(*filling)
            return refused

    refused = asyncio.run(refused_while_full())
    assert refused.status_code == 429, refused.text
    assert metric(url, "mlgate_feature_fetch_duration_seconds_count") == fetches


def test_a_request_past_its_deadline_is_504_and_never_runs(slow_batcher: GatewayProcess) -> None:
    # A near deadline releases the batch early; one that has passed before the batch can
    # start (1 µs here) is refused and never run.
    url = slow_batcher.url
    before = batch_totals(url)
    expired = metric(url, "mlgate_queue_expired_total")
    r = httpx.post(
        f"{url}/v2/models/fraud_mlp/infer",
        json=body(np.zeros((1, 32), np.float32), timeout=1),
        timeout=10,
    )
    assert r.status_code == 504, r.text
    assert metric(url, "mlgate_queue_expired_total") == expired + 1
    assert metric(url, "mlgate_queue_depth") == 0
    assert_probe_runs_alone(url, before)


def test_timeout_header_sets_the_deadline(slow_batcher: GatewayProcess) -> None:
    r = httpx.post(
        f"{slow_batcher.url}/v1/models/fraud_mlp:predict",
        json={"entities": ["u1"]},
        headers={"x-mlgate-timeout-ms": "0.001"},
        timeout=10,
    )
    assert r.status_code == 504


def test_a_client_that_disconnects_leaves_the_queue(slow_batcher: GatewayProcess) -> None:
    url = slow_batcher.url
    before = batch_totals(url)

    async def disconnect_while_queued() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            x = body(np.zeros((1, 32), np.float32))
            request = asyncio.create_task(client.post("/v2/models/fraud_mlp/infer", json=x))
            await until(lambda: metric(url, "mlgate_queue_depth") == 1)  # it is queued
            request.cancel()  # drops the connection, well within the 300 ms the batch waits
            with pytest.raises(asyncio.CancelledError):
                await request
        # It leaves the queue without running: it would have run had it stayed until released.
        await until(lambda: metric(url, "mlgate_queue_depth") == 0)

    asyncio.run(disconnect_while_queued())
    assert batch_totals(url) == before
    assert_probe_runs_alone(url, before)


def test_bad_scheduling_parameters_are_400(slow_batcher: GatewayProcess) -> None:
    x = np.zeros((1, 32), np.float32)
    for params in ({"priority": "high"}, {"timeout": -5}, {"priority": 7}):
        r = httpx.post(
            f"{slow_batcher.url}/v2/models/fraud_mlp/infer", json=body(x, **params), timeout=10
        )
        assert r.status_code == 400, (params, r.text)
