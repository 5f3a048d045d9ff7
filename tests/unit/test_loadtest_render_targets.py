"""The page's targets table: mlgate as it comes against the bare tritonserver, and each of the
four targets marked met or missed by how much, from a small results dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.render import render
from tests.unit.test_loadtest_render import results_with


def point(
    config: str, level: int, rps: float, p50: float, p99: float, cpu: float
) -> dict[str, Any]:
    return {
        "config": config,
        "scenario": "predict-1",
        "concurrency": level,
        "command": "mlgate bench run",
        "throughput_rps": rps,
        "latency_us": {"p50": p50, "p90": p99, "p99": p99, "p999": p99, "max": p99},
        "errors": {},
        "server_cpu_us_per_request": cpu,
    }


def with_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The floor's p50 is 500 µs (results_with)."""
    results["runs"] += [
        point("default-wrk", 1, 1_000, 1_200, 2_000, 300),
        point("default-wrk", 8, 4_000, 2_000, 5_000, 200),
        point("default-wrk", 64, 8_000, 8_000, 32_000, 140),
        point("default-grpc", 8, 2_000, 4_000, 8_000, 400),
        point("default-grpc", 64, 2_500, 20_000, 50_000, 300),
    ]
    bare = [point("", level, rps, 2_000, 4_000, 330) for level, rps in ((8, 2_000), (64, 5_000))]
    results["triton"] = {"config": "triton", "skipped": "no venv", "bare": bare}
    return results


def rendered(results: dict[str, Any], tmp_path: Path) -> str:
    docs = tmp_path / "benchmarks.md"
    render(results, docs)
    return docs.read_text()


def test_mlgate_and_the_bare_server_side_by_side_at_8_and_64(tmp_path: Path) -> None:
    text = rendered(with_targets(results_with(p50_us=2_000, p99_us=4_000)), tmp_path)
    section = text[text.index("## Targets") :]
    assert (
        "| 64 | 8000 | 5000 | 1.60 | 8.000 | 2.000 | 32.000 | 4.000 | 4.0 | 2.0 | 140 | 330 |"
        in section
    )
    assert "| 8 | 4000 | 2000 | 2.00 | 2.000 | 2.000 | 5.000 | 4.000 | 2.5 | 2.0 | 200 | 330 |" in (
        section
    )
    assert "mlgate `default-wrk` c=1 p50 1.200 ms: 2.40x." in section


def test_each_target_is_met_or_missed_by_how_much(tmp_path: Path) -> None:
    text = rendered(with_targets(results_with(p50_us=2_000, p99_us=4_000)), tmp_path)
    table = text[text.index("| target |") :].split("\n\n")[0]
    rows = table.splitlines()[2:]
    assert rows == [
        "| c=64 throughput, mlgate over bare | ≥ 2x | 1.60x | **missed** by 20% |",
        "| p99/p50 at c=8, HTTP | ≤ 3x | 2.50x | met (17% margin) |",
        "| p99/p50 at c=64, HTTP | ≤ 3x | 4.00x | **missed** by 33% |",
        "| p99/p50 at c=8, gRPC | ≤ 3x | 2.00x | met (33% margin) |",
        "| p99/p50 at c=64, gRPC | ≤ 3x | 2.50x | met (17% margin) |",
        "| c=1 p50 over the floor's p50 | ≤ 3x | 2.40x | met (20% margin) |",
        "| CPU per request at c=64, HTTP | ≤ 150 µs | 140 µs | met (7% margin) |",
        "| CPU per request at c=64, gRPC | ≤ 250 µs | 300 µs | **missed** by 20% |",
    ]


def test_targets_without_their_figures_are_marked_not_measured(
    tmp_path: Path,
) -> None:
    results = with_targets(results_with(p50_us=2_000, p99_us=4_000))
    del results["triton"]
    results["runs"] = [
        r for r in results["runs"] if r["config"] != "default-wrk" or r["concurrency"] != 1
    ]
    text = rendered(results, tmp_path)
    assert "| c=64 throughput, mlgate over bare | ≥ 2x | - | not measured |" in text
    assert "mlgate `default-wrk` c=1 p50 not measured." in text
    assert "| c=1 p50 over the floor's p50 | ≤ 3x | - | not measured |" in text


def test_a_run_without_the_default_configurations_has_no_targets_section(tmp_path: Path) -> None:
    assert "## Targets" not in rendered(results_with(p50_us=2_000, p99_us=4_000), tmp_path)
