"""`mlgate bench ...`, registered by service/cli.py; standalone: `python -m loadtests bench ...`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from loadtests.generator import LoadSpec
from loadtests.report import format_run
from loadtests.runner import Job, execute
from loadtests.targets import check_loopback, parse_url
from loadtests.workloads import SCENARIOS, Workload, parse_models

DEFAULT_VIEWS = Path("models/feature_views.yaml")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="load generator, seeding and the benchmark suite",
        description="Load generator, seeding and the benchmark suite (docs/benchmarks.md).",
    )
    bench.set_defaults(func=lambda _args: _usage(bench))
    commands = bench.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="drive a gateway with one scenario and report latency percentiles",
        epilog=_scenario_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--url", default="http://127.0.0.1:8000", help="http://… or grpc://…")
    run.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    _add_workload_args(run)
    _add_load_args(run)
    run.set_defaults(func=cmd_run, command_name="run")

    ceiling = commands.add_parser(
        "ceiling",
        help="the generator's own ceiling, against a trivial server it starts",
        epilog=_scenario_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ceiling.add_argument(
        "--protocol", choices=["http", "grpc"], default="http", help="the trivial server's protocol"
    )
    _add_workload_args(ceiling, default_scenario="predict-8-zipf")
    _add_load_args(ceiling, default_concurrency=64)
    ceiling.set_defaults(func=cmd_ceiling, command_name="ceiling")

    seed = commands.add_parser("seed", help="load N synthetic entities of the demo feature views")
    seed.add_argument("--redis", required=True, help="redis://host:port/db")
    seed.add_argument("--n", type=int, default=100_000, help="entities u0 .. u{N-1}")
    seed.add_argument("--views", type=Path, default=DEFAULT_VIEWS, help="feature views YAML")
    seed.add_argument("--seed", type=int, default=0, help="random seed of the values")
    seed.set_defaults(func=cmd_seed)

    floor = commands.add_parser(
        "floor", help="the in-process floor: Redis read + onnxruntime run + encode, no server"
    )
    floor.add_argument("--redis", required=True, help="a seeded redis://host:port/db")
    floor.add_argument("--views", type=Path, default=DEFAULT_VIEWS, help="feature views YAML")
    floor.add_argument(
        "--model",
        type=Path,
        default=Path("models/fraud_mlp/2/model.onnx"),
        help="the ONNX model run",
    )
    floor.add_argument("--samples", type=int, default=2000, help="requests timed")
    floor.set_defaults(func=cmd_floor)

    budget = commands.add_parser(
        "budget",
        help="CPU per request, stage by stage, of the gateway built in-process",
        description="CPU per request, stage by stage: the app as `mlgate serve` builds it,"
        " called through ASGI one request at a time (loadtests/budget.py says how).",
    )
    budget.add_argument(
        "--feature-store", default="memory://", help="memory:// (seeded here) or a seeded redis://"
    )
    budget.add_argument("--entities", type=int, default=10_000, help="entities to draw from")
    budget.add_argument("--requests", type=int, default=3000, help="requests per workload")
    budget.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    budget.add_argument("--views", type=Path, default=DEFAULT_VIEWS, help="feature views YAML")
    budget.set_defaults(func=cmd_budget)

    suite = commands.add_parser(
        "suite", help="the benchmark suite behind docs/benchmarks.md (what `make bench` runs)"
    )
    suite.add_argument("--configs", default="", help="comma-separated; default: all")
    suite.add_argument("--scenarios", default="", help="comma-separated; default: the suite's")
    suite.add_argument("--concurrency", default="1,8,64", help="comma-separated levels")
    suite.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    suite.add_argument("--repeats", type=int, default=3, help="runs per point; medians reported")
    suite.add_argument("--warmup", type=float, default=1.0, help="seconds, per scenario")
    suite.add_argument("--entities", type=int, default=100_000, help="entities to seed")
    suite.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    suite.add_argument("--views", type=Path, default=DEFAULT_VIEWS, help="feature views YAML")
    suite.add_argument(
        "--results-dir",
        type=Path,
        default=Path("loadtests/results"),
        help="where the results JSON is written",
    )
    suite.add_argument(
        "--docs", type=Path, default=Path("docs/benchmarks.md"), help="the page written"
    )
    suite.add_argument(
        "--against",
        type=Path,
        metavar="EARLIER.json",
        help="a results file of another tree: the page shows every shared point's ratio",
    )
    suite.set_defaults(func=cmd_suite)

    instructions = commands.add_parser(
        "instructions",
        help="instructions per request of each tree's gateway, counted under callgrind",
        description=(
            "Compare trees by the instructions their gateway executes per request (valgrind's "
            "callgrind; repeatable on a noisy machine, unlike req/s). The first --tree is the "
            "reference of the ratios."
        ),
    )
    instructions.add_argument(
        "--tree",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a checkout whose service/ and models/ the gateway runs (repeat; first = reference)",
    )
    instructions.add_argument(
        "--scenarios", default="predict-1,predict-8-zipf,v2-dense-1", help="comma-separated"
    )
    instructions.add_argument("--concurrency", default="1,64", help="comma-separated levels")
    instructions.add_argument("--requests", type=int, default=400, help="counted per point")
    instructions.add_argument("--entities", type=int, default=10_000, help="entities to seed")
    instructions.add_argument(
        "--serve-arg", action="append", default=[], help="extra `mlgate serve` flag (repeat)"
    )
    instructions.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/mlgate-instructions"),
        help="callgrind's files and the gateways' logs",
    )
    instructions.set_defaults(func=cmd_instructions)

    render = commands.add_parser("render", help="regenerate docs/benchmarks.md from a results file")
    render.add_argument("results", type=Path, help="a results JSON of `bench suite`")
    render.add_argument(
        "--docs", type=Path, default=Path("docs/benchmarks.md"), help="the page written"
    )
    render.set_defaults(func=cmd_render)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _scenario_list() -> str:
    rows = [f"  {s.name:<16} {s.description}" for s in SCENARIOS.values()]
    return "scenarios:\n" + "\n".join(rows)


def _add_workload_args(
    parser: argparse.ArgumentParser, default_scenario: str = "predict-1"
) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default=default_scenario,
        help="the request mix (below)",
    )
    group.add_argument("--entities", type=int, help="rows per request (overrides the scenario)")
    group.add_argument("--keys", choices=["uniform", "zipf"], help="entity id distribution")
    group.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (hot keys)")
    group.add_argument("--key-space", type=int, default=100_000, help="ids u0 .. u{N-1}")
    group.add_argument(
        "--model-mix", help="name[/version][=weight],... (overrides the scenario's models)"
    )
    group.add_argument("--pool", type=int, default=1024, help="distinct requests, cycled")


def _add_load_args(parser: argparse.ArgumentParser, default_concurrency: int = 8) -> None:
    group = parser.add_argument_group("load")
    loop = group.add_mutually_exclusive_group()
    loop.add_argument(
        "--concurrency", type=int, help=f"closed loop (default {default_concurrency})"
    )
    loop.add_argument("--rate", type=float, help="open loop, requests/s")
    group.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals")
    group.add_argument("--duration", type=float, default=10.0, help="seconds (a hard bound)")
    group.add_argument("--requests", type=int, help="stop after this many requests")
    group.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    group.add_argument("--max-inflight", type=int, default=1024, help="open loop bound")
    group.add_argument("--warmup", type=float, default=0.0, help="seconds of unrecorded load")
    group.add_argument("--procs", type=int, default=1, help="generator processes")
    group.add_argument(
        "--client",
        choices=["raw", "httpx", "wrk"],
        default="raw",
        help="HTTP client (wrk: the C client, closed loop, --procs threads)",
    )
    group.add_argument("--seed", type=int, default=0, help="random seed of the requests")
    group.add_argument("--json", metavar="PATH", help="write the result as JSON ('-': stdout)")
    parser.set_defaults(default_concurrency=default_concurrency)


def workload_from_args(args: argparse.Namespace) -> Workload:
    scenario = SCENARIOS[args.scenario]
    overrides: dict[str, Any] = {}
    if args.entities is not None:
        overrides["rows"] = args.entities
    if args.keys is not None:
        overrides["keys"] = args.keys
    if args.model_mix:
        overrides["models"] = parse_models(args.model_mix)
    if overrides:
        scenario = replace(scenario, **overrides)
    return Workload(
        scenario, key_space=args.key_space, zipf_s=args.zipf_s, pool=args.pool, seed=args.seed
    )


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    concurrency = args.concurrency
    if concurrency is None and args.rate is None:
        concurrency = args.default_concurrency
    return LoadSpec(
        concurrency=concurrency,
        rate=args.rate,
        poisson=args.poisson,
        duration_s=args.duration,
        requests=args.requests,
        timeout_s=args.timeout,
        max_inflight=args.max_inflight,
        seed=args.seed,
    )


def _run_and_report(args: argparse.Namespace, url: str) -> int:
    try:
        job = Job(url, workload_from_args(args), spec_from_args(args), client=args.client)
    except ValueError as exc:
        return _fail(args, exc)
    if args.warmup > 0:
        warm = replace(job.spec, duration_s=args.warmup, requests=None)
        execute(replace(job, spec=warm), args.procs)
    result = execute(job, args.procs)
    title = f"{job.workload.scenario.name} → {url}"
    print(format_run(title, job.spec, result, args.procs))
    if args.json:
        _write_json(args.json, {**_describe(job, args.procs), "result": result.to_dict()})
    return 0 if result.ok else 1


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    print(f"bench {args.command_name}: {exc}", file=sys.stderr)
    return 2


def _describe(job: Job, procs: int) -> dict[str, Any]:
    scenario = job.workload.scenario
    return {
        "url": job.url,
        "scenario": scenario.name,
        "api": scenario.api,
        "rows": scenario.rows,
        "keys": scenario.keys,
        "models": [str(m) for m in scenario.models],
        "mode": job.spec.mode,
        "duration_s": job.spec.duration_s,
        "procs": procs,
        "client": job.client,
    }


def _write_json(path: str, data: dict[str, Any]) -> None:
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    if path == "-":
        sys.stdout.write(payload.decode() + "\n")
    else:
        Path(path).write_bytes(payload + b"\n")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        _, host, _ = parse_url(args.url)
        if not args.allow_remote:
            check_loopback(host)
    except (ValueError, OSError) as exc:
        return _fail(args, exc)
    return _run_and_report(args, args.url)


def cmd_ceiling(args: argparse.Namespace) -> int:
    from loadtests.processes import HOST, trivial_server

    with trivial_server(args.protocol) as port:
        return _run_and_report(args, f"{args.protocol}://{HOST}:{port}")


def cmd_seed(args: argparse.Namespace) -> int:
    from feature_store.errors import FeatureStoreError
    from loadtests.seed import seed

    try:
        elapsed = asyncio.run(seed(args.redis, args.views, args.n, args.seed))
    except (FeatureStoreError, ValueError) as exc:
        print(f"bench seed: {exc}", file=sys.stderr)
        return 1
    print(f"seeded {args.n} entities into {args.redis} in {elapsed:.2f} s")
    return 0


def cmd_floor(args: argparse.Namespace) -> int:
    from feature_store.errors import FeatureStoreError
    from loadtests.floor import format_floor, measure_floor

    try:
        floor = measure_floor(args.redis, args.views, args.model, args.samples)
    except (FeatureStoreError, ValueError) as exc:
        print(f"bench floor: {exc}", file=sys.stderr)
        return 1
    print(format_floor(floor))
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    from loadtests.budget import format_budget, measure_budget

    budget = measure_budget(
        args.models, args.views, args.feature_store, args.entities, args.requests
    )
    print(format_budget(budget))
    return 0


def cmd_instructions(args: argparse.Namespace) -> int:
    from loadtests.instructions import RESULTS, compare, format_ratios, save

    trees = {}
    for item in args.tree:
        name, sep, path = item.partition("=")
        if not sep or not Path(path, "service").is_dir():
            print(
                f"bench instructions: --tree {item}: expected NAME=PATH of a checkout",
                file=sys.stderr,
            )
            return 2
        trees[name] = Path(path).resolve()
    counts = compare(
        trees,
        _names(args.scenarios),
        tuple(int(c) for c in args.concurrency.split(",")),
        args.requests,
        args.entities,
        args.serve_arg,
        args.out,
    )
    print(format_ratios(counts))
    command = "mlgate bench instructions " + " ".join(sys.argv[3:])
    print(f"results: {save(counts, trees, command, RESULTS)}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from loadtests.suite import SuiteSettings, run_suite

    settings = SuiteSettings(
        configs=_names(args.configs),
        scenarios=_names(args.scenarios),
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        duration_s=args.duration,
        repeats=args.repeats,
        warmup_s=args.warmup,
        entities=args.entities,
        models=args.models,
        views=args.views,
        results_dir=args.results_dir,
        docs=args.docs,
        against=args.against,
    )
    run_suite(settings)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from loadtests.render import render

    render(orjson.loads(args.results.read_bytes()), args.docs)
    print(f"wrote {args.docs}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())
