"""`mlgate audit tail` and `mlgate audit export`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError

from service.audit.record import AuditRecord
from service.audit.sinks import DEFAULT_AUDIT_URL
from service.routing.config import route_name

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser("audit", help="read the audit log back")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    tail = commands.add_parser(
        "tail", help="print a model's audit records as JSON lines, optionally following"
    )
    _add_source(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="wait for new records")
    tail.add_argument("--version", help="only this model version")
    tail.add_argument("--route", type=route, help=ROUTE_HELP)
    tail.add_argument("--flag", help="only records carrying this guard flag")
    tail.add_argument(
        "-n", "--last", type=int, default=10, help="start with the last N matching (default 10)"
    )
    tail.add_argument("--all", action="store_true", help="start with every matching record")
    tail.set_defaults(func=run_tail)

    export = commands.add_parser(
        "export",
        help="export a model's records to Parquet, one column per field (features and their "
        "statuses per view included): a run resumes where the last of its group stopped, on "
        "every shard of a Redis audit log and in a file sink's files",
    )
    _add_source(export)
    export.add_argument("--since", type=parse_time, help="epoch ms, ISO 8601 or an age (15m)")
    export.add_argument("--until", type=parse_time, help="same forms as --since; exclusive")
    export.add_argument("--to", type=Path, required=True, help="the Parquet file to write")
    export.add_argument("--group", default="export", help="consumer group (default export)")
    export.add_argument("--consumer", help="consumer name (default: the host name)")
    export.set_defaults(func=run_export)


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit",
        default=os.environ.get("MLGATE_AUDIT", DEFAULT_AUDIT_URL),
        metavar="URL",
        help="where the gateway writes, as `serve --audit`: file://PATH, redis://host:port/db "
        "or redis+cluster://host:port/0[?shards=N] (every shard is read, merged by time; "
        f"shards as the gateway's) (default: $MLGATE_AUDIT or {DEFAULT_AUDIT_URL})",
    )
    p.add_argument("--model", required=True, help="the model whose records are read")


ROUTE_HELP = "only this route: primary, canary, shadow, override or an A/B arm's name"


def route(text: str) -> str:
    try:
        return route_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_time(text: str) -> int:
    """Epoch milliseconds from `1718000000000`, `2024-06-10T12:00:00+00:00` or `15m` (ago)."""
    if text.isdigit():
        return int(text)
    if m := _AGO.match(text):
        return int((time.time() - float(m[1]) * _UNIT_S[m[2]]) * 1000)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None


def run_tail(args: argparse.Namespace) -> int:
    # Imported here: the reader pulls in pyarrow, which `mlgate serve` has no use for.
    from service.audit.reader import tail

    async def main() -> int:
        async for r in tail(
            args.audit,
            model=args.model,
            follow=args.follow,
            version=args.version,
            route=args.route,
            flag=args.flag,
            last=None if args.all else args.last,
        ):
            sys.stdout.buffer.write(orjson.dumps(summary(r), default=_text) + b"\n")
            sys.stdout.flush()
        return 0

    # Ctrl-C is how a follow ends.
    with contextlib.suppress(KeyboardInterrupt):
        return _read("tail", main())
    return 0


def run_export(args: argparse.Namespace) -> int:
    from service.audit.reader import export

    async def main() -> int:
        n = await export(
            args.audit,
            model=args.model,
            since_ms=args.since,
            until_ms=args.until,
            to=args.to,
            group=args.group,
            consumer=args.consumer,
        )
        print(f"exported {n} records to {args.to}", file=sys.stderr)
        return 0

    return _read("export", main())


def _read(command: str, work: Coroutine[Any, Any, int]) -> int:
    """Run a reader; an audit log that is not there or cannot be reached is one line, status 1."""
    # Imported here: the reader pulls in pyarrow, which `mlgate serve` has no use for.
    from service.audit.reader import AuditSourceError

    try:
        return asyncio.run(work)
    except (AuditSourceError, RedisError, OSError) as exc:
        print(f"audit {command}: {exc}", file=sys.stderr)
        return 1


def summary(r: AuditRecord) -> dict[str, Any]:
    """A record as one JSON line: everything but the feature and input tensors."""
    ts = datetime.fromtimestamp(r.ts_ms / 1000).astimezone()
    return {
        "ts": ts.isoformat(timespec="milliseconds"),
        "request_id": r.request_id,
        "model": r.model,
        "version": r.version,
        "route": r.route,
        "entity_ids": r.entity_ids,
        "flags": r.flags,
        "outputs": {k: v.tolist() for k, v in r.outputs.items()},
        "latency_us": r.latency_us,
        "paired_with": r.paired_with,
    }


def _text(value: object) -> str:
    """BYTES outputs, which JSON has no type for."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
