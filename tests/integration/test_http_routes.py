"""The inference routes, in process: what FastAPI's per-request machinery gave them, kept.

They are plain Starlette routes (no dependency solving); these pin the answers that the
FastAPI routes gave: `?version=`, 405, the JSON error handlers, Retry-After, binary output.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.pipeline.pipeline import Pipeline
from service.protocol.errors import Overloaded
from service.server import create_app
from service.settings import Settings
from tests.conftest import MODELS_DIR

PREDICT = "/v1/models/fraud_mlp:predict"
INFER = "/v2/models/fraud_mlp/infer"
ROW = np.linspace(0, 1, 32, dtype=np.float32).reshape(1, 32)
V2_BODY = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 32], "data": ROW[0].tolist()}]
}


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    settings = Settings(
        models=MODELS_DIR, feature_store="memory://", demo_entities=10, audit="none"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # The 500 handler answers, then Starlette raises the error on for the server to log.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def failing_gateway(app: FastAPI, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Every predict and infer call on `app`'s pipeline raises `error`."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    pipeline: Pipeline = app.state.pipeline
    monkeypatch.setattr(pipeline, "predict", fail)
    monkeypatch.setattr(pipeline, "infer", fail)


async def test_version_query_parameter_picks_the_version_on_routes_without_one(
    client: httpx.AsyncClient,
) -> None:
    predict = {"entities": ["u1"]}
    r = await client.post(PREDICT, params={"version": "1"}, json=predict)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    r = await client.post(INFER, params={"version": "1"}, json=V2_BODY)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    # The path's version wins over the query's.
    r = await client.post(
        "/v1/models/fraud_mlp/versions/2:predict", params={"version": "1"}, json=predict
    )
    assert r.json()["model_version"] == "2"
    r = await client.post(
        "/v2/models/fraud_mlp/versions/2/infer", params={"version": "1"}, json=V2_BODY
    )
    assert r.headers["x-mlgate-version"] == "2"


async def test_inference_routes_refuse_other_methods_with_a_json_405(
    client: httpx.AsyncClient,
) -> None:
    for path in (PREDICT, INFER, "/v2/models/fraud_mlp/versions/1/infer"):
        r = await client.get(path)
        assert r.status_code == 405
        assert r.json() == {"error": f"Method Not Allowed: GET {path}"}


async def test_inference_errors_are_json_with_the_gateway_status(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/models/nope/versions/1:predict", json={"entities": ["u1"]})
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = await client.post(INFER, content=b"{")
    assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")


async def test_an_overloaded_gateway_answers_429_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_gateway(app, monkeypatch, Overloaded("queue full", retry_after_s=2.6))
    for r in (
        await client.post(PREDICT, json={"entities": ["u1"]}),
        await client.post(INFER, json=V2_BODY),
    ):
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        assert r.json() == {"error": "queue full"}


async def test_an_unexpected_error_is_a_500_that_tells_nothing(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_gateway(app, monkeypatch, RuntimeError("secret internals"))
    for r in (
        await client.post(PREDICT, json={"entities": ["u1"]}),
        await client.post(INFER, json=V2_BODY),
    ):
        assert r.status_code == 500
        assert r.json() == {"error": "internal error"}
        assert b"secret" not in r.content


async def test_binary_outputs_carry_the_json_header_length(client: httpx.AsyncClient) -> None:
    blob = ROW.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 32],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = await client.post(
        INFER,
        content=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    size = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:size])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(r.content) - size == 4
    assert r.headers["x-mlgate-version"] == doc["model_version"]


async def test_metrics_carry_the_event_loops_lag(client: httpx.AsyncClient) -> None:
    # The watcher samples every 0.1 s from start-up; wait for a few samples.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    first = lag_samples((await client.get("/metrics")).text)
    while lag_samples((await client.get("/metrics")).text) < first + 3:
        assert loop.time() < deadline, "the event-loop lag is not sampled"
        await asyncio.sleep(0.1)


def lag_samples(text: str) -> float:
    found = re.search(r"^mlgate_event_loop_lag_seconds_count (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_full_collection_skips_what_start_up_left(app: FastAPI) -> None:
    # The objects start-up made are frozen: a full collection no longer traverses them, so it
    # stops the event loop for a fraction of the time (tens of ms before).
    assert gc.get_freeze_count() > 2 * len(gc.get_objects())
