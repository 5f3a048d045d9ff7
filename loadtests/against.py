"""A run set beside an earlier one: the same configurations, scenarios and concurrency levels,
measured on another tree (`mlgate bench suite --against EARLIER.json`), as ratios.

The earlier figures are copied into the new results file, so `mlgate bench render` redraws the
comparison from one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A point slower than this fraction of its earlier throughput is called out.
SLOWER = 0.95


def summary(earlier: dict[str, Any], path: Path) -> dict[str, Any]:
    """What the page needs of an earlier results file."""
    return {
        "file": path.name,
        "started": earlier["started"],
        "commit": earlier["machine"]["commit"],
        "runs": [
            {
                "config": run["config"],
                "scenario": run["scenario"],
                "concurrency": run["concurrency"],
                "throughput_rps": run["throughput_rps"],
                "p50_us": run["latency_us"]["p50"],
                "p99_us": run["latency_us"]["p99"],
            }
            for run in earlier["runs"]
            if "latency_us" in run
        ],
    }


def section(results: dict[str, Any]) -> list[str]:
    against = results.get("against")
    if against is None:
        return []
    earlier = {(r["config"], r["scenario"], r["concurrency"]): r for r in against["runs"]}
    lines = [
        "",
        "## Against an earlier tree",
        "",
        f"Every point of this run beside the same point of `{against['file']}` (commit"
        f" {against['commit']}, {against['started']}), measured back to back on this machine"
        f" (`mlgate bench suite --against {against['file']}`). *ratio* = req/s now / earlier;"
        f" a point below {SLOWER:.2f} is marked **slower**.",
        "",
        "| config | scenario | c | req/s earlier | req/s now | ratio | p50 ms earlier → now"
        " | p99 ms earlier → now |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    slower = 0
    for run in results["runs"]:
        before = earlier.get((run["config"], run["scenario"], run["concurrency"]))
        if before is None or "latency_us" not in run or not before["throughput_rps"]:
            continue
        ratio = run["throughput_rps"] / before["throughput_rps"]
        mark = " **slower**" if ratio < SLOWER else ""
        slower += ratio < SLOWER
        now = run["latency_us"]
        lines.append(
            f"| {run['config']} | {run['scenario']} | {run['concurrency']}"
            f" | {before['throughput_rps']:.0f} | {run['throughput_rps']:.0f}"
            f" | {ratio:.2f}{mark}"
            f" | {before['p50_us'] / 1e3:.2f} → {now['p50'] / 1e3:.2f}"
            f" | {before['p99_us'] / 1e3:.2f} → {now['p99'] / 1e3:.2f} |"
        )
    lines += ["", f"{slower} point(s) slower than {SLOWER:.2f} of their earlier throughput."]
    return lines
