"""The latency histogram: percentiles of known values, and merging across processes."""

from __future__ import annotations

import numpy as np

from loadtests.generator import RunResult
from loadtests.histogram import LatencyHistogram


def test_percentiles_of_known_values_are_within_hdr_precision() -> None:
    histogram = LatencyHistogram()
    for value in range(1, 10_001):
        histogram.record_us(value)
    assert histogram.count == 10_000
    summary = histogram.summary_us()
    # Three significant figures: every figure within 0.1% of the exact order statistic.
    for key, exact in (("p50", 5_000), ("p90", 9_000), ("p99", 9_900), ("p999", 9_990)):
        assert abs(summary[key] - exact) <= exact * 0.001, key
    assert abs(summary["max"] - 10_000) <= 10


def test_values_outside_the_range_are_clamped_not_lost() -> None:
    histogram = LatencyHistogram()
    for value in (0, -5, 120_000_000):
        histogram.record_us(value)
    assert histogram.count == 3
    assert histogram.percentile_us(10) == 1
    assert 59_000_000 < histogram.max_us < 61_000_000


def test_merging_decoded_histograms_equals_recording_everything_in_one() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.lognormal(7, 1, size=20_000).astype(int) + 1 for _ in range(3)]
    whole = LatencyHistogram()
    merged = LatencyHistogram()
    for part in parts:
        one = LatencyHistogram()
        for value in part.tolist():
            one.record_us(value)
            whole.record_us(value)
        # Across a process boundary, only the encoded form travels.
        merged.merge(LatencyHistogram.decode(one.encode()))
    assert merged.count == whole.count == 60_000
    assert merged.summary_us() == whole.summary_us()


def test_run_results_merge_through_their_json_form() -> None:
    a, b = RunResult(), RunResult()
    a.record(0, 2_000_000, None)
    a.record(0, 1, "timeout")
    a.elapsed_s = 1.0
    b.record(0, 4_000_000, None)
    b.record(0, 1, "http_503")
    b.record(0, 1, "timeout")
    b.elapsed_s = 1.25
    merged = RunResult.from_dict(a.to_dict())
    merged.merge(RunResult.from_dict(b.to_dict()))
    assert merged.ok == 2
    assert merged.errors == {"timeout": 2, "http_503": 1}
    assert merged.elapsed_s == 1.25
    assert merged.throughput_rps == 2 / 1.25
    assert merged.latency.percentile_us(50) == 2_000
    assert 3_990 <= merged.latency.max_us <= 4_010
