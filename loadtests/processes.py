"""Servers the harness starts for itself on free loopback ports, and always stops."""

from __future__ import annotations

import http.client
import os
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
