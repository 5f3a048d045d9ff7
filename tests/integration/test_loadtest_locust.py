"""The locustfile's two users, each in its own headless Locust, against trivial servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtests.processes import HOST, trivial_server

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


def locust(user: str, *target: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--skip-log"]
    # Locust's run time counts from before its own imports, seconds on a busy machine.
    argv += ["-u", "2", "-r", "100", "-t", "3s", "--json", "--mlgate-scenario", "mix"]
    return subprocess.Popen(
        [*argv, *target, user], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stats(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


def test_http_and_grpc_users_send_the_mix_without_failures() -> None:
    with trivial_server("http") as http_port, trivial_server("grpc") as grpc_port:
        # Two processes, side by side: gRPC on gevent can stall HTTP users sharing its hub.
        http = locust("HttpScenarioUser", "--host", f"http://{HOST}:{http_port}")
        grpc = locust("GrpcScenarioUser", "--mlgate-grpc", f"{HOST}:{grpc_port}")
        http_stats, grpc_stats = stats(http), stats(grpc)
    # The mix spreads requests over three model versions, each its own V2 path.
    assert {s["name"] for s in http_stats} <= {
        "/v2/models/fraud_mlp/versions/1/infer",
        "/v2/models/fraud_mlp/versions/2/infer",
        "/v2/models/heavy_mlp/versions/1/infer",
    }
    assert sum(s["num_requests"] for s in http_stats) > 20
    assert {s["method"] for s in grpc_stats} == {"grpc"}
    assert all(s["name"].startswith("ModelInfer ") for s in grpc_stats)
    assert sum(s["num_requests"] for s in grpc_stats) >= 1
    assert all(s["num_failures"] == 0 for s in http_stats + grpc_stats)
