"""Suite results -> medians, the markdown tables with their floor ratios, and the plot file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.generator import RunResult
from loadtests.render import render
from loadtests.suite import summarise


def run_of(latencies_ms: list[float], elapsed_s: float, errors: int = 0) -> RunResult:
    result = RunResult(elapsed_s=elapsed_s)
    for value in latencies_ms:
        result.record(0, int(value * 1e6), None)
    for _ in range(errors):
        result.record(0, 1, "http_503")
    return result


def test_points_are_medians_of_the_repeats_figure_by_figure() -> None:
    repeats = [run_of([1.0] * 99 + [9.0], 1.0), run_of([2.0] * 100, 2.0, errors=2)]
    repeats.append(run_of([3.0] * 100, 0.5))
    point = summarise(repeats)
    assert point["throughput_rps"] == 100.0  # of 100, 50, 200
    assert 1_990 <= point["latency_us"]["p50"] <= 2_010
    assert point["errors"] == {"http_503": 2}
    assert point["requests"] == 302


def results_with(p50_us: float, p99_us: float) -> dict[str, Any]:
    latency = {"p50": p50_us, "p90": p99_us, "p99": p99_us, "p999": p99_us, "max": p99_us}
    floor = {"p50": 500.0, "p90": 800.0, "p99": 1000.0, "p999": 2000.0, "max": 3000.0}
    command = "mlgate bench run --url http://127.0.0.1:8000 --scenario predict-1 --concurrency 8"
    return {
        "started": "2030-01-01T00:00:00+00:00",
        "elapsed_s": 250.0,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "platform": "linux",
            "python": "3.11",
            "redis": "7",
            "commit": "abc1234",
            "uncommitted_changes": False,
            "load_average_1m": 0.5,
        },
        "settings": {"duration_s": 4, "repeats": 3, "warmup_s": 1, "entities": 100},
        "setup": ["mlgate bench seed --redis redis://127.0.0.1:6379/0 --n 100"],
        "floor": {"command": "mlgate bench floor", "samples": 10, "parts_us": {"total": floor}},
        "ceiling": [
            {
                "client": "raw",
                "concurrency": 8,
                "command": "mlgate bench ceiling --concurrency 8",
                "throughput_rps": 12000.0,
                "latency_us": latency,
            }
        ],
        "configs": [{"name": "baseline", "description": "one worker", "command": "mlgate serve"}],
        "runs": [
            {
                "config": "baseline",
                "scenario": "predict-1",
                "concurrency": c,
                "command": command,
                "throughput_rps": 700.0 * c,
                "latency_us": latency,
                "errors": {},
            }
            for c in (1, 8)
        ],
    }


def test_rows_carry_command_throughput_percentiles_and_floor_ratios(tmp_path: Path) -> None:
    docs = tmp_path / "docs" / "benchmarks.md"
    render(results_with(p50_us=2_500, p99_us=8_000), docs)
    text = docs.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| predict-1 | 8 |"))
    assert row == (
        "| predict-1 | 8 | 5600 | 2.500 | 8.000 | 5.0x | 8.0x | - | 0"
        " | `mlgate bench run --url http://127.0.0.1:8000 --scenario predict-1 --concurrency 8` |"
    )
    assert "| raw | 8 | 12000 |" in text
    assert "![p50 and p99 latency against throughput](benchmarks.png)" in text
    assert (docs.parent / "benchmarks.png").read_bytes().startswith(b"\x89PNG")


def test_a_configuration_that_names_another_is_shown_as_ratios(tmp_path: Path) -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    results["configs"].append(
        {
            "name": "batching-off",
            "description": "alone",
            "command": "mlgate serve",
            "compare_to": "baseline",
        }
    )
    base = results["runs"][1]
    results["runs"][1] = base | {"rows_per_batch": 3.5}
    results["runs"].append(
        base
        | {
            "config": "batching-off",
            "throughput_rps": base["throughput_rps"] / 2,
            "latency_us": {k: v * 3 for k, v in base["latency_us"].items()},
            "rows_per_batch": None,
        }
    )
    docs = tmp_path / "benchmarks.md"
    render(results, docs)
    assert (
        "| batching-off | baseline | predict-1 | 8 | 0.50 | 3.00 | 3.00 | - vs 3.5 |"
        in docs.read_text()
    )
