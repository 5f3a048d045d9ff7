"""A real tritonserver on this machine, for the benchmark suite and the Triton backend's tests.

`nvidia-pytriton` bundles a tritonserver binary that runs on the CPU, but pins its own numpy, so
it lives in a venv of its own (`make triton-venv`) and runs triton_serve.py there. This module
starts that script on free ports and kills it with everything it started; it also writes the
model repository through which a gateway serves fraud_mlp from that server, and says what to
send the server directly to match what the gateway sends it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtests.processes import HOST, free_port
from loadtests.repository import changed_repository
from loadtests.workloads import SCENARIOS, Scenario

TRITON_VENV = Path(__file__).resolve().parent.parent / ".venv-triton"
MISSING_VENV = f"no Triton venv at {TRITON_VENV}: run `make triton-venv`"
SERVE_SCRIPT = Path(__file__).with_name("triton_serve.py")
# The gateway's version of fraud_mlp that Triton serves, and Triton's own number for it
# (triton_serve.py binds fraud_mlp version 2).
GATEWAY_VERSION = "3"
TRITON_VERSION = "2"
# V2 infer of FP32 feature rows to fraud_mlp version 2: Triton's name and number for the model.
DIRECT_SCENARIO = "v2-dense-1"
_STUB_FOLDER = re.compile(r"^(/tmp/folder\w{6})/")


def triton_python() -> Path | None:
    """The Triton venv's interpreter; None where `make triton-venv` has not made it."""
    python = TRITON_VENV / "bin" / "python"
    return python if python.exists() else None


@dataclass
class TritonServer:
    """A pytriton process serving a fraud_mlp model.onnx, with its tritonserver."""

    grpc_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def grpc(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"{HOST}:{self.http_port}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"READY" in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"pytriton exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"pytriton not ready after {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the whole process group: pytriton, tritonserver and its Python stubs."""
        if self.proc.poll() is not None:
            return
        leftovers = self._leftovers()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        # Killed, they cannot remove these themselves; gone, they would not say which they were.
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _leftovers(self) -> set[Path]:
        """What the server's processes would remove on a clean exit: their shared memory, and
        the copies of model.py that tritonserver makes in /tmp for each Python-backend stub."""
        found: set[Path] = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.getpgid(int(proc.name)) != self.proc.pid:
                    continue
                maps = (proc / "maps").read_text()
                fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:  # it ended meanwhile
                continue
            names = [line.split(maxsplit=5)[-1] for line in maps.splitlines()] + fds
            found.update(Path(name) for name in names if name.startswith("/dev/shm/"))
            found.update(Path(m[1]) for arg in argv if (m := _STUB_FOLDER.match(arg)))
        return found


def serve_args(
    model: Path | str,
    grpc_port: int,
    http_port: int,
    workspace: Path | str,
    *,
    only_fraud_mlp: bool = False,
) -> list[str]:
    """triton_serve.py's arguments."""
    args = ["--model", str(model), "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    args += ["--workspace", str(workspace)]
    return [*args, "--only-fraud-mlp"] if only_fraud_mlp else args


def start_triton(model: Path, tmp_dir: Path, *, only_fraud_mlp: bool = False) -> TritonServer:
    """Start a server for fraud_mlp's `model` (a model.onnx) in its own process group, logging
    and keeping its workspace in `tmp_dir`; wait_ready() before using it."""
    python = triton_python()
    if python is None:
        raise RuntimeError(MISSING_VENV)
    grpc_port, http_port = free_port(), free_port()
    log = tmp_dir / f"triton-{grpc_port}.log"
    workspace = tmp_dir / f"workspace-{grpc_port}"
    # -P keeps the script's folder, loadtests/, off the server's import path: its modules would
    # shadow top-level ones (`triton`).
    command = [str(python), "-P", str(SERVE_SCRIPT)]
    command += serve_args(model, grpc_port, http_port, workspace, only_fraud_mlp=only_fraud_mlp)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return TritonServer(grpc_port, http_port, proc, log)


@contextmanager
def running_triton(model: Path, tmp_dir: Path) -> Iterator[TritonServer]:
    """A ready server of fraud_mlp alone, killed on exit whatever happened inside."""
    server = start_triton(model, tmp_dir, only_fraud_mlp=True)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def triton_config(config: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """fraud_mlp's config.yaml with its default version served by the Triton at `endpoint`
    (gRPC); the versions it has on disk stay with onnxruntime."""
    return config | {
        "default_version": GATEWAY_VERSION,
        "version_backends": {GATEWAY_VERSION: "triton"},
        "triton": {"endpoints": [endpoint], "model_versions": {GATEWAY_VERSION: TRITON_VERSION}},
    }


def triton_repository(models: Path, root: Path, endpoint: str) -> Path:
    """A model repository at `root` that is `models` but for fraud_mlp's config.yaml, which
    triton_config() rewrites; everything else is linked, not copied."""
    return changed_repository(
        models, root, "fraud_mlp", lambda config: triton_config(config, endpoint)
    )


def direct_scenario(scenario: Scenario) -> Scenario | None:
    """What the gateway sends Triton for an entity-predict `scenario` on fraud_mlp's default
    version, as a request straight to Triton: as many FP32 feature rows as it has entities.
    None for a scenario whose requests Triton does not serve in that configuration."""
    on_triton = all(
        m.name == "fraud_mlp" and m.version in (None, GATEWAY_VERSION) for m in scenario.models
    )
    if scenario.api != "predict" or not on_triton:
        return None
    return replace(SCENARIOS[DIRECT_SCENARIO], rows=scenario.rows)
