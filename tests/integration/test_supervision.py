"""`mlgate serve` supervises its processes: a start-up failure ends it with a non-zero status and
one line of reason; a worker that dies later is replaced, counted, and the gateway serves on."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from loadtests.processes import free_port
from tests.conftest import REPO_ROOT, start_workers

RESTARTS = re.compile(r"^mlgate_worker_restarts_total (\S+)$", re.MULTILINE)


def serve_until_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """`mlgate serve` on a free port, expected to end by itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLGATE_")}
    command = [
        *(str(Path(sys.executable).parent / "mlgate"), "serve", "--port", str(free_port())),
        *("--demo-entities", "10", "--log-level", "warning", *args),
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_cannot_start_ends_serve_with_its_reason_in_one_line(
    tmp_path: Path, workers: int
) -> None:
    # The spill directory is wanted below a plain file: the worker fails in its lifespan, after
    # the parent's checks passed.
    (tmp_path / "plain").write_text("")
    done = serve_until_exit(
        *("--workers", str(workers), "--audit", f"file://{tmp_path}/audit.log"),
        *("--audit-spill-dir", str(tmp_path / "plain" / "spill")),
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    reasons = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert reasons, done.stderr
    assert all(line.endswith("Not a directory: '" + f"{tmp_path}/plain/spill'") for line in reasons)


@pytest.mark.parametrize(("front", "workers"), [("HTTP", 1), ("HTTP", 2), ("gRPC", 2)])
def test_a_port_in_use_ends_serve_with_one_line_naming_it(
    tmp_path: Path, front: str, workers: int
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flag = "--port" if front == "HTTP" else "--grpc-port"
        # The later --port wins over the helper's own.
        done = serve_until_exit(
            *("--workers", str(workers), "--audit", f"file://{tmp_path}/audit.log"),
            *(flag, str(port)),
        )
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [
        f"cannot start: {front} port {port} on 127.0.0.1: Address already in use"
    ]


def workers_of(parent: int) -> set[int]:
    """The live worker processes of `parent` (multiprocessing's resource tracker is not one)."""
    pids = set()
    for child in psutil.Process(parent).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue  # a dead worker not yet reaped
        if "resource_tracker" not in command:
            pids.add(child.pid)
    return pids


def test_a_killed_worker_is_replaced_and_counted_and_the_gateway_serves_on(
    tmp_path: Path,
) -> None:
    gw, _ = start_workers(tmp_path)
    try:
        before = workers_of(gw.proc.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            while time.monotonic() < deadline:
                now = workers_of(gw.proc.pid)
                if len(now) == 2 and victim not in now:
                    break
                time.sleep(0.2)
            assert victim not in now and len(now) == 2, now
            while time.monotonic() < deadline:
                # The replacement serves once it has started; the survivor serves meanwhile.
                match = RESTARTS.search(client.get("/metrics").text)
                if match is not None and float(match.group(1)) == 1.0:
                    break
                time.sleep(0.2)
            assert match is not None and float(match.group(1)) == 1.0
            for i in range(20):
                r = client.post("/v1/models/fraud_mlp:predict", json={"entities": [f"u{i}"]})
                assert r.status_code == 200, r.text
        assert gw.proc.poll() is None
    finally:
        gw.stop()
