"""Real tritonserver processes for the Triton backend's tests (see serve_models.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, REPO_ROOT, free_port

TRITON_VENV = REPO_ROOT / ".venv-triton"
SERVE_SCRIPT = Path(__file__).with_name("serve_models.py")
# As serve_models.py has them.
MAX_BATCH_SIZE = 64
FAULTY_MESSAGE = "the faulty model fails batches whose first feature is negative"
_STUB_FOLDER = re.compile(r"^(/tmp/folder\w{6})/")


def triton_python() -> Path:
    """The Triton venv's interpreter; skips the test where there is none, outside `make test`."""
    python = TRITON_VENV / "bin" / "python"
    if python.exists():
        return python
    reason = f"no Triton test venv at {TRITON_VENV}: run `make triton-venv`"
    if os.environ.get("MLGATE_REQUIRE_TRITON"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class TritonServer:
    """A pytriton process serving models/fraud_mlp/2/model.onnx, with its tritonserver."""

    grpc_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

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


def start_triton(tmp_dir: Path, *, only_fraud_mlp: bool = False) -> TritonServer:
    """Start a server in its own process group; wait_ready() before using it."""
    python = triton_python()
    grpc_port, http_port = free_port(), free_port()
    log = tmp_dir / f"triton-{grpc_port}.log"
    command = [
        str(python),
        str(SERVE_SCRIPT),
        "--model",
        str(MODELS_DIR / "fraud_mlp" / "2" / "model.onnx"),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--workspace",
        str(tmp_dir / f"workspace-{grpc_port}"),
    ]
    if only_fraud_mlp:
        command.append("--only-fraud-mlp")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return TritonServer(grpc_port, http_port, proc, log)
