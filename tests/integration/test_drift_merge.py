"""Counts are additive: two processes merging through a real redis-server are judged exactly as
one process that saw every row."""

from __future__ import annotations

import asyncio

import numpy as np

from service.monitor.counts import LocalCounts, RedisCounts
from service.monitor.monitor import DriftMonitor
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
