"""The request path in-process: routing, validation, features, scoring and deadlines, stage by
stage, on the memory store and recording backends (tests/unit/pipeline_support.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.pipeline.request import RequestContext
from service.protocol.errors import InvalidInput, NotFound
from service.protocol.v2 import InferRequest
from service.routing.config import initial_policy
from tests.unit.pipeline_support import MODEL, VIEWS, RecordingBackend, build, config

UNBATCHED = config(max_batch_size=4, dynamic_batching=None)
BATCHED = config(max_batch_size=4, dynamic_batching={"max_queue_delay_us": 0})
CANARY_ALL = {"canary": {"version": "2", "weight": 1.0}}


def ctx(version: str | None = None, deadline: float | None = None) -> RequestContext:
    return RequestContext("predict", MODEL, version, deadline=deadline)


def batch_sizes(version: str) -> float:
    value = REGISTRY.get_sample_value(
        "mlgate_batch_size_count", {"model": MODEL, "version": version}
    )
    return value or 0.0


async def test_a_canary_request_is_batched_by_the_canary_versions_batcher_and_limits() -> None:
    stable, canary = RecordingBackend(0.1), RecordingBackend(0.2)
    pipeline, _ = build(
        {"1": (UNBATCHED, stable), "2": (BATCHED, canary)},
        model_config=config(routing=CANARY_ALL),
    )
    before = batch_sizes("2")
    try:
        # Eight rows: over the stable version's unbatched limit of 4, within what the canary's
        # batcher splits into batches of 4.
        answer = await pipeline.predict(ctx(), [f"u{i}" for i in range(8)], None, {})
        assert (answer.version, answer.route) == ("2", "canary")
        assert answer.outputs["probability"].reshape(-1).tolist() == pytest.approx([0.2] * 8)
        assert [call.rows for call in canary.calls] == [4, 4]
        assert stable.calls == []
        assert batch_sizes("2") - before == 2
        # Named explicitly, the stable version answers by its own limits.
        with pytest.raises(InvalidInput, match="exceeds max_batch_size 4"):
            await pipeline.predict(ctx("1"), [f"u{i}" for i in range(8)], None, {})
    finally:
        await pipeline.close()


@pytest.mark.parametrize("batching", [BATCHED, UNBATCHED], ids=["batched", "unbatched"])
async def test_the_clients_deadline_reaches_the_backend(batching: object) -> None:
    backend = RecordingBackend(0.5)
    pipeline, _ = build({"1": (batching, backend)})  # type: ignore[dict-item]
    deadline = time.monotonic() + 30
    try:
        await pipeline.predict(ctx(deadline=deadline), ["u1", "u2"], None, {})
        await pipeline.predict(ctx(), ["u1"], None, {"timeout": 20_000_000})
    finally:
        await pipeline.close()
    assert backend.calls[0].deadline == deadline
    # The V2 `timeout` parameter (µs) is a deadline too.
    second = backend.calls[1].deadline
    assert second is not None and 19 < second - time.monotonic() < 20


async def test_the_entity_features_are_the_values_written_in_the_models_order() -> None:
    backend = RecordingBackend(0.5)
    pipeline, store = build({"1": (UNBATCHED, backend)})
    stats, profile = VIEWS["txn_stats"], VIEWS["user_profile"]
    written = {
        view.name: np.arange(2 * view.width, dtype=np.float32).reshape(2, view.width) + base
        for view, base in ((stats, 100.0), (profile, 200.0))
    }
    for view in (stats, profile):
        await store.write(view, ["a", "b"], written[view.name])
    try:
        answer = await pipeline.predict(ctx(), ["b", "a"], None, {})
    finally:
        await pipeline.close()
    # config.yaml binds views [txn_stats, user_profile]: their columns side by side, per entity.
    expected = np.concatenate([written["txn_stats"], written["user_profile"]], axis=1)[[1, 0]]
    np.testing.assert_array_equal(answer.inputs["features"], expected)
    assert answer.feature_status() == [{"txn_stats": "fresh", "user_profile": "fresh"}] * 2


async def test_an_unknown_model_or_version_is_not_found_before_anything_runs() -> None:
    backend = RecordingBackend(0.5)
    pipeline, _ = build({"1": (UNBATCHED, backend)})
    try:
        with pytest.raises(NotFound, match="unknown model 'nope'; available: fraud_mlp"):
            await pipeline.predict(RequestContext("predict", "nope"), ["u1"], None, {})
        with pytest.raises(NotFound, match="has no version '9'; available: 1"):
            await pipeline.predict(ctx("9"), ["u1"], None, {})
        request = InferRequest(inputs={"features": np.zeros((1, 32), np.float32)})
        with pytest.raises(NotFound, match="has no version '9'"):
            await pipeline.infer(RequestContext("infer", MODEL, "9"), request)
    finally:
        await pipeline.close()
    assert backend.calls == []


async def test_without_a_version_the_policys_stable_version_answers_everything() -> None:
    pipeline, _ = build(
        {"1": (UNBATCHED, RecordingBackend(0.1)), "2": (BATCHED, RecordingBackend(0.2))}
    )
    try:
        assert pipeline.model_metadata(MODEL, None)["name"] == MODEL
        assert pipeline.route.version(MODEL, None).version == "1"
        # A promotion: the policy's stable version changes, and with it every default.
        pipeline.router.set(MODEL, initial_policy(None, "2", ["1", "2"]))
        assert pipeline.route.version(MODEL, None).version == "2"
        assert pipeline.route.version(MODEL, "").version == "2"
        assert pipeline.model_metadata(MODEL, None)["versions"] == ["1", "2"]
        answer = await pipeline.predict(ctx(), ["u1"], None, {})
        assert (answer.version, answer.route) == ("2", "primary")
    finally:
        await pipeline.close()


@pytest.mark.parametrize("batching", [BATCHED, UNBATCHED], ids=["batched", "unbatched"])
async def test_a_cancelled_request_is_counted_cancelled_not_ok(batching: object) -> None:
    pipeline, _ = build({"1": (batching, RecordingBackend(0.5, seconds=0.5))})  # type: ignore[dict-item]

    def count(outcome: str) -> float:
        labels = {"model": MODEL, "version": "1", "endpoint": "predict", "outcome": outcome}
        return REGISTRY.get_sample_value("mlgate_requests_total", labels) or 0.0

    before = {outcome: count(outcome) for outcome in ("ok", "cancelled")}
    try:
        task = asyncio.create_task(pipeline.predict(ctx(), ["u1"], None, {}))
        await asyncio.sleep(0.05)  # routed, fetched, waiting on the backend
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await pipeline.close()
    assert count("cancelled") - before["cancelled"] == 1
    assert count("ok") == before["ok"]
