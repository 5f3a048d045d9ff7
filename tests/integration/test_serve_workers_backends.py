"""`mlgate serve --workers N` on each backend: every worker serves a Triton version, and the
parent process, which only checks the repository, asks onnxruntime for no GPU session."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from service.routing.router import VERSION_HEADER
from tests.conftest import MODELS_DIR, REPO_ROOT, start_gateway
from tests.integration.test_triton_backend import mixed, write_repository
from tests.triton_support import TritonServer

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def workers_that_served(metrics_dir: Path, version: str) -> int:
    """Worker processes whose own counter file counted an answer from `version`."""
    label = f'"version": "{version}"'

    def counted(path: Path) -> bool:
        values = MmapedDict.read_all_values_from_file(str(path))
        return any(
            '"mlgate_requests_total"' in key and label in key and value > 0
            for key, value, *_ in values
        )

    return sum(counted(path) for path in metrics_dir.glob("counter_*.db"))


async def ask_version_on_fresh_connections(url: str, version: str, connections: int) -> None:
    async def one(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            r = await client.post(
                "/v1/models/fraud_mlp:predict",
                json={"entities": [f"u{i}"]},
                headers={VERSION_HEADER: version},
            )
            assert r.status_code == 200, r.text
            assert r.headers[VERSION_HEADER] == version

    await asyncio.gather(*(one(i) for i in range(connections)))


def test_every_worker_serves_the_triton_version(triton: TritonServer, tmp_path: Path) -> None:
    write_repository(tmp_path / "models", **mixed(triton.grpc))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    gw = start_gateway(
        tmp_path,
        "--models",
        str(tmp_path / "models"),
        "--views",
        str(MODELS_DIR / "feature_views.yaml"),
        "--demo-entities",
        "100",
        "--workers",
        "2",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    try:
        sent = 0
        # The kernel hands new connections to either worker; the second may still be starting.
        while workers_that_served(metrics_dir, "3") < 2 and sent < 400:
            asyncio.run(ask_version_on_fresh_connections(gw.url, "3", connections=20))
            sent += 20
        assert workers_that_served(metrics_dir, "3") == 2, "one worker took every request"
    finally:
        gw.stop()


# Loaded by every Python process of the gateway (PYTHONPATH): writes down, per process, the
# providers each onnxruntime session is asked for, then builds the session as usual.
SESSION_RECORDER = """
import json, os
import service.backends.onnx as onnx_backend

_create_session = onnx_backend._create_session

def _recorded(path, options):
    with open(os.environ["ONNX_SESSIONS_LOG"], "a") as out:
        out.write(json.dumps({"pid": os.getpid(), "providers": list(options.providers)}) + "\\n")
    return _create_session(path, options)

onnx_backend._create_session = _recorded
"""


def test_the_parent_of_the_workers_asks_for_no_gpu_session(tmp_path: Path) -> None:
    providers = {"providers": [CUDA, CPU], "intra_op_threads": 1, "inter_op_threads": 1}
    write_repository(tmp_path / "models", onnxruntime=providers)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SESSION_RECORDER)
    sessions = tmp_path / "sessions.jsonl"
    path = os.pathsep.join([str(hook), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    gw = start_gateway(
        tmp_path,
        "--models",
        str(tmp_path / "models"),
        "--views",
        str(MODELS_DIR / "feature_views.yaml"),
        "--demo-entities",
        "100",
        "--workers",
        "2",
        env={"PYTHONPATH": path, "ONNX_SESSIONS_LOG": str(sessions)},
    )
    try:

        def records() -> list[dict[str, object]]:
            return [json.loads(line) for line in sessions.read_text().splitlines()]

        deadline = time.monotonic() + 30
        while len({r["pid"] for r in records() if r["pid"] != gw.proc.pid}) < 2:
            assert time.monotonic() < deadline, f"both workers never loaded: {records()}"
            time.sleep(0.1)
        parent = [r for r in records() if r["pid"] == gw.proc.pid]
        workers = [r for r in records() if r["pid"] != gw.proc.pid]
        # The parent did check the graph, on the CPU alone; the workers asked for CUDA as
        # config.yaml says (the CPU-only onnxruntime here falls back, with a warning).
        assert parent, "the parent checked no graph: the recorder did not run"
        assert all(r["providers"] == [CPU] for r in parent), parent
        assert all(r["providers"] == [CUDA, CPU] for r in workers), workers
        r = httpx.post(f"{gw.url}/v1/models/fraud_mlp:predict", json={"entities": ["u1"]})
        assert r.status_code == 200, r.text
    finally:
        gw.stop()
