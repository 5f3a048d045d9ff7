"""A drift report as one self-contained HTML file: per version, every column's statistic and
threshold, and for each drifting column the reference's and the window's histograms as inline
SVG bars (nothing to fetch, no plotting library)."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import numpy as np

from service.monitor.drift import ColumnJudgement, Judgement, VersionDrift

_BAR_W = 14
_PLOT_H = 120

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; }
tr.alarm td { color: #b00; font-weight: bold; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }
"""


def render(model: str, judged: list[tuple[VersionDrift, Judgement | None]]) -> str:
    """The report over `judged`: each version's drift and its window's judgement (None: too
    few rows in the audit log to judge)."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Drift report: {html.escape(model)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Drift report: {html.escape(model)}</h1><p>Written {stamp}.</p>",
    ]
    for drift, judgement in judged:
        parts.append(_version(drift, judgement))
    parts.append("</body></html>")
    return "\n".join(parts)


def _version(drift: VersionDrift, judgement: Judgement | None) -> str:
    head = (
        f"<h2>Version {html.escape(drift.version)}</h2><p>Reference {drift.profile.hash} "
        f"({drift.profile.rows} rows); statistic {drift.config.statistic}, "
        f"alpha {drift.config.alpha:g} over every column.</p>"
    )
    if judgement is None:
        return head + f"<p>Fewer than {drift.config.min_rows} rows: not judged.</p>"
    ranked = judgement.ranked()
    drifting = [c for c in ranked if c.alarm]
    rows = "".join(_row(c) for c in ranked)
    summary = (
        f"<p>{judgement.rows} rows; drifting: "
        f"{', '.join(html.escape(c.column.name) for c in drifting) or 'none'}.</p>"
        "<table><tr><th>column</th><th>kind</th><th>score</th><th>threshold</th>"
        f"<th>PSI</th><th>KS</th></tr>{rows}</table>"
    )
    by_name = {c.column.name: i for i, c in enumerate(drift.profile.columns)}
    plots = "".join(_histograms(drift, judgement, by_name[c.column.name], c) for c in drifting)
    return head + summary + plots


def _row(c: ColumnJudgement) -> str:
    css = " class='alarm'" if c.alarm else ""
    return (
        f"<tr{css}><td>{html.escape(c.column.name)}</td><td>{c.column.kind}</td>"
        f"<td>{c.score:.4g}</td><td>{c.threshold:.4g}</td><td>{c.psi:.4g}</td>"
        f"<td>{c.ks:.4g}</td></tr>"
    )


def _histograms(drift: VersionDrift, judgement: Judgement, i: int, c: ColumnJudgement) -> str:
    profile = drift.profile.columns[i]
    reference, current = _shares(profile.counts), _shares(judgement.counts[i])
    top = float(max(reference.max(), current.max(), 1e-9))
    width = len(reference) * (2 * _BAR_W + 6) + 10
    bars = []
    for b, (p, q) in enumerate(zip(reference, current, strict=True)):
        x = 5 + b * (2 * _BAR_W + 6)
        for offset, share, colour in ((0, p, "#7a9cc6"), (_BAR_W, q, "#d9534f")):
            h = _PLOT_H * float(share) / top
            bars.append(
                f"<rect x='{x + offset}' y='{_PLOT_H - h:.1f}' width='{_BAR_W}' "
                f"height='{h:.1f}' fill='{colour}'><title>{html.escape(profile.labels[b])}: "
                f"{float(share):.3%}</title></rect>"
            )
    return (
        f"<h3>{html.escape(c.column.name)} ({c.column.kind})</h3>"
        "<p class='legend'><span style='background:#7a9cc6'></span>reference"
        "<span style='background:#d9534f'></span>window</p>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{_PLOT_H + 4}'>"
        f"{''.join(bars)}</svg>"
    )


def _shares(counts: np.ndarray) -> np.ndarray:
    found: np.ndarray = counts / max(1, int(counts.sum()))
    return found
