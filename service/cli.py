"""The `mlgate` command: serve, models check, features load, and the tools that plug in."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings
from service.validation import problems

# Settings fields that `serve` flags set; flags left unset fall back to MLGATE_* and defaults.
SERVE_FLAGS = (
    "host",
    "port",
    "grpc_port",
    "workers",
    "models",
    "views",
    "feature_store",
    "demo_entities",
    "log_level",
    "max_body_bytes",
    "max_entities",
    "max_tensor_elements",
    "max_request_id_length",
    "inference_threads",
    "audit",
    "batching",
    "batching_delay_us",
    "coalesce_reads",
    "audit_spill_dir",
    "policy_store",
    "routing",
    "admin_token_file",
    "require_inference_token",
    "watch_models_s",
    "shadow_queue_size",
    "shadow_concurrency",
    "drain_delay_s",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {k: getattr(args, k) for k in SERVE_FLAGS if getattr(args, k, None) is not None}
    return Settings(**given)


def settings_error(exc: ValidationError) -> str:
    lines = [f"  {line}" for line in problems(exc)]
    return "invalid settings (flags or MLGATE_* variables):\n" + "\n".join(lines)


def export_settings(settings: Settings) -> None:
    """Hand the resolved settings to worker processes through the environment."""
    for name, value in settings.model_dump(exclude_none=True).items():
        os.environ[f"MLGATE_{name.upper()}"] = str(value)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(settings_error(exc), file=sys.stderr)
        return 2
    problems = check(settings.models, settings.views_path)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    settings = settings.model_copy(update={"workers": settings.worker_count})
    if settings.worker_count > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Must be set before any worker imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlgate-metrics-")
    if settings.worker_count > 1 and settings.shared_policy_store is None:
        # Workers must share one routing policy: without a Redis to keep it, a file they all
        # watch.
        shared = Path(tempfile.mkdtemp(prefix="mlgate-policy-")) / "policy.json"
        settings = settings.model_copy(update={"policy_store": f"file://{shared}"})
    export_settings(settings)

    from service.supervision import run_gateway

    return run_gateway(settings)


def check(models: Path, views_path: Path) -> list[str]:
    from feature_store.errors import ViewConfigError
    from service.repository.loader import check_repository

    try:
        return check_repository(models, views_path if views_path.exists() else None)
    except ViewConfigError as exc:
        return [str(exc)]


def cmd_models_check(args: argparse.Namespace) -> int:
    views = args.views or args.path / "feature_views.yaml"
    problems = check(args.path, views)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{args.path}: ok")
    return 1 if problems else 0


def cmd_features_load(args: argparse.Namespace) -> int:
    from feature_store.errors import FeatureStoreError
    from feature_store.loader import load_file
    from feature_store.open import open_store
    from feature_store.views import load_views

    async def run() -> int:
        views = load_views(args.views)
        if args.view not in views:
            print(f"unknown view {args.view!r}; known: {', '.join(views)}", file=sys.stderr)
            return 2
        store = open_store(args.feature_store)
        try:
            return await load_file(
                store,
                views[args.view],
                args.file,
                entity_column=args.entity_column,
                event_time_column=args.event_time_column,
            )
        finally:
            await store.close()

    try:
        rows = asyncio.run(run())
    except (FeatureStoreError, ValueError, OSError) as exc:
        print(f"features load: {exc}", file=sys.stderr)
        return 1
    print(f"loaded {rows} rows into {args.view}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--grpc-port", type=int, help="also serve the V2 gRPC API on this port")
    serve.add_argument(
        "--workers",
        help="processes (metrics are aggregated), or auto (default): one per usable CPU with a "
        "Redis feature store, 1 with memory://",
    )
    serve.add_argument("--models", type=Path, help="model repository (default: models)")
    serve.add_argument("--views", type=Path, help="feature views YAML")
    serve.add_argument(
        "--feature-store", help="memory://, redis://host:port/db or redis+cluster://host:port/0"
    )
    serve.add_argument("--demo-entities", type=int, help="entities seeded into memory://")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--max-body-bytes", type=int)
    serve.add_argument("--max-entities", type=int, help="entity ids per request (default 4096)")
    serve.add_argument(
        "--max-tensor-elements", type=int, help="tensor elements per request (default 16Mi)"
    )
    serve.add_argument(
        "--max-request-id-length", type=int, help="characters in a request id (default 128)"
    )
    serve.add_argument("--inference-threads", type=int)
    serve.add_argument("--batching", choices=["on", "off"], help="dynamic batching (default on)")
    serve.add_argument(
        "--coalesce-reads",
        choices=["on", "off"],
        help="concurrent requests share one feature-store round trip (default on)",
    )
    serve.add_argument(
        "--batching-delay-us",
        type=int,
        metavar="US",
        help="one fixed batching delay for every model, adaptive off (default: config.yaml's)",
    )
    serve.add_argument(
        "--audit",
        help="file://PATH, redis://host:port/db, redis+cluster://host:port/0[?shards=N] or none",
    )
    serve.add_argument("--audit-spill-dir", type=Path)
    serve.add_argument(
        "--policy-store",
        help="routing policies shared by workers and replicas: file:///path, redis://… or "
        "redis+cluster://… (default: the feature store's Redis)",
    )
    serve.add_argument(
        "--routing", type=Path, help="YAML of model -> routing section, over config.yaml's"
    )
    serve.add_argument(
        "--admin-token-file", type=Path, help="admin API tokens (else MLGATE_ADMIN_TOKEN)"
    )
    serve.add_argument(
        "--require-inference-token",
        action="store_const",
        const=True,
        help="inference (HTTP and gRPC) asks for a token of the inference scope (default off)",
    )
    serve.add_argument(
        "--watch-models",
        dest="watch_models_s",
        type=float,
        metavar="SECONDS",
        help="poll the model repository for new, changed or removed versions (default off)",
    )
    serve.add_argument("--shadow-queue-size", type=int, help="shadow copies waiting, at most")
    serve.add_argument("--shadow-concurrency", type=int, help="shadow copies scored at once")
    serve.add_argument(
        "--drain-delay-s",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, not ready but still serving this long before stopping (default 5)",
    )
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="model repository tools")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    check_cmd = models_sub.add_parser("check", help="validate configs against the ONNX graphs")
    check_cmd.add_argument("path", nargs="?", type=Path, default=Path("models"))
    check_cmd.add_argument("--views", type=Path)
    check_cmd.set_defaults(func=cmd_models_check)

    features = sub.add_parser("features", help="online feature store tools")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    load = features_sub.add_parser("load", help="bulk-load a CSV or Parquet file")
    load.add_argument("file", type=Path)
    load.add_argument("--view", required=True)
    load.add_argument("--views", type=Path, default=Path("models/feature_views.yaml"))
    load.add_argument(
        "--feature-store",
        default=os.environ.get("MLGATE_FEATURE_STORE", "redis://127.0.0.1:6379/0"),
    )
    load.add_argument("--entity-column")
    load.add_argument("--event-time-column")
    load.set_defaults(func=cmd_features_load)

    # Tools that own their subcommands: the load generator and the audit log readers.
    from loadtests.cli import add_commands as add_bench_commands
    from replay.cli import add_commands as add_replay_commands
    from service.audit.cli import add_commands as add_audit_commands

    add_bench_commands(sub)
    add_audit_commands(sub)
    add_replay_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(getattr(args, "log_level", None) or "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(args.func(args))
