"""The HTML report of a replay: one self-contained file, the histogram of score differences
embedded as a PNG, so it can be attached to a CI run and opened anywhere."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import numpy as np

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f4f4f4; }
td.num { font-variant-numeric: tabular-nums; }
.verdict { padding: .6em 1em; border-radius: 4px; font-weight: 600; }
.pass { background: #e3f4e1; color: #1d5e17; }
.fail { background: #fbe4e4; color: #8a1c1c; }
img { max-width: 100%; }
"""


def write_report(
    path: Path,
    *,
    title: str,
    summary: list[tuple[str, str]],
    failures: list[str],
    diffs: np.ndarray,
    tolerance: float,
    worst: list[dict[str, str]],
) -> None:
    """Write the report to `path`: the verdict, the summary, the histogram, the worst rows."""
    png = base64.b64encode(histogram_png(diffs, tolerance)).decode()
    if failures:
        verdict = '<p class="verdict fail">FAIL</p><ul>{}</ul>'.format(
            "".join(f"<li>{escape(f)}</li>" for f in failures)
        )
    else:
        verdict = '<p class="verdict pass">PASS: every gate holds</p>'
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        verdict,
        "<table>",
        *(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in summary),
        "</table>",
        "<h2>Differences, candidate minus baseline</h2>",
        f'<img alt="histogram of score differences" src="data:image/png;base64,{png}">',
    ]
    if worst:
        columns = list(worst[0])
        parts += [
            "<h2>Largest differences</h2>",
            "<table><tr>",
            *(f"<th>{escape(c)}</th>" for c in columns),
            "</tr>",
            *(
                "<tr>"
                + "".join(f'<td class="num">{escape(row[c])}</td>' for c in columns)
                + "</tr>"
                for row in worst
            ),
            "</table>",
        ]
    parts.append("</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")


def histogram_png(diffs: np.ndarray, tolerance: float) -> bytes:
    """A histogram of `diffs` with the tolerance marked on both sides, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = diffs[np.isfinite(diffs)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    try:
        ax.hist(finite, bins=60, color="#4878a8")
        for x in (-tolerance, tolerance):
            ax.axvline(x, color="#c0392b", linestyle="--", linewidth=1)
        ax.set_xlabel(f"difference ({len(finite)} values; dashed: tolerance ±{tolerance:g})")
        ax.set_ylabel("values")
        # Most differences sit near zero; a log scale keeps the tails visible.
        if finite.size:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out.getvalue()
