"""The page's CPU budget per request: each stage's µs and share, for entity predict and V2 infer."""

from __future__ import annotations

from typing import Any

from loadtests.budget import STAGES


def budget_section(budget: dict[str, Any] | None) -> list[str]:
    if budget is None:
        return []
    workloads = budget["workloads"]
    lines = [
        "",
        "## CPU budget per request",
        "",
        f"`{budget['command']}`: the app as `mlgate serve` builds it (features from the suite's"
        " Redis, guard, drift counting, audit to a file), called in-process through ASGI one"
        f" request at a time, {workloads[0]['requests']} requests per workload. Each stage's"
        " process CPU time (every thread) less that of the stages inside it; *http front* is"
        " the framework's own work (routing, body read, JSON decode and encode, middleware);"
        " *rest* is the event loop between calls and background tasks. uvicorn's HTTP parsing"
        " is not in it. The clocks cost CPU themselves, spread over the stages: *unclocked* is"
        " the same requests without them.",
        "",
        "| stage | " + " | ".join(f"{w['workload']} µs | share" for w in workloads) + " |",
        "|---|" + "---:|---:|" * len(workloads),
    ]
    for stage in STAGES:
        cells = [
            f"{w['stages_us'][stage]:.1f} | {w['stages_us'][stage] / w['total_us']:.0%}"
            for w in workloads
        ]
        lines.append(f"| {stage} | {' | '.join(cells)} |")
    lines.append("| total | " + " | ".join(f"{w['total_us']:.1f} | 100%" for w in workloads) + " |")
    lines.append(
        "| unclocked | "
        + " | ".join(f"{w['unclocked_total_us']:.1f} | -" for w in workloads)
        + " |"
    )
    return lines
