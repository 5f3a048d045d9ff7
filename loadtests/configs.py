"""Named gateway configurations the suite measures: name -> extra `mlgate serve` flags and env.

Add one here when a feature lands (batching on/off, audit on/off, shadow on/off, ...);
give it ``scenarios`` to measure only what it changes, so the suite stays within minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    compare_to: str | None = None
    """A configuration this one differs from by one thing: the page shows their ratios."""
    triton: bool = False
    """True: fraud_mlp's default version is served by a tritonserver the suite starts and also
    measures directly (loadtests/triton.py); skipped where `make triton-venv` has not run."""


CONFIGS: dict[str, GatewayConfig] = {
    c.name: c
    for c in (
        GatewayConfig("baseline", "one worker process, config.yaml as committed"),
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
    )
}
