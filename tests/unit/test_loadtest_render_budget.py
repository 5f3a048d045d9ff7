"""The page's CPU budget per request, from a small results dict."""

from __future__ import annotations

from pathlib import Path

from loadtests.budget import STAGES
from loadtests.render import render
from tests.unit.test_loadtest_render import results_with


def test_each_stage_is_shown_in_microseconds_and_as_its_share_of_the_total(tmp_path: Path) -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    stages = dict.fromkeys(STAGES, 10.0) | {"http front": 120.0, "score": 50.0}
    results["budget"] = {
        "command": "mlgate bench budget --requests 3000",
        "workloads": [
            {
                "workload": name,
                "requests": 3000,
                "total_us": 240.0,
                "unclocked_total_us": 200.0,
                "stages_us": stages,
            }
            for name in ("entity predict", "V2 infer")
        ],
    }
    docs = tmp_path / "benchmarks.md"
    render(results, docs)
    text = docs.read_text()
    section = text[text.index("## CPU budget per request") :].split("\n## ")[0]
    assert "`mlgate bench budget --requests 3000`" in section
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert rows[0] == "| http front | 120.0 | 50% | 120.0 | 50% |"
    assert "| score | 50.0 | 21% | 50.0 | 21% |" in rows
    assert [row.split(" | ")[0][2:] for row in rows] == [*STAGES, "total", "unclocked"]
    assert rows[-1] == "| unclocked | 200.0 | - | 200.0 | - |"


def test_a_results_file_without_a_budget_has_no_budget_section(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    render(results_with(p50_us=2_000, p99_us=4_000), docs)
    assert "## CPU budget per request" not in docs.read_text()
