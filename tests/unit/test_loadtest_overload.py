"""The overload measurement's pieces: the RSS sampler, its figures, the changed repository."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from loadtests.configs import CONFIGS, Overload
from loadtests.generator import RunResult
from loadtests.memory import RssSampler, rss_bytes
from loadtests.overload import memory_figures, overload_figures, queue_changes
from loadtests.repository import changed_repository, merged
from tests.conftest import MODELS_DIR


def finished_process() -> int:
    """The id of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_rss_of_this_process_is_read_and_of_a_finished_one_is_none() -> None:
    assert (rss_bytes(os.getpid()) or 0) > 1 << 20
    assert rss_bytes(finished_process()) is None


def next_sample(sampler: RssSampler) -> int:
    """The value of the first sample taken after this call (waits for it, up to 10 s)."""
    seen = len(sampler.samples)
    deadline = time.monotonic() + 10
    while len(sampler.samples) <= seen + 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    return sampler.samples[-1][1]


def test_sampler_follows_memory_that_a_process_takes_and_gives_back() -> None:
    with RssSampler(os.getpid(), interval_s=0.01) as sampler:
        before = next_sample(sampler)
        block = bytearray(64 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not reserved
        during = next_sample(sampler)
        del block
        after = next_sample(sampler)
    assert during - before >= 48 << 20
    assert after < during
    times = [t for t, _ in sampler.samples]
    assert times == sorted(times)


def test_sampler_of_a_process_that_is_gone_leaves_no_samples() -> None:
    with RssSampler(finished_process(), interval_s=0.01) as sampler:
        time.sleep(0.03)
    assert sampler.samples == []
    assert memory_figures(sampler.samples, 0.0, 1.0)["peak_bytes"] is None


def test_memory_figures_start_at_the_last_sample_before_the_load() -> None:
    samples = [(0.0, 100), (0.1, 110), (0.2, 150), (0.3, 300), (0.4, 120)]
    figures = memory_figures(samples, load_from_s=0.15, load_to_s=0.35)
    assert (figures["start_bytes"], figures["peak_bytes"], figures["end_bytes"]) == (110, 300, 120)
    assert figures["samples"] == [[t, v] for t, v in samples]


def test_overload_figures_count_the_429_share_and_time_the_429s_apart() -> None:
    result = RunResult(elapsed_s=2.0)
    for _ in range(10):
        result.record(0, 50_000_000, None)  # 50 ms
    for _ in range(30):
        result.record(0, 1_000_000, "http_429")  # 1 ms
    figures = overload_figures(result)
    assert figures["served_rps"] == 5.0
    assert figures["refused"] == 30
    assert figures["refused_share"] == 0.75
    assert 49_000 <= figures["latency_us"]["p50"] <= 51_000
    assert 990 <= figures["error_latency_us"]["http_429"]["p99"] <= 1_010


def test_error_latencies_survive_the_trip_between_generator_processes() -> None:
    a, b = RunResult(), RunResult()
    a.record(0, 2_000_000, "http_429")
    b.record(0, 4_000_000, "http_429")
    b.record(0, 9_000_000, "timeout")
    merged_result = RunResult.from_dict(a.to_dict())
    merged_result.merge(RunResult.from_dict(b.to_dict()))
    assert merged_result.error_latency["http_429"].count == 2
    assert merged_result.error_latency["timeout"].count == 1
    assert 3_990 <= merged_result.error_latency["http_429"].max_us <= 4_010


def test_the_overload_model_gets_its_small_queue_and_keeps_everything_else(
    tmp_path: Path,
) -> None:
    overload = CONFIGS["overload"].overload
    assert isinstance(overload, Overload)
    changes = queue_changes(overload)
    root = changed_repository(
        MODELS_DIR, tmp_path / "models", overload.model, lambda c: merged(c, changes)
    )
    original = yaml.safe_load((MODELS_DIR / overload.model / "config.yaml").read_text())
    changed = yaml.safe_load((root / overload.model / "config.yaml").read_text())
    assert changed["dynamic_batching"]["max_queue_size"] == overload.max_queue_size
    original["dynamic_batching"]["max_queue_size"] = overload.max_queue_size
    assert changed == original
    assert (root / "fraud_mlp").resolve() == (MODELS_DIR / "fraud_mlp").resolve()
    assert (root / overload.model / "1").resolve() == (MODELS_DIR / overload.model / "1").resolve()


def test_merged_lays_nested_changes_over_a_config_without_touching_it() -> None:
    config = {"a": 1, "b": {"x": 1, "y": 2}}
    assert merged(config, {"b": {"y": 3}, "c": 4}) == {"a": 1, "b": {"x": 1, "y": 3}, "c": 4}
    assert config == {"a": 1, "b": {"x": 1, "y": 2}}
