"""Shared fixtures: a real redis-server on a free port, started and always stopped."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from service.audit import AuditRecord
    from tests.triton_support import TritonServer

from loadtests.processes import RedisCluster, free_port, redis_cluster, stop, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"


@dataclass
class RedisServer:
    """A redis-server process owned by the test session."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop(self.proc, timeout_s=5)


def start_redis(port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH: run `make test`, which installs it")
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc, timeout_s=10)
    return RedisServer(port=port, proc=proc)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A URL to an empty database (db 0) of the session's redis-server."""
    import redis

    client = redis.Redis(port=redis_server.port, db=0)
    client.flushdb()
    client.close()
    yield redis_server.url


def seeded_url(server: RedisServer, db: int, entities: int) -> str:
    """db `db` of `server`, holding the demo views' synthetic entities u0 .. u{entities-1}."""
    import asyncio

    from feature_store.open import open_store
    from feature_store.synthetic import seed_synthetic
    from feature_store.views import load_views

    url = f"redis://127.0.0.1:{server.port}/{db}"

    async def seed() -> None:
        store = open_store(url)
        try:
            views = load_views(MODELS_DIR / "feature_views.yaml")
            await seed_synthetic(store, views.values(), entities)
        finally:
            await store.close()

    asyncio.run(seed())
    return url


@pytest.fixture
def doomed_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_session() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on loopback for the test session (a few seconds to form)."""
    with redis_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def cluster(cluster_session: RedisCluster) -> Iterator[RedisCluster]:
    """The session's cluster, emptied, every node running and the cluster ok."""
    for node, port in enumerate(cluster_session.ports):
        if cluster_session.cli(port, "ping").strip() != "PONG":
            cluster_session.start(node)
    cluster_session.wait_ok()
    for port in cluster_session.ports:
        cluster_session.cli(port, "flushall")
    yield cluster_session


@dataclass
class GatewayProcess:
    """An `mlgate serve` subprocess listening on loopback."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)

    def audited(self, request_id: str, timeout_s: float = 10.0) -> list[AuditRecord]:
        """The records of `request_id` in this gateway's audit file (start_gateway puts it
        beside the log), once the background writer has written them."""
        from service.audit import decode_record
        from service.audit.framing import iter_file

        path = self.log.parent / f"audit-{self.port}.log"
        found: list[AuditRecord] = []
        deadline = time.monotonic() + timeout_s
        while not found and time.monotonic() < deadline:
            time.sleep(0.1)
            if path.exists():
                found = [
                    r for r in map(decode_record, iter_file(path)) if r.request_id == request_id
                ]
        return found


def start_gateway(
    tmp_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> GatewayProcess:
    """Start `mlgate serve` on a free port and wait until it answers /v2/health/live."""
    import os
    import sys

    import httpx

    port = free_port()
    log = tmp_dir / f"gateway-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLGATE_")}
    # Audit records stay in the test's directory unless a test points them elsewhere.
    full_env["MLGATE_AUDIT"] = f"file://{tmp_dir}/audit-{port}.log"
    full_env["MLGATE_AUDIT_SPILL_DIR"] = str(tmp_dir / f"spill-{port}")
    # Stopped at once: only the drain tests wait out a drain delay.
    full_env["MLGATE_DRAIN_DELAY_S"] = "0"
    # One process unless a test asks for more (--workers, or MLGATE_WORKERS=auto in `env`).
    full_env["MLGATE_WORKERS"] = "1"
    full_env.update(env or {})
    mlgate = Path(sys.executable).parent / "mlgate"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(mlgate), "serve", "--port", str(port), "--log-level", "warning", *args],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gateway = GatewayProcess(port=port, proc=proc, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{gateway.url}/v2/health/live", timeout=0.5).status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    gateway.stop()
    raise TimeoutError(f"gateway did not come up in {timeout}s:\n{log.read_text()}")


def start_workers(tmp_dir: Path, *args: str) -> tuple[GatewayProcess, Path]:
    """`mlgate serve --workers 2` (100 demo entities) with its metrics files in a folder of the
    test's own, so a test can tell which worker counted what."""
    metrics_dir = tmp_dir / "metrics"
    metrics_dir.mkdir()
    gw = start_gateway(
        tmp_dir,
        "--workers",
        "2",
        "--demo-entities",
        "100",
        *args,
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    return gw, metrics_dir


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A tritonserver of fraud_mlp version 2 for the module (skips where no Triton venv)."""
    from tests.triton_support import start_triton  # it reads this module's MODELS_DIR

    server = start_triton(tmp_path_factory.mktemp("triton"), only_fraud_mlp=True)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()
