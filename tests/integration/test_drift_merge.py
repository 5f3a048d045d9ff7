"""Counts are additive: two processes merging through a real redis-server are judged exactly as
one process that saw every row."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from service.monitor.counts import LocalCounts, RedisCounts
from service.monitor.monitor import DriftMonitor
from tests.conftest import RedisServer
from tests.unit.drift_support import FEATURES, drift_of, normal_profile

CONFIG = {"window_s": 10, "sub_windows": 2}


def test_two_processes_merged_in_redis_score_as_one_seeing_every_row(redis_url: str) -> None:
    profile = normal_profile()
    alone = drift_of(profile, **CONFIG)
    first, second = drift_of(profile, **CONFIG), drift_of(profile, **CONFIG)
    rng = np.random.default_rng(5)

    async def run() -> None:
        one = DriftMonitor(lambda: [alone], LocalCounts())
        fleet = [
            DriftMonitor(lambda: [first], RedisCounts(redis_url)),
            DriftMonitor(lambda: [second], RedisCounts(redis_url)),
        ]
        try:
            for batch in range(40):
                rows = rng.standard_normal((25, FEATURES))
                rows[:, 1] += 0.3
                at = batch * 0.25  # two sub-windows of 5 s
                alone.count({"x": rows}, now=at)
                (first if batch % 3 else second).count({"x": rows}, now=at)
            # Just after the last sub-window ends, each process hands its sub-windows on; once
            # the grace period has passed, each judges the merged window.
            for at in (10.1, 12.0):
                for monitor in [*fleet, one]:
                    await monitor.tick(at)
        finally:
            for monitor in [*fleet, one]:
                await monitor.close()

    asyncio.run(run())
    judged = [d.judgement for d in (alone, first, second)]
    assert all(j is not None and j.rows == 1000 for j in judged)
    scores = [[(c.psi, c.ks, c.threshold) for c in j.columns] for j in judged if j is not None]
    assert scores[0] == scores[1] == scores[2]


def test_an_unreachable_redis_costs_one_log_line_not_one_per_tick(
    doomed_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    drift = drift_of(normal_profile(), window_s=1, sub_windows=2)
    doomed_redis.stop()

    async def run() -> None:
        monitor = DriftMonitor(lambda: [drift], RedisCounts(doomed_redis.url))
        monitor.start()
        for _ in range(8):  # 2 s of ticks, each with a sub-window to hand on
            drift.count({"x": np.zeros((1, FEATURES))})
            await asyncio.sleep(0.25)
        await monitor.close()

    with caplog.at_level(logging.WARNING, "service.monitor.monitor"):
        asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("drift monitor: ConnectionError:")
