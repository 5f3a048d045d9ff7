"""Open-loop arrival schedules: bounds, spacing, Poisson statistics, process interleaving."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.generator import LoadSpec, schedule_ns
from loadtests.runner import Job, split
from loadtests.workloads import SCENARIOS, Workload


def offsets(spec: LoadSpec) -> np.ndarray:
    return np.array(list(schedule_ns(spec)), dtype=np.int64)


def test_constant_rate_is_a_metronome_bounded_by_duration() -> None:
    sent = offsets(LoadSpec(rate=1000, duration_s=2.0))
    assert len(sent) == 2000
    assert sent[0] == 0
    assert set(np.diff(sent).tolist()) <= {999_999, 1_000_000, 1_000_001}


def test_request_count_bounds_the_schedule_before_the_duration() -> None:
    assert len(offsets(LoadSpec(rate=1000, duration_s=60, requests=123))) == 123
    assert len(offsets(LoadSpec(rate=1000, duration_s=60, requests=10_000, poisson=True))) == 10_000


def test_poisson_gaps_are_exponential_with_the_requested_mean() -> None:
    sent = offsets(LoadSpec(rate=500, duration_s=60, poisson=True, seed=3))
    gaps = np.diff(sent) / 1e9
    assert abs(len(sent) - 30_000) < 3 * np.sqrt(30_000)
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.03)
    # An exponential's standard deviation equals its mean; a metronome's is zero.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert (sent < 60e9).all()
    assert (np.diff(sent) >= 0).all()


def test_poisson_schedule_is_reproducible_from_its_seed() -> None:
    spec = LoadSpec(rate=100, duration_s=5, poisson=True, seed=9)
    assert (offsets(spec) == offsets(spec)).all()
    other = LoadSpec(rate=100, duration_s=5, poisson=True, seed=10)
    assert len(offsets(other)) != len(offsets(spec)) or (offsets(other) != offsets(spec)).any()


def test_processes_interleave_into_one_metronome_at_the_total_rate() -> None:
    job = Job("http://127.0.0.1:1", Workload(SCENARIOS["predict-1"]), LoadSpec(rate=300))
    parts = split(job, 3)
    combined = np.sort(np.concatenate([offsets(p.spec) for p in parts]))
    assert len(combined) == 3000
    assert np.diff(combined).max() - np.diff(combined).min() <= 2
    assert len({p.workload.seed for p in parts}) == 3


def test_split_spreads_concurrency_and_count_exactly() -> None:
    job = Job(
        "http://127.0.0.1:1",
        Workload(SCENARIOS["predict-1"]),
        LoadSpec(concurrency=8, requests=100),
    )
    parts = split(job, 3)
    assert [p.spec.concurrency for p in parts] == [3, 3, 2]
    assert [p.spec.requests for p in parts] == [34, 33, 33]
    with pytest.raises(ValueError, match="concurrency"):
        split(job, 9)


def test_a_spec_is_either_closed_or_open_loop() -> None:
    with pytest.raises(ValueError):
        LoadSpec()
    with pytest.raises(ValueError):
        LoadSpec(concurrency=1, rate=10)
    with pytest.raises(ValueError):
        LoadSpec(concurrency=1, duration_s=0)
