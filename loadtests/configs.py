"""Named gateway configurations the suite measures: name -> extra `mlgate serve` flags and env.

Add one here when a feature lands (batching on/off, audit on/off, shadow on/off, ...);
give it ``scenarios`` to measure only what it changes, so the suite stays within minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from loadtests.targets import Client


@dataclass(frozen=True)
class Overload:
    """Load shedding, measured: `model` gets a queue of `max_queue_size` requests; its capacity
    is measured closed loop with that many requests in flight (none refused), then an open
    loop offers `factor` times that rate for `duration_s` while the gateway's resident memory
    is sampled. A bounded queue answers the excess with fast 429s and keeps memory flat."""

    model: str
    scenario: str
    max_queue_size: int
    factor: float = 4.0
    duration_s: float = 8.0
    capacity_s: float = 3.0
    """Seconds of the closed-loop run that measures the capacity."""

    def __post_init__(self) -> None:
        if (
            self.max_queue_size < 1
            or self.factor <= 1
            or min(self.duration_s, self.capacity_s) <= 0
        ):
            raise ValueError("overload needs a queue, a factor above 1 and positive durations")


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    description: str
    serve_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    scenarios: tuple[str, ...] | None = None
    """None: the suite's scenario list."""
    protocol: Literal["http", "grpc"] = "http"
    """grpc: the gateway also serves gRPC (--grpc-port) and the load goes there."""
    client: Client = "raw"
    """The generator's HTTP client; wrk: the C client (loadtests/wrk.py)."""
    compare_to: str | None = None
    """A configuration this one differs from by one thing: the page shows their ratios."""
    triton: bool = False
    """True: fraud_mlp's default version is served by a tritonserver the suite starts and also
    measures directly (loadtests/triton.py); skipped where `make triton-venv` has not run."""
    overload: Overload | None = None
    """Set: the overload measurement (loadtests/overload.py) instead of the scenario matrix."""
    redis_cluster: bool = False
    """True: the features come from a 3-master Redis Cluster on loopback that the suite starts
    and seeds (redis+cluster://), not from the suite's one redis-server."""


# `mlgate serve` as it comes: the suite runs one process unless a configuration says otherwise.
DEFAULT_SERVE = {"MLGATE_WORKERS": "auto"}
# The configuration whose features come from a Redis Cluster (the page compares it to its base).
CLUSTER_CONFIG = "redis-cluster"

CONFIGS: dict[str, GatewayConfig] = {
    c.name: c
    for c in (
        GatewayConfig("baseline", "one worker process, config.yaml as committed"),
        GatewayConfig(
            "default",
            "`mlgate serve` as it comes: --workers auto, one process per usable CPU with Redis"
            " features; baseline runs one process",
            env=DEFAULT_SERVE,
            scenarios=("predict-1", "predict-8-zipf"),
            compare_to="baseline",
        ),
        GatewayConfig(
            "default-wrk",
            "`mlgate serve` as it comes (--workers auto), driven by wrk, the C client",
            env=DEFAULT_SERVE,
            scenarios=("predict-1",),
            client="wrk",
        ),
        GatewayConfig(
            "default-grpc",
            "`mlgate serve` as it comes (--workers auto), entity ids over V2 gRPC",
            env=DEFAULT_SERVE,
            scenarios=("v2-entities-8",),
            protocol="grpc",
        ),
        GatewayConfig(
            "grpc",
            "the same gateway, load on its V2 gRPC front (ModelInfer, raw tensors)",
            scenarios=("v2-dense-1", "mix"),
            protocol="grpc",
        ),
        GatewayConfig(
            "batching-off",
            "every request run alone (--batching off); baseline batches adaptively",
            serve_args=("--batching", "off"),
            scenarios=("predict-1", "heavy-1"),
            compare_to="baseline",
        ),
        GatewayConfig(
            "batching-fixed-500us",
            "every batching model waits a fixed 500 µs (--batching-delay-us 500, adaptive off);"
            " baseline adapts the wait, up to each config.yaml's max_queue_delay_us",
            serve_args=("--batching-delay-us", "500"),
            scenarios=("predict-1", "heavy-1"),
            compare_to="baseline",
        ),
        GatewayConfig(
            "batching-fixed-2ms",
            "every batching model waits a fixed 2 ms (--batching-delay-us 2000, adaptive off);"
            " baseline adapts the wait, up to each config.yaml's max_queue_delay_us",
            serve_args=("--batching-delay-us", "2000"),
            scenarios=("predict-1", "heavy-1"),
            compare_to="baseline",
        ),
        GatewayConfig(
            "monitoring-off",
            "no drift counting (--monitoring off); baseline counts every scored row of the"
            " versions with a reference profile (fraud_mlp's) into their drift bins",
            serve_args=("--monitoring", "off"),
            scenarios=("predict-1", "predict-32-zipf"),
            compare_to="baseline",
        ),
        GatewayConfig(
            "reads-uncoalesced",
            "one feature-store round trip per request (--coalesce-reads off); baseline merges"
            " the reads of concurrent requests into one MGET",
            serve_args=("--coalesce-reads", "off"),
            scenarios=("predict-1",),
            compare_to="baseline",
        ),
        GatewayConfig(
            "audit-off",
            "no audit log (--audit none); baseline records every prediction to a file",
            serve_args=("--audit", "none"),
            scenarios=("predict-1", "predict-8-zipf"),
            compare_to="baseline",
        ),
        GatewayConfig(
            "shadow-100",
            "every fraud_mlp request mirrored to version 1 after its answer (--routing "
            "loadtests/shadow.yaml); baseline mirrors nothing",
            serve_args=("--routing", "loadtests/shadow.yaml"),
            scenarios=("predict-1", "predict-8-zipf"),
            compare_to="baseline",
        ),
        GatewayConfig(
            CLUSTER_CONFIG,
            "features from a 3-master Redis Cluster on loopback (--feature-store"
            " redis+cluster://…), one pipelined round trip per node a request's entities touch;"
            " baseline reads one redis-server",
            scenarios=("predict-8-zipf", "predict-32-zipf"),
            compare_to="baseline",
            redis_cluster=True,
        ),
        GatewayConfig(
            "workers-2",
            "two worker processes (uvicorn --workers)",
            serve_args=("--workers", "2"),
            scenarios=("predict-8-zipf",),
        ),
        GatewayConfig(
            "triton",
            "fraud_mlp's default version, 3, served by Triton over gRPC (the same model.onnx"
            " as version 2, which baseline runs in-process)",
            scenarios=("predict-1", "predict-8-zipf"),
            compare_to="baseline",
            triton=True,
        ),
        GatewayConfig(
            "overload",
            "heavy_mlp with a queue of 16 requests, offered 4x the rate it serves (open loop)",
            overload=Overload("heavy_mlp", "heavy-32", max_queue_size=16),
        ),
    )
}

# Configurations the page also shows side by side, figure by figure, under a title.
SIDE_BY_SIDE: dict[str, tuple[str, ...]] = {
    "Batching delay: adaptive, fixed, none": (
        "baseline",
        "batching-fixed-500us",
        "batching-fixed-2ms",
        "batching-off",
    ),
}
