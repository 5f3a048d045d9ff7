"""The page's GPU section, from the last results file under loadtests/results/gpu/.

The suite runs where CI does, without a GPU; runs on a GPU machine are recorded by hand in that
folder (the file says how they were made) and shown as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GPU_RESULTS = Path(__file__).resolve().parent / "results" / "gpu"


def latest_gpu_results(folder: Path = GPU_RESULTS) -> dict[str, Any] | None:
    files = sorted(folder.glob("*.json"))
    return json.loads(files[-1].read_text()) if files else None


def gpu_section(results: dict[str, Any] | None) -> list[str]:
    if results is None:
        return []
    lines = [
        "",
        f"## On a GPU ({results['measured']}, commit {results['commit']})",
        "",
        f"Not made by `make bench`: {results['how']}",
        "",
        f"- machine: {results['machine']}",
        f"- onnxruntime: {results['onnxruntime']}",
        f"- gateway: `{results['gateway']}`",
        f"- load: `{results['load']}`",
        f"- tests there: {results['tests']}",
        "",
        "| provider | batching | scenario | connections | req/s | p50 ms | p99 ms | rows/batch |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        per_batch = row["rows_per_batch"]
        lines.append(
            f"| {row['device']} | {row['batching']} | {row['scenario']} | {row['c']}"
            f" | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.1f}"
            f" | {'-' if per_batch is None else f'{per_batch:.1f}'} |"
        )
    lines += ["", *(f"- {finding}" for finding in results["findings"])]
    return lines
