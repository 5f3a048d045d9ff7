"""Servers the harness starts for itself on free loopback ports, and always stops."""

from __future__ import annotations

import http.client
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout_s}s")


def http_status(port: int, path: str, timeout_s: float = 1.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@contextmanager
def managed(
    argv: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is terminated (then killed) on exit, whatever happened inside."""
    with tempfile.TemporaryFile() if log is None else log.open("wb") as sink:
        proc = subprocess.Popen(
            list(argv), stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate `proc`, killing it if it has not exited within `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def trivial_server(kind: str = "http") -> Iterator[int]:
    """``loadtests.servers`` in its own process; yields its port."""
    port = free_port()
    argv = [sys.executable, "-m", "loadtests.servers", kind, "--port", str(port)]
    with managed(argv) as proc:
        wait_for_port(port, proc, timeout_s=20)
        yield port


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (`make redis-server` installs it)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    with managed(argv) as proc:
        wait_for_port(port, proc, timeout_s=10)
        yield f"redis://{HOST}:{port}/0"


# A cluster node also listens on its port + 10000 (the cluster bus).
CLUSTER_BUS_OFFSET = 10000
CLUSTER_PORTS = range(20000, 65536 - CLUSTER_BUS_OFFSET)


def free_cluster_port() -> int:
    """A free port whose cluster-bus port is free too."""
    for _ in range(1000):
        port = random.choice(CLUSTER_PORTS)
        if all(_bindable(p) for p in (port, port + CLUSTER_BUS_OFFSET)):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


class RedisCluster:
    """Redis Cluster nodes (masters only) on loopback, each a redis-server process of its own.

    Every node serves its slots alone (`cluster-require-full-coverage no`), so a stopped node
    fails only the keys it owns; `start(i)` brings it back with its old identity and slots.
    """

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli must be on PATH (`make redis-server`)")
        self._binary = binary
        self._dir = directory
        self.ports = [free_cluster_port() for _ in range(nodes)]
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * nodes

    @property
    def url(self) -> str:
        """The URL of one node (any would do: clients discover the others)."""
        return f"redis+cluster://{HOST}:{self.ports[0]}/0"

    def start(self, node: int) -> None:
        port = self.ports[node]
        argv = [
            self._binary,
            "--port", str(port),
            "--bind", HOST,
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", "1000",
            "--cluster-require-full-coverage", "no",
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs[node] = proc
        wait_for_port(port, proc, timeout_s=10)

    def stop(self, node: int) -> None:
        proc = self._procs[node]
        if proc is not None:
            stop(proc, timeout_s=5)
            self._procs[node] = None

    def create(self, timeout_s: float = 20.0) -> None:
        """Start every node, assign all slots among them, and wait for cluster_state:ok."""
        for node in range(len(self.ports)):
            self.start(node)
        addresses = [f"{HOST}:{port}" for port in self.ports]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(
            ["redis-cli", *create],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        self.wait_ok(timeout_s)

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        """Until every running node says cluster_state:ok and knows every node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._ok(port) for port, p in zip(self.ports, self._procs, strict=True) if p):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the cluster on {self.ports} is not ok after {timeout_s}s")

    def _ok(self, port: int) -> bool:
        info = self.cli(port, "cluster", "info")
        known = self.cli(port, "cluster", "nodes").count("connected")
        return "cluster_state:ok" in info and known == len(self.ports)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def close(self) -> None:
        for node in range(len(self.ports)):
            self.stop(node)


@contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[RedisCluster]:
    """A throwaway Redis Cluster of `nodes` masters, always stopped."""
    with tempfile.TemporaryDirectory(prefix="mlgate-cluster-") as directory:
        cluster = RedisCluster(Path(directory), nodes)
        try:
            cluster.create()
            yield cluster
        finally:
            cluster.close()


def mlgate_executable() -> str:
    beside = Path(sys.executable).with_name("mlgate")
    found = str(beside) if beside.exists() else shutil.which("mlgate")
    if found is None:
        raise RuntimeError("the `mlgate` command is not installed (`make` installs it)")
    return found


@dataclass(frozen=True)
class GatewayPorts:
    http: int
    grpc: int | None
    pid: int
    """The serving process (with one worker, the only one)."""


@contextmanager
def gateway(
    serve_args: Sequence[str],
    env: dict[str, str],
    log: Path,
    grpc: bool = False,
    ready_timeout_s: float = 120,
) -> Iterator[GatewayPorts]:
    """``mlgate serve`` on free ports, yielded once /v2/health/ready answers 200."""
    http, grpc_port = free_port(), free_port() if grpc else None
    argv = [mlgate_executable(), "serve", "--host", HOST, "--port", str(http)]
    if grpc_port is not None:
        argv += ["--grpc-port", str(grpc_port)]
    with managed([*argv, *serve_args], env=env, log=log) as proc:
        ports = GatewayPorts(http, grpc_port, proc.pid)
        deadline = time.monotonic() + ready_timeout_s
        while http_status(ports.http, "/v2/health/ready") != 200:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready after {ready_timeout_s}s; see {log}")
            time.sleep(0.1)
        if ports.grpc is not None:
            wait_for_port(ports.grpc, proc, timeout_s=max(1.0, deadline - time.monotonic()))
        yield ports
