"""The benchmark suite: its own Redis, seeded; the gateway in each named configuration; the
scenario matrix at several concurrencies; the floor and the generator's ceiling in the same
run; where `make triton-venv` has run, a tritonserver, measured through the gateway and
directly; a model offered more than it can serve (loadtests/overload.py). Writes
loadtests/results/<date>.json and regenerates docs/benchmarks.md and its plots.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from loadtests import against
from loadtests.budget import format_budget, measure_budget
from loadtests.configs import CONFIGS, GatewayConfig
from loadtests.cpu import tree_cpu_s
from loadtests.floor import format_floor, measure_floor
from loadtests.generator import LoadSpec, RunResult
from loadtests.overload import REFUSED, measure_overload
from loadtests.processes import HOST, gateway, redis_cluster, redis_server, trivial_server
from loadtests.render import render
from loadtests.report import mib, ms
from loadtests.runner import Job, execute
from loadtests.seed import seed
from loadtests.targets import Client
from loadtests.triton import (
    DIRECT_SCENARIO,
    MISSING_VENV,
    TritonServer,
    direct_scenario,
    running_triton,
    serve_args,
    triton_config,
    triton_python,
    triton_repository,
)
from loadtests.workloads import SCENARIOS, Workload

DEFAULT_SCENARIOS = (
    "predict-1",
    "predict-8-zipf",
    "predict-32-zipf",
    "v2-dense-1",
    "mix",
    "heavy-1",
)
# (label, protocol, client, scenario): the HTTP client the generator uses, httpx for
# comparison, and grpc.aio (the gRPC client, whose ceiling bounds every gRPC figure).
CEILING_CLIENTS: tuple[tuple[str, str, Client, str], ...] = (
    ("raw HTTP/1.1", "http", "raw", "predict-8-zipf"),
    ("httpx", "http", "httpx", "predict-8-zipf"),
    ("wrk", "http", "wrk", "predict-8-zipf"),
    ("grpc.aio", "grpc", "raw", "v2-entities-8"),
)
FLOOR_SAMPLES = 3000
BUDGET_REQUESTS = 3000
# The addresses printed in reproducible commands; the suite itself uses free ports.
DOC_URLS = {"http": "http://127.0.0.1:8000", "grpc": "grpc://127.0.0.1:8001"}
DOC_REDIS = "redis://127.0.0.1:6379/0"
DOC_CLUSTER = "redis+cluster://127.0.0.1:7000/0"
DOC_TRITON_PORTS = {"grpc": 8101, "http": 8100}
DOC_TRITON_MODELS = "/tmp/models-triton"


@dataclass(frozen=True)
class SuiteSettings:
    configs: tuple[str, ...]
    scenarios: tuple[str, ...]
    concurrency: tuple[int, ...]
    duration_s: float
    repeats: int
    warmup_s: float
    entities: int
    models: Path
    views: Path
    results_dir: Path
    docs: Path
    # An earlier run's results file, shown beside this run's (loadtests/against.py).
    against: Path | None = None

    def __post_init__(self) -> None:
        unknown = [c for c in self.configs if c not in CONFIGS]
        unknown += [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown configuration or scenario: {', '.join(unknown)}")
        if self.repeats < 1 or not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("need at least one repeat and positive concurrency levels")


def run_suite(settings: SuiteSettings) -> Path:
    """Run everything and return the results file; docs are regenerated from it."""
    started = datetime.now(UTC)
    configs = [CONFIGS[name] for name in settings.configs or CONFIGS]
    results: dict[str, Any] = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "concurrency": list(settings.concurrency),
            "duration_s": settings.duration_s,
            "repeats": settings.repeats,
            "warmup_s": settings.warmup_s,
            "entities": settings.entities,
        },
        "setup": [f"mlgate bench seed --redis {DOC_REDIS} --n {settings.entities}"],
        "configs": [],
        "runs": [],
    }
    if settings.against is not None:
        earlier = orjson.loads(settings.against.read_bytes())
        results["against"] = against.summary(earlier, settings.against)
    clock = time.monotonic()
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as logs:
        took = asyncio.run(seed(redis_url, settings.views, settings.entities))
        _say(f"seeded {settings.entities} entities in {took:.1f} s")
        model = settings.models / "fraud_mlp" / "2" / "model.onnx"
        # Medians of several rounds, like every other figure: one burst of load from elsewhere
        # on the machine would otherwise inflate the floor and flatter every ratio to it.
        floors = [
            measure_floor(redis_url, settings.views, model, FLOOR_SAMPLES, settings.entities)
            for _ in range(settings.repeats)
        ]
        floor = {
            part: {key: statistics.median(f[part][key] for f in floors) for key in figures}
            for part, figures in floors[0].items()
        }
        results["floor"] = {
            "command": f"mlgate bench floor --redis {DOC_REDIS}",
            "samples": FLOOR_SAMPLES,
            "rounds": settings.repeats,
            "parts_us": floor,
        }
        _say("floor:\n" + format_floor(floor))
        results["ceiling"] = ceiling(settings)
        # Sequential and in-process: seconds, on the suite's seeded Redis.
        results["budget"] = {
            "command": f"mlgate bench budget --feature-store {DOC_REDIS}"
            f" --entities {settings.entities} --requests {BUDGET_REQUESTS}"
        } | measure_budget(
            settings.models, settings.views, redis_url, settings.entities, BUDGET_REQUESTS
        )
        _say("CPU budget per request:\n" + format_budget(results["budget"]))
        for config in configs:
            if config.overload is not None:
                _say(f"{config.name}: {config.description}")
                results["overload"] = measure_overload(
                    config,
                    _serve_args(settings, redis_url, config, models=None),
                    settings.models,
                    settings.entities,
                    Path(logs),
                    DOC_URLS["http"],
                )
                _say(_brief_overload(results["overload"]))
            elif config.redis_cluster:
                results["configs"].append(_describe(config, settings, str(settings.models)))
                with redis_cluster(3) as cluster:
                    took = asyncio.run(seed(cluster.url, settings.views, settings.entities))
                    _say(
                        f"seeded {settings.entities} entities into a 3-node cluster in {took:.1f} s"
                    )
                    results["runs"] += measure_gateway(
                        settings, config, cluster.url, settings.models, Path(logs)
                    )
            elif not config.triton:
                results["configs"].append(_describe(config, settings, str(settings.models)))
                results["runs"] += measure_gateway(
                    settings, config, redis_url, settings.models, Path(logs)
                )
            elif triton_python() is None:
                _say(f"skipping {config.name}: {MISSING_VENV}")
                results["triton"] = {"config": config.name, "skipped": MISSING_VENV}
            else:
                results["configs"].append(_describe(config, settings, DOC_TRITON_MODELS))
                results["triton"], runs = measure_triton(settings, config, redis_url, Path(logs))
                results["runs"] += runs
    results["elapsed_s"] = round(time.monotonic() - clock, 1)
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    out = settings.results_dir / f"{started.strftime('%Y-%m-%dT%H%M%SZ')}.json"
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    render(results, settings.docs)
    _say(f"wrote {out}, {settings.docs} and its plot in {results['elapsed_s']:.0f} s")
    return out


def ceiling(settings: SuiteSettings) -> list[dict[str, Any]]:
    """The generator alone against trivial servers: its HTTP client, httpx, and grpc.aio."""
    # One short run per point: with nothing but the generator at work, figures settle fast.
    duration_s = min(settings.duration_s, 2.0)
    points = []
    for label, protocol, client, scenario in CEILING_CLIENTS:
        workload = Workload(SCENARIOS[scenario], key_space=settings.entities)
        with trivial_server(protocol) as port:
            for level in settings.concurrency:
                spec = LoadSpec(concurrency=level, duration_s=duration_s)
                job = Job(f"{protocol}://{HOST}:{port}", workload, spec, client=client)
                result = execute(job)
                command = (
                    f"mlgate bench ceiling --protocol {protocol} --client {client}"
                    f" --scenario {scenario} --concurrency {level}"
                    f" --duration {duration_s:g}"
                )
                points.append(
                    {"client": label, "concurrency": level, "command": command} | result.summary()
                )
                _say(f"ceiling {label} c={level}: {_brief(result)}")
    return points


def measure_gateway(
    settings: SuiteSettings, config: GatewayConfig, redis_url: str, models: Path, logs: Path
) -> list[dict[str, Any]]:
    """Each of the configuration's scenarios against one gateway serving `models`."""
    serve_args = _serve_args(settings, redis_url, config, models)
    log = logs / f"{config.name}.log"
    runs = []
    # One process unless the configuration says otherwise: the figures compare per process.
    env = {"MLGATE_WORKERS": "1", **config.env}
    with gateway(serve_args, env, log, grpc=config.protocol == "grpc") as ports:
        url = f"grpc://{HOST}:{ports.grpc}" if ports.grpc else f"http://{HOST}:{ports.http}"
        metrics_url = f"http://{HOST}:{ports.http}/metrics"
        for scenario in _scenarios(settings, config):
            runs += measure(settings, config, scenario, url, metrics_url, ports.pid)
    return runs


def measure_triton(
    settings: SuiteSettings, config: GatewayConfig, redis_url: str, logs: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tritonserver of fraud_mlp's model.onnx; the gateway in `config` with fraud_mlp's
    default version on it; then the server alone. Returns (the page's Triton section, the
    gateway's runs)."""
    model = settings.models / "fraud_mlp" / "2" / "model.onnx"
    started = time.monotonic()
    with running_triton(model, logs) as server:
        _say(f"tritonserver ready in {time.monotonic() - started:.1f} s")
        models = triton_repository(settings.models, logs / "models-triton", server.grpc)
        runs = measure_gateway(settings, config, redis_url, models, logs)
        direct = measure_direct(settings, config, server.grpc)
        bare = measure_bare(settings, server)
    ports = DOC_TRITON_PORTS
    args = serve_args(model, ports["grpc"], ports["http"], "/tmp/pytriton", only_fraud_mlp=True)
    section = {
        "config": config.name,
        "server": " ".join([".venv-triton/bin/python -P loadtests/triton_serve.py", *args]),
        "repository": triton_config({}, f"{HOST}:{ports['grpc']}"),
        "direct": direct,
        "bare": bare,
    }
    return section, runs


def measure_bare(settings: SuiteSettings, server: TritonServer) -> list[dict[str, Any]]:
    """The bare V2 inference server as the peer of `default-wrk`: the same wrk client, runs and
    repeats, sending one V2 infer of one FP32 feature row over HTTP at every concurrency level,
    with the CPU time of tritonserver's whole process tree per request answered."""
    workload = Workload(SCENARIOS[DIRECT_SCENARIO], key_space=settings.entities)
    url = f"http://{server.http}"
    points = []
    for level in settings.concurrency:
        spec = LoadSpec(concurrency=level, duration_s=settings.duration_s)
        job = Job(url, workload, spec, client="wrk")
        point = timed_runs(job, settings.repeats, server.proc.pid)
        command = (
            f"mlgate bench run --url http://{HOST}:{DOC_TRITON_PORTS['http']}"
            f" --scenario {DIRECT_SCENARIO} --concurrency {level}"
            f" --duration {settings.duration_s:g} --client wrk"
        )
        points.append({"concurrency": level, "command": command} | point)
        _say(f"Triton bare, wrk c={level}: {_brief_point(point)}")
    return points


def timed_runs(job: Job, repeats: int, pid: int) -> dict[str, Any]:
    """`repeats` runs of `job`, summarised, with the CPU time of `pid`'s process tree per
    request answered."""
    cpu_s = tree_cpu_s(pid)
    runs = [execute(job) for _ in range(repeats)]
    cpu_s = tree_cpu_s(pid) - cpu_s
    point = summarise(runs) | {"repeats": [r.to_dict() for r in runs]}
    answered = sum(r.completed for r in runs)
    if answered:
        point["server_cpu_us_per_request"] = round(cpu_s / answered * 1e6, 1)
    return point


def measure_direct(
    settings: SuiteSettings, config: GatewayConfig, endpoint: str
) -> list[dict[str, Any]]:
    """Triton alone, sent what the gateway sent it for each of the configuration's scenarios
    (FP32 feature rows, V2 gRPC), by the generator's gRPC client at every concurrency level."""
    # As the ceiling: one short run per point, with nothing but Triton and the generator at
    # work, and no warm-up, Triton having just served the gateway; it keeps the suite's Triton
    # part near a minute and a half.
    duration_s = min(settings.duration_s, 2.0)
    url = f"grpc://{endpoint}"
    points = []
    for scenario in _scenarios(settings, config):
        dense = direct_scenario(SCENARIOS[scenario])
        if dense is None:
            continue
        workload = Workload(dense, key_space=settings.entities)
        for level in settings.concurrency:
            result = execute(Job(url, workload, LoadSpec(concurrency=level, duration_s=duration_s)))
            command = (
                f"mlgate bench run --url grpc://{HOST}:{DOC_TRITON_PORTS['grpc']}"
                f" --scenario {dense.name} --entities {dense.rows} --concurrency {level}"
                f" --duration {duration_s:g}"
            )
            points.append(
                {"scenario": scenario, "rows": dense.rows, "concurrency": level}
                | {"command": command}
                | result.summary()
            )
            _say(f"Triton direct, as {scenario} c={level}: {_brief(result)}")
    return points


def measure(
    settings: SuiteSettings,
    config: GatewayConfig,
    scenario: str,
    url: str,
    metrics_url: str,
    pid: int,
) -> list[dict[str, Any]]:
    """One scenario at every concurrency level, each the median of several short runs, with
    the CPU time of the gateway's processes (`pid` and its workers) per request answered."""
    workload = Workload(SCENARIOS[scenario], key_space=settings.entities)
    if settings.warmup_s > 0:
        warm = LoadSpec(concurrency=max(settings.concurrency), duration_s=settings.warmup_s)
        execute(Job(url, workload, warm))
    points = []
    for level in settings.concurrency:
        spec = LoadSpec(concurrency=level, duration_s=settings.duration_s)
        before = batch_totals(metrics_url)
        trips = metric_total(metrics_url, ROUND_TRIPS)
        point = timed_runs(Job(url, workload, spec, client=config.client), settings.repeats, pid)
        point["rows_per_batch"] = rows_per_batch(before, metrics_url)
        if point["requests"]:
            trips = metric_total(metrics_url, ROUND_TRIPS) - trips
            point["round_trips_per_request"] = round(trips / point["requests"], 3)
        command = (
            f"mlgate bench run --url {DOC_URLS[config.protocol]} --scenario {scenario}"
            f" --concurrency {level}"
            f" --duration {settings.duration_s:g}"
            + ("" if config.client == "raw" else f" --client {config.client}")
        )
        points.append(
            {"config": config.name, "scenario": scenario, "concurrency": level}
            | {"command": command}
            | point
        )
        _say(f"{config.name} {scenario} c={level}: {_brief_point(point)}")
    return points


ROUND_TRIPS = "mlgate_feature_store_round_trips_total"


def metric_total(metrics_url: str, name: str) -> float:
    """The sum of a counter's samples, over every label set."""
    text = httpx.get(metrics_url, timeout=10).text
    pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


_BATCH_LINE = re.compile(r"^mlgate_batch_size_(sum|count)\{[^}]*\} (\S+)$", re.MULTILINE)


def batch_totals(metrics_url: str) -> tuple[float, float]:
    """(rows, batches) the gateway's batchers have run so far, over every model."""
    text = httpx.get(metrics_url, timeout=10).text
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _BATCH_LINE.findall(text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def rows_per_batch(before: tuple[float, float], metrics_url: str) -> float | None:
    """Mean rows per batch since `before`; None when no batcher ran (batching off)."""
    rows, batches = batch_totals(metrics_url)
    done = batches - before[1]
    return round((rows - before[0]) / done, 2) if done else None


def summarise(repeats: list[RunResult]) -> dict[str, Any]:
    """Medians across repeats, figure by figure; errors and requests summed."""
    summaries = [r.summary() for r in repeats]
    latency = {
        key: statistics.median(s["latency_us"][key] for s in summaries)
        for key in summaries[0]["latency_us"]
    }
    errors: dict[str, int] = {}
    for s in summaries:
        for kind, n in s["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "throughput_rps": round(statistics.median(s["throughput_rps"] for s in summaries), 1),
        "latency_us": latency,
        "requests": sum(s["requests"] for s in summaries),
        "errors": errors,
    }


def _scenarios(settings: SuiteSettings, config: GatewayConfig) -> tuple[str, ...]:
    return settings.scenarios or config.scenarios or DEFAULT_SCENARIOS


def _serve_args(
    settings: SuiteSettings, redis_url: str, config: GatewayConfig, models: Path | None
) -> list[str]:
    """`mlgate serve` flags for `config` (None `models`: the caller adds --models)."""
    return [
        *(["--models", str(models)] if models is not None else []),
        "--views",
        str(settings.views),
        "--feature-store",
        redis_url,
        "--log-level",
        "warning",
        *config.serve_args,
    ]


def _describe(config: GatewayConfig, settings: SuiteSettings, models: str) -> dict[str, Any]:
    grpc = ["--grpc-port", "8001"] if config.protocol == "grpc" else []
    flags = " ".join([*grpc, "--models", models, *config.serve_args])
    env = " ".join(f"{k}={v}" for k, v in config.env.items())
    store = DOC_CLUSTER if config.redis_cluster else DOC_REDIS
    command = f"mlgate serve --host 127.0.0.1 --port 8000 {flags} --feature-store {store}"
    return {
        "name": config.name,
        "description": config.description,
        "command": f"{env} {command}".strip(),
        "compare_to": config.compare_to,
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "redis": _output(["redis-server", "--version"]).split(" v=")[-1].split(" ")[0],
        "commit": _output(["git", "rev-parse", "--short", "HEAD"]),
        "uncommitted_changes": bool(_output(["git", "status", "--porcelain"])),
        # Other processes on the machine skew every figure; say how busy it was.
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _output(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def _brief(result: RunResult) -> str:
    return _brief_point(result.summary())


def _brief_point(point: dict[str, Any]) -> str:
    latency = point["latency_us"]
    errors = sum(point["errors"].values())
    return (
        f"{point['throughput_rps']:.0f} req/s  p50 {ms(latency['p50'])} ms"
        f"  p99 {ms(latency['p99'])} ms" + (f"  errors {errors}" if errors else "")
    )


def _brief_overload(section: dict[str, Any]) -> str:
    run, memory = section["run"], section["memory"]
    refused = run["error_latency_us"].get(REFUSED, {})
    rss = {k: mib(memory[f"{k}_bytes"]) for k in ("start", "peak", "end")}
    return (
        f"overload: capacity {section['capacity']['throughput_rps']:.0f} req/s;"
        f" offered {section['offered_rps']:.0f} req/s, served {run['served_rps']:.0f} req/s,"
        f" {100 * run['refused_share']:.0f}% refused (429 p99 {ms(refused.get('p99', 0))} ms),"
        f" 200 p99 {ms(run['latency_us']['p99'])} ms;"
        f" RSS start {rss['start']} peak {rss['peak']} end {rss['end']} MiB"
        + (f"; errors {run['errors']}" if set(run["errors"]) - {REFUSED} else "")
    )


def _say(line: str) -> None:
    print(line, flush=True)
