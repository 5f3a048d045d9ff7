"""Drift judgements: calibrated under no drift at small and large windows, quick to find a
shift, and only where it is."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.monitor.counts import LocalCounts
from service.monitor.monitor import DriftMonitor
from tests.unit.drift_support import FEATURES, drift_of, normal_profile, population_proportions

ALPHA = 0.01
WINDOWS = 1000


@pytest.mark.parametrize("statistic", ["psi", "ks"])
def test_false_alarm_rate_over_1000_windows_of_100_rows_is_within_alpha(statistic: str) -> None:
    drift = drift_of(normal_profile(), alpha=ALPHA, statistic=statistic, min_rows=10)
    rng = np.random.default_rng(1)
    alarms = 0
    for window in range(WINDOWS):
        rows = rng.standard_normal((100, FEATURES))
        judged = drift.judge(drift.binner.counts(rows), window)
        assert judged is not None and judged.rows == 100
        alarms += any(c.alarm for c in judged.columns)
    assert alarms / WINDOWS <= ALPHA + 0.01


@pytest.mark.parametrize("statistic", ["psi", "ks"])
def test_false_alarm_rate_over_1000_windows_of_10000_rows_is_within_alpha(statistic: str) -> None:
    """Windows of 10,000 fresh rows of the reference's population, counted straight into its
    bins: each column's counts are multinomial at the population's share of each bin. The
    reference holds 20 windows' rows, as README advises: judged against one reference of a
    window's size, every window would share that reference's own sampling error."""
    profile = normal_profile(rows=200_000)
    drift = drift_of(profile, alpha=ALPHA, statistic=statistic)
    shares = population_proportions(profile)
    rng = np.random.default_rng(2)
    drawn = [rng.multinomial(10_000, p, size=WINDOWS) for p in shares]
    alarms = 0
    for window in range(WINDOWS):
        counts = np.concatenate([d[window] for d in drawn])
        judged = drift.judge(counts, window)
        assert judged is not None and judged.rows == 10_000
        alarms += any(c.alarm for c in judged.columns)
    assert alarms / WINDOWS <= ALPHA + 0.01


def test_half_sigma_shift_of_one_feature_alarms_within_two_windows_and_only_for_it() -> None:
    drift = drift_of(normal_profile(), alpha=ALPHA, window_s=10, sub_windows=1)
    monitor = DriftMonitor(lambda: [drift], LocalCounts())
    rng = np.random.default_rng(3)
    alarmed: list[set[str]] = []

    async def run() -> None:
        for window in range(2):
            start = window * 10.0
            for batch in range(20):
                rows = rng.standard_normal((50, FEATURES))
                rows[:, 3] += 0.5
                drift.count({"x": rows}, now=start + batch * 0.1)
            await monitor.tick(start + 10.0 + 2.5)
            assert drift.judgement is not None and drift.judgement.rows == 1000
            alarmed.append({c.column.name for c in drift.judgement.columns if c.alarm})

    asyncio.run(run())
    assert alarmed[0] | alarmed[1] == {"x3"}
    assert drift.judgement is not None
    assert drift.judgement.ranked()[0].column.name == "x3"


def test_window_below_min_rows_keeps_the_last_judgement() -> None:
    drift = drift_of(normal_profile(), min_rows=100)
    rng = np.random.default_rng(4)
    first = drift.judge(drift.binner.counts(rng.standard_normal((200, FEATURES))), 0)
    assert first is not None
    assert drift.judge(drift.binner.counts(rng.standard_normal((50, FEATURES))), 1) is None
    assert drift.judgement is first
