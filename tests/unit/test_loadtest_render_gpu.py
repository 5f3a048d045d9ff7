"""The page's GPU section, rendered from hand-recorded results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests.render_gpu import GPU_RESULTS, gpu_section, latest_gpu_results


def results(measured: str) -> dict[str, Any]:
    return {
        "measured": measured,
        "commit": "abc1234",
        "how": "by hand.",
        "machine": "one GPU",
        "onnxruntime": "onnxruntime-gpu",
        "gateway": "mlgate serve",
        "load": "mlgate bench run",
        "tests": "all passed",
        "rows": [
            {
                "device": "cuda",
                "batching": "on",
                "scenario": "heavy-1",
                "c": 64,
                "rps": 2177.9,
                "p50_ms": 25.343,
                "p99_ms": 85.823,
                "rows_per_batch": 31.9,
            },
            {
                "device": "cuda",
                "batching": "off",
                "scenario": "heavy-1",
                "c": 64,
                "rps": 1631.8,
                "p50_ms": 36.895,
                "p99_ms": 103.743,
                "rows_per_batch": None,
            },
        ],
        "findings": ["batching pays."],
    }


def test_the_last_file_by_name_is_shown(tmp_path: Path) -> None:
    assert latest_gpu_results(tmp_path) is None
    for measured in ("2026-01-02", "2026-01-01"):
        (tmp_path / f"{measured}.json").write_text(json.dumps(results(measured)))
    latest = latest_gpu_results(tmp_path)
    assert latest is not None and latest["measured"] == "2026-01-02"


def test_rows_and_findings_are_rendered() -> None:
    lines = gpu_section(results("2026-01-02"))
    assert "## On a GPU (2026-01-02, commit abc1234)" in lines
    assert "| cuda | on | heavy-1 | 64 | 2178 | 25.34 | 85.8 | 31.9 |" in lines
    assert "| cuda | off | heavy-1 | 64 | 1632 | 36.90 | 103.7 | - |" in lines
    assert lines[-1] == "- batching pays."
    assert gpu_section(None) == []


def test_the_recorded_gpu_results_render() -> None:
    recorded = latest_gpu_results(GPU_RESULTS)
    assert recorded is not None
    assert any(line.startswith("| cuda |") for line in gpu_section(recorded))
