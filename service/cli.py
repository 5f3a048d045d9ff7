"""The `mlgate` command: serve, models check, features load, and the tools that plug in."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from argparse import SUPPRESS
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

from feature_store.store import EVENT_TIME_COLUMNS, EVENT_TIME_UNITS
from service import __version__
from service.settings import Settings
from service.validation import message

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
    "monitoring",
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


def env_only(field: str) -> str:
    return f"MLGATE_{field.upper()}"


def settings_error(exc: ValidationError, name: Callable[[str], str] = env_only) -> str:
    """One line per problem, each naming the setting by `name` (its flag and variable)."""
    lines = []
    for error in exc.errors():
        where = name(str(error["loc"][0])) if error["loc"] else "settings"
        lines.append(f"{where}: {message(error)}")
    return "\n".join(lines)


def setting_names(options: Mapping[str, str]) -> Callable[[str], str]:
    """How a user sets a field of Settings: `--audit (MLGATE_AUDIT)`, from `serve`'s options."""

    def name(field: str) -> str:
        option = options.get(field)
        return f"{option} ({env_only(field)})" if option else env_only(field)

    return name


def export_settings(settings: Settings) -> None:
    """Hand the resolved settings to worker processes through the environment."""
    for name, value in settings.model_dump(exclude_none=True).items():
        os.environ[f"MLGATE_{name.upper()}"] = str(value)


def cmd_serve(args: argparse.Namespace) -> int:
    from service.startup_checks import startup_problems

    name = setting_names(args.options)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(settings_error(exc, name), file=sys.stderr)
        return 2
    # The repository is checked only once the quick checks pass: it opens every model.
    problems = startup_problems(settings, name) or check(
        settings.models, settings.views_path, named=settings.views is not None
    )
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


def check(models: Path, views_path: Path, *, named: bool) -> list[str]:
    """The problems `serve` would stop at in the repository and its feature views; `named`:
    the views file was named by --views, so it must be there (only the default may be absent,
    for models that read no features)."""
    from feature_store.errors import ViewConfigError
    from feature_store.views import declared_views
    from service.repository.loader import check_repository

    if named and not views_path.exists():
        return [f"--views: {views_path}: no such file"]
    try:
        views = declared_views(views_path)
    except ViewConfigError as exc:
        return [str(exc)]
    return check_repository(models, views)


def cmd_models_check(args: argparse.Namespace) -> int:
    views = args.views or args.path / "feature_views.yaml"
    problems = check(args.path, views, named=args.views is not None)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{args.path}: ok")
    return 1 if problems else 0


class LoadRefused(Exception):
    """`features load` cannot go ahead; the message says why, in one line."""


def cmd_features_load(args: argparse.Namespace) -> int:
    from feature_store.errors import FeatureStoreError
    from feature_store.loader import load_file
    from feature_store.open import open_store
    from feature_store.views import load_views

    async def run() -> int:
        if args.feature_store.startswith("memory://"):
            raise LoadRefused(
                f"{args.feature_store} keeps rows only while this command runs: name the store "
                "the gateway reads with --feature-store (or MLGATE_FEATURE_STORE), e.g. "
                "redis://127.0.0.1:6379/0"
            )
        views = load_views(args.views)
        if args.view not in views:
            raise LoadRefused(
                f"unknown view {args.view!r} in {args.views}; known: {', '.join(views)}"
            )
        store = open_store(args.feature_store)
        try:
            return await load_file(
                store,
                views[args.view],
                args.file,
                entity_column=args.entity_column,
                event_time_column=args.event_time_column,
                event_time_unit=args.event_time_unit,
                # A bar drawn into a log file or a pipe is noise, as in `replay`.
                progress=sys.stderr.isatty(),
            )
        finally:
            await store.close()

    try:
        rows = asyncio.run(run())
    except (LoadRefused, FeatureStoreError, ValueError, OSError) as exc:
        print(f"features load: {exc}", file=sys.stderr)
        return 1
    print(f"loaded {rows} rows into {args.view}")
    return 0


class _DefaultsInHelp(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it speaks of its default itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, False, SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class HelpFormatter(_DefaultsInHelp):
    pass


class RawDescriptionFormatter(_DefaultsInHelp, argparse.RawDescriptionHelpFormatter):
    pass


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every parser below it a formatter that shows defaults."""
    raw = parser.formatter_class in (
        argparse.RawDescriptionHelpFormatter,
        RawDescriptionFormatter,
    )
    parser.formatter_class = RawDescriptionFormatter if raw else HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                show_defaults(child)


def document_settings(serve: argparse.ArgumentParser) -> None:
    """Append to each `serve` option's help the default and the variable of its setting, as
    Settings declares them: flags left unset fall back to those."""
    for action in serve._actions:
        if action.dest not in SERVE_FLAGS:
            continue
        text = action.help or ""
        if "default" not in text:
            text += f" (default: {_shown(Settings.model_fields[action.dest].default)})"
        action.help = f"{text}; env {env_only(action.dest)}".replace("%", "%%")


def _shown(default: object) -> object:
    """A setting's default as the flag spells it."""
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    return default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="HTTP and gRPC listen address")
    serve.add_argument("--port", type=int, help="HTTP port")
    serve.add_argument("--grpc-port", type=int, help="also serve the V2 gRPC API on this port")
    serve.add_argument(
        "--workers",
        help="processes (metrics are aggregated), or auto: one per usable CPU with a Redis "
        "feature store, 1 with memory://",
    )
    serve.add_argument("--models", type=Path, help="model repository")
    serve.add_argument(
        "--views", type=Path, help="feature views YAML (default: <models>/feature_views.yaml)"
    )
    serve.add_argument(
        "--feature-store", help="memory://, redis://host:port/db or redis+cluster://host:port/0"
    )
    serve.add_argument("--demo-entities", type=int, help="entities seeded into memory://")
    serve.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    serve.add_argument("--max-body-bytes", type=int, help="larger request bodies get 413")
    serve.add_argument("--max-entities", type=int, help="entity ids per request")
    serve.add_argument("--max-tensor-elements", type=int, help="tensor elements per request")
    serve.add_argument("--max-request-id-length", type=int, help="characters in a request id")
    serve.add_argument("--inference-threads", type=int, help="threads that run model sessions")
    serve.add_argument("--batching", choices=["on", "off"], help="dynamic batching")
    serve.add_argument(
        "--coalesce-reads",
        choices=["on", "off"],
        help="concurrent requests share one feature-store round trip",
    )
    serve.add_argument(
        "--monitoring",
        choices=["on", "off"],
        help="drift monitoring of versions with a reference profile (default on)",
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
    serve.add_argument(
        "--audit-spill-dir", type=Path, help="spill files of records the sink could not take"
    )
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
        help="inference (HTTP and gRPC) asks for a token of the inference scope",
    )
    serve.add_argument(
        "--watch-models",
        dest="watch_models_s",
        type=float,
        metavar="SECONDS",
        help="poll the model repository this often for new, changed or removed versions; 0: never",
    )
    serve.add_argument("--shadow-queue-size", type=int, help="shadow copies waiting, at most")
    serve.add_argument("--shadow-concurrency", type=int, help="shadow copies scored at once")
    serve.add_argument(
        "--drain-delay-s",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, not ready but still serving this long before stopping",
    )
    document_settings(serve)
    serve.set_defaults(
        func=cmd_serve,
        options={a.dest: a.option_strings[0] for a in serve._actions if a.option_strings},
    )

    models = sub.add_parser("models", help="model repository tools")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    check_cmd = models_sub.add_parser(
        "check",
        help="validate a repository as `serve` does at start-up, without serving",
        description="Check every model under PATH as `serve` would at start-up: each "
        "config.yaml against its ONNX graphs (names, element types, shapes) and its feature "
        "bindings against the views; a Triton-served version's metadata is fetched. One line "
        "per problem, naming the file and the field; exit status 1 when there is any.",
    )
    check_cmd.add_argument(
        "path", nargs="?", type=Path, default=Path("models"), help="the model repository"
    )
    check_cmd.add_argument(
        "--views",
        type=Path,
        help="feature views YAML, as `serve --views` (default: PATH/feature_views.yaml)",
    )
    check_cmd.set_defaults(func=cmd_models_check)

    features = sub.add_parser("features", help="online feature store tools")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    load = features_sub.add_parser(
        "load",
        help="bulk-load a CSV or Parquet file into a feature view of a Redis store",
        description="Load every row of FILE into one feature view of the store the gateway "
        "reads (README, 'Loading features from a file'). The file has the view's entity "
        "column, one column per feature (others are ignored) and, optionally, an event-time "
        "column; an empty cell is the feature's default. Exit status 0 only when every row "
        "was written; a bad value stops the load naming its file, row, column and value.",
    )
    load.add_argument("file", type=Path, help="a .csv (with a header row) or .parquet file")
    load.add_argument("--view", required=True, help="the feature view the rows belong to")
    load.add_argument(
        "--views", type=Path, default=Path("models/feature_views.yaml"), help="feature views YAML"
    )
    load.add_argument(
        "--feature-store",
        default=os.environ.get(
            "MLGATE_FEATURE_STORE", Settings.model_fields["feature_store"].default
        ),
        help="redis://host:port/db or redis+cluster://host:port/0, as `serve --feature-store`; "
        "memory:// is refused: its rows would vanish with this command "
        "(default: $MLGATE_FEATURE_STORE or %(default)s)",
    )
    load.add_argument(
        "--entity-column", help="the column of entity ids (default: the view's entity name)"
    )
    load.add_argument(
        "--event-time-column",
        help="the column of event times (default: the first of "
        f"{', '.join(EVENT_TIME_COLUMNS)} the file has; none: the load's start time)",
    )
    load.add_argument(
        "--event-time-unit",
        choices=list(EVENT_TIME_UNITS),
        help="the unit of epoch-number event times (default: told by their magnitude; "
        "ISO 8601 text and timestamp columns need none)",
    )
    load.set_defaults(func=cmd_features_load)

    # Tools that own their subcommands: the load generator and the audit log readers.
    from loadtests.cli import add_commands as add_bench_commands
    from replay.cli import add_commands as add_replay_commands
    from service.audit.cli import add_commands as add_audit_commands
    from service.monitor.cli import add_commands as add_monitor_commands

    add_bench_commands(sub)
    add_audit_commands(sub)
    add_replay_commands(sub)
    add_monitor_commands(sub)
    show_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(getattr(args, "log_level", None) or "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
