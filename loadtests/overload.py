"""Load shedding, measured: a model with a small queue, offered several times what it serves.

A bounded batching queue should answer the excess at once (429 with Retry-After) instead of
letting it wait, so the requests it takes keep their latency and the process its memory. The
capacity is measured first, closed loop with as many requests in flight as the queue holds
(so none is refused); then an open loop offers a multiple of that rate, timing every request
from its scheduled send time, while the gateway's resident memory is sampled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.configs import GatewayConfig, Overload
from loadtests.generator import LoadSpec, RunResult
from loadtests.memory import RssSampler
from loadtests.processes import HOST, gateway
from loadtests.repository import changed_repository, merged
from loadtests.runner import Job, execute
from loadtests.workloads import SCENARIOS, Workload

REFUSED = "http_429"
WARMUP_S = 1.0
# Memory sampled this long before and after the load: the line's level at rest, both ends.
REST_S = 0.5
TIMEOUT_S = 5.0


def queue_changes(overload: Overload) -> dict[str, Any]:
    """The config.yaml keys of the model that the measurement changes."""
    return {"dynamic_batching": {"max_queue_size": overload.max_queue_size}}


def measure_overload(
    config: GatewayConfig,
    serve_args: Sequence[str],
    models: Path,
    entities: int,
    logs: Path,
    doc_url: str,
) -> dict[str, Any]:
    """The page's overload section: capacity, the overloaded run, the memory line.
    `serve_args` are the gateway's flags but --models, which is a changed copy of `models`."""
    overload = config.overload
    assert overload is not None
    changes = queue_changes(overload)
    root = changed_repository(
        models, logs / f"models-{config.name}", overload.model, lambda c: merged(c, changes)
    )
    workload = Workload(SCENARIOS[overload.scenario], key_space=entities)
    in_flight = overload.max_queue_size
    args = ["--models", str(root), *serve_args]
    with gateway(args, config.env, logs / f"{config.name}.log") as ports:
        url = f"http://{HOST}:{ports.http}"
        execute(Job(url, workload, LoadSpec(concurrency=in_flight, duration_s=WARMUP_S)))
        capacity = execute(
            Job(url, workload, LoadSpec(concurrency=in_flight, duration_s=overload.capacity_s))
        )
        if capacity.throughput_rps <= 0:
            raise RuntimeError(f"overload: {overload.model} answered nothing: {capacity.errors}")
        rate = round(overload.factor * capacity.throughput_rps, 1)
        spec = LoadSpec(rate=rate, duration_s=overload.duration_s, timeout_s=TIMEOUT_S)
        with RssSampler(ports.pid) as memory:
            time.sleep(REST_S)
            load_from = memory.elapsed_s()
            result = execute(Job(url, workload, spec))
            load_to = memory.elapsed_s()
            time.sleep(REST_S)
    return {
        "config": config.name,
        "model": overload.model,
        "scenario": overload.scenario,
        "max_queue_size": overload.max_queue_size,
        "factor": overload.factor,
        "changes": changes,
        "capacity": {
            "concurrency": in_flight,
            "command": f"mlgate bench run --url {doc_url} --scenario {overload.scenario}"
            f" --concurrency {in_flight} --duration {overload.capacity_s:g}",
        }
        | capacity.summary(),
        "offered_rps": rate,
        "command": f"mlgate bench run --url {doc_url} --scenario {overload.scenario}"
        f" --rate {rate:g} --duration {overload.duration_s:g} --timeout {TIMEOUT_S:g}",
        "run": overload_figures(result),
        "memory": memory_figures(memory.samples, load_from, load_to),
    }


def overload_figures(result: RunResult) -> dict[str, Any]:
    """The run's summary plus what the page shows of it: served rate and the refused share."""
    summary = result.summary()
    refused = result.errors.get(REFUSED, 0)
    return summary | {
        "served_rps": summary["throughput_rps"],
        "refused": refused,
        "refused_share": round(refused / result.completed, 4) if result.completed else 0.0,
    }


def memory_figures(
    samples: list[tuple[float, int]], load_from_s: float, load_to_s: float
) -> dict[str, Any]:
    """RSS at the start of the load (the last sample before it), its peak, and at the end
    (the last sample), with every sample for the plot; None where nothing was sampled."""
    before = [value for t, value in samples if t <= load_from_s]
    return {
        "load_from_s": round(load_from_s, 3),
        "load_to_s": round(load_to_s, 3),
        "start_bytes": before[-1] if before else (samples[0][1] if samples else None),
        "peak_bytes": max((value for _, value in samples), default=None),
        "end_bytes": samples[-1][1] if samples else None,
        "samples": [[t, value] for t, value in samples],
    }
