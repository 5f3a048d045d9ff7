"""`mlgate replay`: re-score a model's logged predictions on a candidate version, compare them
with the baseline and exit non-zero past the thresholds, so a CI job can gate a promotion.

Records are read from the audit log (`--audit`, as `serve --audit`) and re-scored on their
logged inputs, the online features included as they were fetched then. The baseline is the
logged prediction, or, with `--baseline A`, version A (re-scored where the record is of
another version). Shadow copies are left out unless `--route shadow` asks for them: they
repeat their primary request's inputs. `--limit N` keeps the N most recent records.

Exit status: 0 when every gate holds; 1 when rows beyond the tolerance exceed --max-beyond,
class disagreement exceeds --max-disagreement, or records could not be re-scored; 2 when
nothing could be compared or the replay cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from service.audit.cli import ROUTE_HELP, parse_time, route
from service.audit.sinks import DEFAULT_AUDIT_URL


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "replay",
        help="re-score logged predictions on another version and compare (a promotion gate)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="the model whose records are replayed")
    p.add_argument("--candidate", required=True, metavar="VERSION", help="the version to test")
    p.add_argument(
        "--baseline", metavar="VERSION", help="compare with this version (default: as logged)"
    )
    p.add_argument(
        "--audit",
        default=os.environ.get("MLGATE_AUDIT", DEFAULT_AUDIT_URL),
        metavar="URL",
        help=f"the audit log, as `serve --audit` (default: $MLGATE_AUDIT or {DEFAULT_AUDIT_URL})",
    )
    p.add_argument("--since", type=parse_time, help="epoch ms, ISO 8601 or an age (15m)")
    p.add_argument("--until", type=parse_time, help="same forms as --since; exclusive")
    p.add_argument("--limit", type=_positive, help="only the N most recent records of the window")
    p.add_argument("--route", type=route, help=ROUTE_HELP)
    p.add_argument("--url", help="score through this gateway (http://host:port), not in-process")
    p.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("MLGATE_MODELS", "models")),
        help="the model repository (default: $MLGATE_MODELS or models)",
    )
    p.add_argument("--output", help="the output to compare (default: the model's first)")
    p.add_argument("--tolerance", type=float, default=0.01, help="per value (default 0.01)")
    p.add_argument(
        "--max-beyond",
        type=_share,
        default=0.0,
        help="fail above this share of rows beyond the tolerance (default 0)",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="class cut-off (default 0.5)")
    p.add_argument(
        "--max-disagreement",
        type=_share,
        help="fail above this share of rows that change class (default: no limit)",
    )
    p.add_argument(
        "--report",
        type=Path,
        help="write a self-contained HTML report here (needs matplotlib: the bench extra)",
    )
    p.set_defaults(func=run_replay)


def _has_matplotlib() -> bool:
    """Asked before the replay runs, so a missing plotting library costs no re-scoring."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return value


def run_replay(args: argparse.Namespace) -> int:
    if args.report is not None and not _has_matplotlib():
        print(
            "replay: --report draws with matplotlib, which is not installed: "
            "pip install 'mlgate[bench]'",
            file=sys.stderr,
        )
        return 2
    # Imported here: onnxruntime, pyarrow and matplotlib take a while to load, and every
    # `mlgate` command builds this parser.
    from replay.report import write_report
    from replay.run import ReplayError, ReplayOptions, replay, summary_rows

    options = ReplayOptions(
        model=args.model,
        candidate=args.candidate,
        baseline=args.baseline,
        audit=args.audit,
        since_ms=args.since,
        until_ms=args.until,
        limit=args.limit,
        route=args.route,
        url=args.url,
        models=args.models,
        output=args.output,
        tolerance=args.tolerance,
        max_beyond=args.max_beyond,
        threshold=args.threshold,
        max_disagreement=args.max_disagreement,
    )
    try:
        result = asyncio.run(replay(options))
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    rows = summary_rows(result)
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        print(f"{what:<{width}}  {value}")
    failures = result.failures()
    if args.report is not None:
        write_report(
            args.report,
            title=f"replay of {options.model}: version {options.candidate}",
            summary=rows,
            failures=failures,
            diffs=result.diffs,
            tolerance=options.tolerance,
            worst=[w.cells() for w in result.worst],
        )
        print(f"report written to {args.report}")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        return 1
    if result.rows == 0:
        print("replay: no rows compared", file=sys.stderr)
        return 2
    return 0
