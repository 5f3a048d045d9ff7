"""Every route's version counts its rows for drift: stable, canary and shadow alike."""

from __future__ import annotations

import asyncio

import numpy as np

from service.monitor.profile import build_profile, model_columns
from service.pipeline.request import RequestContext
from tests.unit.pipeline_support import MODEL, VIEWS, RecordingBackend, build, config

ROUTING = {"canary": {"version": "2", "weight": 0.5}, "shadow": [{"version": "3"}]}


async def test_stable_canary_and_shadow_versions_all_count_their_rows() -> None:
    model_config = config(routing=ROUTING)
    columns = model_columns(model_config, VIEWS)
    rng = np.random.default_rng(0)
    reference = build_profile(MODEL, "1", columns, {c.name: rng.random(1000) for c in columns})
    versions = {v: (model_config, RecordingBackend(0.1 * int(v))) for v in ("1", "2", "3")}
    pipeline, _ = build(versions, model_config=model_config, reference=reference)
    try:
        for i in range(200):
            ctx = RequestContext("predict", MODEL)
            await pipeline.predict(ctx, [f"u{i}"], None, {})
        shadow = versions["3"][1]
        for _ in range(1000):  # shadow copies are scored after the answers, 10 s at most
            if sum(call.rows for call in shadow.calls) == 200:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)  # the counting timers of the last batches
        rows = {
            d.version: sum(
                int(c[: reference.columns[0].bins].sum()) for c in d.closed(1e12).values()
            )
            for d in pipeline.registry.drifts()
        }
    finally:
        await pipeline.close()
    assert rows["1"] + rows["2"] == 200 and rows["1"] > 0 and rows["2"] > 0
    assert rows["3"] == 200
