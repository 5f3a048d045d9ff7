"""Suite results -> medians, the markdown tables with their floor ratios, and the plot file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests import against
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
    results = results_with(p50_us=2_500, p99_us=8_000)
    results["runs"][-1]["server_cpu_us_per_request"] = 151.4
    render(results, docs)
    text = docs.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| predict-1 | 8 |"))
    assert row == (
        "| predict-1 | 8 | 5600 | 2.500 | 8.000 | 5.0x | 8.0x | - | 151 | 0"
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


def test_batching_delays_are_shown_side_by_side_under_their_base(tmp_path: Path) -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    base = results["runs"][1] | {"rows_per_batch": 3.5}
    results["runs"][1] = base
    for name, factor, rows in (("batching-fixed-2ms", 2, 6.0), ("batching-off", 3, None)):
        results["configs"].append(
            {"name": name, "description": "", "command": "mlgate serve", "compare_to": "baseline"}
        )
        results["runs"].append(
            base
            | {
                "config": name,
                "latency_us": {k: v * factor for k, v in base["latency_us"].items()},
                "rows_per_batch": rows,
            }
        )
    docs = tmp_path / "benchmarks.md"
    render(results, docs)
    text = docs.read_text()
    section = text[text.index("## Batching delay: adaptive, fixed, none") :]
    rows = [line for line in section.splitlines() if line.startswith("| predict-1 | 8 |")]
    assert rows == [
        "| predict-1 | 8 | baseline | 5600 | 2.000 | 4.000 | 3.5 |",
        "| predict-1 | 8 | batching-fixed-2ms | 5600 | 4.000 | 8.000 | 6.0 |",
        "| predict-1 | 8 | batching-off | 5600 | 6.000 | 12.000 | - |",
    ]
    # Only where the other configurations ran: concurrency 1 was baseline's alone.
    assert "| predict-1 | 1 | baseline |" not in section


def test_without_the_other_configurations_there_is_no_side_by_side(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    render(results_with(p50_us=2_000, p99_us=4_000), docs)
    assert "## Batching delay" not in docs.read_text()


def overload_section() -> dict[str, Any]:
    capacity = {"concurrency": 16, "command": "mlgate bench run --concurrency 16"}
    mib = 1 << 20
    return {
        "config": "overload",
        "model": "heavy_mlp",
        "scenario": "heavy-32",
        "max_queue_size": 16,
        "factor": 4.0,
        "changes": {"dynamic_batching": {"max_queue_size": 16}},
        "capacity": capacity | {"throughput_rps": 50.0, "latency_us": {"p99": 300_000.0}},
        "offered_rps": 200.0,
        "command": "mlgate bench run --scenario heavy-32 --rate 200 --duration 8",
        "run": {
            "served_rps": 49.6,
            "refused_share": 0.7512,
            "latency_us": {"p50": 250_000.0, "p99": 400_000.0},
            "errors": {"http_429": 1202, "timeout": 3},
            "error_latency_us": {"http_429": {"p50": 1_500.0, "p99": 6_000.0}},
            "send_lag_us": {"p50": 100.0, "p99": 2_000.0},
        },
        "memory": {
            "load_from_s": 0.5,
            "load_to_s": 8.6,
            "start_bytes": 300 * mib,
            "peak_bytes": 310 * mib,
            "end_bytes": 305 * mib,
            "samples": [[0.0, 300 * mib], [4.0, 310 * mib], [9.0, 305 * mib]],
        },
    }


def test_overload_shows_offered_served_429s_apart_and_the_memory_line(tmp_path: Path) -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    results["overload"] = overload_section()
    docs = tmp_path / "docs" / "benchmarks.md"
    render(results, docs)
    text = docs.read_text()
    assert "## Overload: 4x capacity on a queue of 16 requests" in text
    assert (
        "| 200 | 50 | 75.1% | 250.000 | 400.000 | 1.500 | 6.000 | timeout: 3 | 2.000"
        " | 300.0 | 310.0 | 305.0 |" in text
    )
    assert "max_queue_size: 16" in text
    assert "![gateway memory during the overload](benchmarks-overload.png)" in text
    assert (docs.parent / "benchmarks-overload.png").read_bytes().startswith(b"\x89PNG")


def test_a_results_file_without_overload_renders_without_it(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    render(results_with(p50_us=2_000, p99_us=4_000), docs)
    assert "## Overload" not in docs.read_text()
    assert not (tmp_path / "benchmarks-overload.png").exists()


def test_an_earlier_trees_points_are_shown_as_ratios_and_slower_ones_marked(
    tmp_path: Path,
) -> None:
    earlier = results_with(p50_us=1_000, p99_us=3_000)
    earlier["machine"]["commit"] = "0ld0ld0"
    earlier["runs"][1]["throughput_rps"] = 5600 / 0.9  # c=8 was faster then
    results = results_with(p50_us=2_000, p99_us=4_000)
    results["against"] = against.summary(earlier, Path("loadtests/results/earlier.json"))
    docs = tmp_path / "benchmarks.md"
    render(results, docs)
    text = docs.read_text()
    assert "`earlier.json` (commit 0ld0ld0" in text
    assert "| baseline | predict-1 | 1 | 700 | 700 | 1.00 | 1.00 → 2.00 | 3.00 → 4.00 |" in text
    assert "| baseline | predict-1 | 8 | 6222 | 5600 | 0.90 **slower** |" in text
    assert "1 point(s) slower than 0.95 of their earlier throughput." in text
    # Without an earlier tree, no such section.
    render(results_with(p50_us=2_000, p99_us=4_000), docs)
    assert "Against an earlier tree" not in docs.read_text()


def test_the_cluster_is_shown_beside_its_single_node_base_with_round_trips(
    tmp_path: Path,
) -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    results["configs"].append(
        {
            "name": "redis-cluster",
            "description": "3 masters",
            "command": "mlgate serve --feature-store redis+cluster://127.0.0.1:7000/0",
            "compare_to": "baseline",
        }
    )
    base = results["runs"][1]
    base["round_trips_per_request"] = 0.05
    results["runs"].append(
        base
        | {"config": "redis-cluster", "throughput_rps": 2800.0, "round_trips_per_request": 0.15}
    )
    docs = tmp_path / "benchmarks.md"
    render(results, docs)
    text = docs.read_text()
    assert "## Redis Cluster against one Redis node" in text
    assert "| predict-1 | 8 | 5600 | 2800 | 0.50 | 4.000 | 4.000 | 0.05 | 0.15 |" in text
    render(results_with(p50_us=2_000, p99_us=4_000), docs)
    assert "Redis Cluster against" not in docs.read_text()
