"""`mlgate monitor reference` and `mlgate monitor report`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.audit.cli import parse_time
from service.audit.sinks import DEFAULT_AUDIT_URL

if TYPE_CHECKING:
    from service.monitor.profile import Column
    from service.repository.config import ModelConfig


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = subparsers.add_parser("monitor", help="drift monitoring: reference profiles, reports")
    commands = monitor.add_subparsers(dest="monitor_command", required=True)

    reference = commands.add_parser(
        "reference",
        help="build a version's reference profile (<models>/<model>/<version>/reference.json)",
    )
    _add_repository(reference)
    reference.add_argument("--version", required=True, help="the version to profile")
    source = reference.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        help="Parquet or CSV with a column per input feature (outputs missing are scored)",
    )
    source.add_argument("--audit", metavar="URL", help="the version's audit records instead")
    _add_window(reference)
    reference.set_defaults(func=run_reference)

    report = commands.add_parser(
        "report", help="judge the audit log's rows against each version's reference, as HTML"
    )
    _add_repository(report)
    report.add_argument("--version", help="only this version (default: every profiled one)")
    report.add_argument(
        "--audit",
        default=os.environ.get("MLGATE_AUDIT", DEFAULT_AUDIT_URL),
        metavar="URL",
        help=f"where the gateway writes (default: $MLGATE_AUDIT or {DEFAULT_AUDIT_URL})",
    )
    _add_window(report)
    report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    report.set_defaults(func=run_report)


def _add_repository(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name in the repository")
    p.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    p.add_argument(
        "--views", type=Path, help="feature views (default: <models>/feature_views.yaml)"
    )


def _add_window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_time, help="audit records from (epoch ms, ISO, 15m)")
    p.add_argument("--until", type=parse_time, help="audit records before (exclusive)")


def run_reference(args: argparse.Namespace) -> int:
    from service.monitor.profile import REFERENCE_FILE, build_profile, write_profile
    from service.monitor.sources import SourceError, audit_values, file_values

    try:
        config = _config(args)
        columns = _columns(args, config)
        directory = args.models / args.model / args.version
        if not directory.is_dir():
            raise SourceError(f"{directory}: no such version directory")
        if args.data is not None:
            values = file_values(args.data, columns, config, directory / "model.onnx")
        else:
            values = asyncio.run(
                audit_values(args.audit, args.model, args.version, columns, args.since, args.until)
            )
        rows = len(next(iter(values.values())))
        if rows == 0:
            raise SourceError("no rows to build a reference from")
    except (SourceError, ValueError) as exc:
        print(f"monitor reference: {exc}", file=sys.stderr)
        return 1
    profile = build_profile(args.model, args.version, columns, values)
    path = directory / REFERENCE_FILE
    write_profile(profile, path)
    print(f"{path}: {len(columns)} columns over {rows} rows, hash {profile.hash}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from service.monitor.drift import Judgement, VersionDrift
    from service.monitor.profile import REFERENCE_FILE, ProfileError, read_profile
    from service.monitor.report import render
    from service.monitor.sources import SourceError, audit_values

    try:
        config = _config(args)
        directory = args.models / args.model
        versions = (
            [args.version]
            if args.version
            else sorted((p.parent.name for p in directory.glob(f"*/{REFERENCE_FILE}")), key=int)
        )
        judged: list[tuple[VersionDrift, Judgement | None]] = []
        for version in versions:
            profile = read_profile(directory / version / REFERENCE_FILE)
            drift = VersionDrift(args.model, version, profile, config.monitoring)
            wanted = [c.column for c in profile.columns]
            values = asyncio.run(
                audit_values(args.audit, args.model, version, wanted, args.since, args.until)
            )
            matrix = np.column_stack([values[c.name] for c in wanted])
            judged.append((drift, drift.judge(drift.binner.counts(matrix), 0)))
    except (SourceError, ProfileError, ValueError) as exc:
        print(f"monitor report: {exc}", file=sys.stderr)
        return 1
    if not judged:
        print(f"monitor report: no version of {args.model} has a {REFERENCE_FILE}", file=sys.stderr)
        return 1
    args.out.write_text(render(args.model, judged))
    drifting = sorted(
        {c.column.name for _, j in judged if j is not None for c in j.columns if c.alarm}
    )
    print(f"{args.out}: drifting {', '.join(drifting) or 'nothing'}")
    return 0


def _config(args: argparse.Namespace) -> ModelConfig:
    from service.repository.config import ConfigError, read_config

    try:
        return read_config(args.models / args.model / "config.yaml")
    except (ConfigError, OSError) as exc:
        raise ValueError(str(exc)) from None


def _columns(args: argparse.Namespace, config: ModelConfig) -> list[Column]:
    from feature_store.views import load_views
    from service.monitor.profile import model_columns

    views_path = args.views or args.models / "feature_views.yaml"
    views = load_views(views_path) if views_path.exists() else {}
    return model_columns(config, views)
