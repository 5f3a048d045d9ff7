"""The image's entry command runs as a container of the image would run it, with no Docker engine:
the Dockerfile's final-stage environment, user and entry command, from its working directory
made read-only. What differs from a container is where things are (the image's paths mapped
into a temporary root: the venv, /app, the volume), the address (free ports on loopback) and a
drain delay of 0, so that stopping takes no 5 s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc

from loadtests.processes import free_port, stop
from tests.conftest import MODELS_DIR, REPO_ROOT
from tests.integration.deploy_support import Image, image

# The image's venv, for which a venv of this one's packages stands in.
IMAGE_VENV_BIN = "/opt/mlgate/bin"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def venv_for_everyone(top: Path) -> Path:
    """A venv under `top` that any user can run: this venv's packages on a copy (hard links
    where it can) of its base interpreter, which may live where others cannot read (a Python
    installed under root's home directory). Returns its bin directory."""
    base, python = Path(sys.base_prefix), top / "python"
    (python / "bin").mkdir(parents=True)
    link_or_copy(str(Path(sys._base_executable).resolve()), str(python / "bin" / PYTHON))  # type: ignore[attr-defined]
    shutil.copytree(
        base / "lib" / PYTHON,
        python / "lib" / PYTHON,
        symlinks=True,
        ignore=shutil.ignore_patterns("site-packages", "dist-packages", "test"),
        copy_function=link_or_copy,
    )
    for library in (base / "lib").glob("libpython*.so*"):
        link_or_copy(str(library), str(python / "lib" / library.name))
    venv = top / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / PYTHON).mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {python / 'bin'}\n")
    (venv / "bin" / "python").symlink_to(python / "bin" / PYTHON)
    (venv / "lib" / PYTHON / "site-packages").symlink_to(sysconfig.get_paths()["purelib"])
    mlgate = venv / "bin" / "mlgate"
    # As pip writes console scripts: workers spawned by --workers import it again, unguarded.
    script = "from service.cli import main\n\nif __name__ == '__main__':\n    main()\n"
    mlgate.write_text(f"#!{venv / 'bin' / 'python'}\n{script}")
    mlgate.chmod(0o755)
    return venv / "bin"


@dataclass
class Container:
    """A temporary root standing in for the image's file system, and how to run in it."""

    image: Image
    venv_bin: Path
    workdir: Path
    volume: Path

    def path(self, value: str) -> str:
        """`value` (an ENV value, a command) with the image's paths mapped into this root."""
        mapping = {
            IMAGE_VENV_BIN: str(self.venv_bin),
            self.image.workdir: str(self.workdir),
            self.image.volumes[0]: str(self.volume),
        }
        for image_path, here in mapping.items():
            value = value.replace(image_path, here)
        return value

    def env(self, **overrides: str) -> dict[str, str]:
        env = {name: self.path(value) for name, value in self.image.env.items()}
        # The tree under test, which the image installs into its venv; the home Docker gives
        # 65534 (nobody), where nothing may be written.
        env |= {"PYTHONPATH": str(REPO_ROOT), "HOME": "/nonexistent"}
        # The copied interpreter's libpython, which its run path looks for at the original.
        env["LD_LIBRARY_PATH"] = str(self.venv_bin.parent.parent / "python" / "lib")
        env |= {"MLGATE_HOST": "127.0.0.1", "MLGATE_DRAIN_DELAY_S": "0"}
        return env | overrides

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        """`argv` as the image's user, in its working directory."""
        user: list[str] = []
        if os.geteuid() == 0:
            uid, _, gid = self.image.user.partition(":")
            user = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups"]
        command = [self.path(arg) for arg in argv]
        # PATH is the image's: the entry command is found there, as Docker finds it.
        command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
        return subprocess.Popen(
            [*user, *command],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def read_only(top: Path) -> None:
    for path in (top, *top.rglob("*")):
        path.chmod(0o555 if path.is_dir() else 0o444)


def open_to_all(prefix: str) -> Path:
    # Not pytest's tmp_path: its parents are closed to other users.
    top = Path(tempfile.mkdtemp(prefix=prefix))
    top.chmod(0o755)
    return top


@pytest.fixture(scope="module")
def venv_bin() -> Iterator[Path]:
    top = open_to_all("mlgate-venv-")
    try:
        yield venv_for_everyone(top)
    finally:
        shutil.rmtree(top)


@pytest.fixture
def container(venv_bin: Path) -> Iterator[Container]:
    top = open_to_all("mlgate-image-")
    spec = image()
    workdir = top / "app"
    shutil.copytree(MODELS_DIR, workdir / "models", ignore=shutil.ignore_patterns("*.py"))
    read_only(workdir)
    volume = top / "volume"
    volume.mkdir()
    if os.geteuid() == 0:
        uid, _, gid = spec.user.partition(":")
        os.chown(volume, int(uid), int(gid or uid))
    try:
        yield Container(spec, venv_bin, workdir, volume)
    finally:
        for path in (top, *top.rglob("*")):
            path.chmod(0o755)
        shutil.rmtree(top)


def wait_ready(proc: subprocess.Popen[str], port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{proc.communicate()[0]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    pytest.fail(f"not ready in {timeout_s}s:\n{proc.communicate()[0]}")


def test_the_image_sets_up_a_non_root_user_absolute_paths_and_both_ports() -> None:
    spec = image()
    assert spec.user.partition(":")[0] not in ("", "0", "root")
    assert spec.command == ["mlgate", "serve"]
    for name in ("MLGATE_MODELS", "MLGATE_AUDIT_SPILL_DIR"):
        assert spec.env[name].startswith("/"), name
    assert spec.env["MLGATE_AUDIT"].startswith("file:///" + spec.volumes[0].strip("/"))
    assert spec.env["MLGATE_AUDIT_SPILL_DIR"].startswith(spec.volumes[0])
    ports = [int(spec.env["MLGATE_PORT"]), int(spec.env["MLGATE_GRPC_PORT"])]
    assert sorted(spec.exposed) == sorted(ports)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_entry_command_serves_http_and_grpc_as_nobody_from_a_read_only_directory(
    container: Container, workers: str
) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = container.env(
        MLGATE_PORT=str(http_port), MLGATE_GRPC_PORT=str(grpc_port), MLGATE_WORKERS=workers
    )
    proc = container.run(container.image.command, env)
    try:
        wait_ready(proc, http_port)
        r = httpx.post(
            f"http://127.0.0.1:{http_port}/v1/models/fraud_mlp:predict",
            json={"entities": ["u1"]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert client.is_server_ready()
        finally:
            client.close()
        check = container.run(container.image.healthcheck, env)
        assert check.wait(timeout=30) == 0, check.communicate()[0]
    finally:
        # Two workers draining on a busy 2-core box can take more than stop's usual 10 s.
        stop(proc, timeout_s=30)
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    # The predict's record, flushed on SIGTERM into the volume.
    assert (container.volume / "audit" / "audit.log").stat().st_size > 0


def test_the_entry_command_exits_non_zero_when_its_volume_is_not_writable_with_two_workers(
    container: Container,
) -> None:
    # Two workers that both failed once made the supervisor exit 0 (a single process is
    # tests/integration/test_supervision.py's). The volume is left to root and closed, as one
    # mounted without the image's ownership would be.
    if os.geteuid() == 0:
        os.chown(container.volume, 0, 0)
    container.volume.chmod(0o555)
    env = container.env(
        MLGATE_PORT=str(free_port()), MLGATE_GRPC_PORT=str(free_port()), MLGATE_WORKERS="2"
    )
    proc = container.run(container.image.command, env)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 3, output
    assert "cannot start: PermissionError" in output, output
    assert "Traceback" not in output, output


def test_the_entry_command_exits_non_zero_without_its_model_repository(
    container: Container,
) -> None:
    env = container.env(
        MLGATE_PORT=str(free_port()),
        MLGATE_GRPC_PORT=str(free_port()),
        MLGATE_WORKERS="2",
        MLGATE_MODELS=str(container.workdir / "no-models"),
    )
    proc = container.run(container.image.command, env)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, output
    assert "no-models" in output, output
