"""A bad setting stops the real `mlgate serve` before any process starts: exit status 2 and one
line that names the flag (or file) and the field, never a traceback. `mlgate models check`
refuses what `serve` refuses in the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtests.processes import free_port
from tests.conftest import MODELS_DIR, REPO_ROOT

MLGATE = str(Path(sys.executable).parent / "mlgate")


def mlgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLGATE_")}
    return subprocess.run(
        [MLGATE, *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def one_view_repository(root: Path) -> str:
    """fraud_mlp alone, with a views file that lacks one of the two views it reads."""
    shutil.copytree(MODELS_DIR / "fraud_mlp", root / "fraud_mlp")
    views = yaml.safe_load((MODELS_DIR / "feature_views.yaml").read_text())
    views["views"] = [v for v in views["views"] if v["name"] == "txn_stats"]
    (root / "feature_views.yaml").write_text(yaml.safe_dump(views))
    return str(root)


def no_views_file_repository(root: Path) -> str:
    """fraud_mlp alone, its feature views file missing."""
    shutil.copytree(MODELS_DIR / "fraud_mlp", root / "fraud_mlp")
    return str(root)


NESTED_ROUTING = "routing:\n  fraud_mlp:\n    canary: {version: '1', weight: 0.1}\n"

# (id, flags given a scratch directory, environment, what the one line must hold)
CASES = [
    ("audit-scheme", lambda d: ["--audit", "s3://bucket/audit"], {}, ["--audit", "s3://bucket"]),
    (
        "audit-query",
        lambda d: ["--audit", "redis://127.0.0.1:6379/0?shards=x"],
        {},
        ["--audit", "shards: not a number: 'x'"],
    ),
    (
        "routing-nested",
        lambda d: ["--routing", write(d / "routing.yaml", NESTED_ROUTING)],
        {},
        ["--routing", "routing.yaml: routing.fraud_mlp: unknown field", "no top-level"],
    ),
    (
        "tokens-malformed",
        lambda d: ["--admin-token-file", write(d / "tokens", "ops:secret:everything\n")],
        {},
        ["--admin-token-file", "tokens:1: scopes must be"],
    ),
    (
        "tokens-missing",
        lambda d: ["--admin-token-file", str(d / "absent")],
        {},
        ["--admin-token-file", "No such file or directory", "absent"],
    ),
    (
        "views-missing",
        lambda d: ["--views", str(d / "views.yaml")],
        {},
        ["--views: ", "views.yaml: no such file"],
    ),
    ("port-range", lambda d: ["--port", "70000"], {}, ["--port (MLGATE_PORT)", "65535"]),
    (
        "feature-store-scheme",
        lambda d: ["--feature-store", "s3://features"],
        {},
        ["--feature-store (MLGATE_FEATURE_STORE)", "s3://features"],
    ),
    ("workers-env", lambda d: [], {"MLGATE_WORKERS": "0"}, ["MLGATE_WORKERS", "from 1 to 64"]),
    (
        "missing-view",
        lambda d: ["--models", one_view_repository(d)],
        {},
        ["fraud_mlp/config.yaml: inputs[0].features.views[1]", "'user_profile'"],
    ),
]


@pytest.mark.parametrize(
    ("flags", "env", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_setting_stops_serve_with_one_line_and_status_2(
    tmp_path: Path, flags: object, env: dict[str, str], named: list[str]
) -> None:
    assert callable(flags)
    done = mlgate("serve", "--port", str(free_port()), "--audit", "none", *flags(tmp_path), env=env)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    for part in named:
        assert part in lines[0]


def test_models_check_refuses_the_repository_serve_refuses(tmp_path: Path) -> None:
    repository = no_views_file_repository(tmp_path)
    checked = mlgate("models", "check", repository)
    served = mlgate("serve", "--port", str(free_port()), "--audit", "none", "--models", repository)
    assert (checked.returncode, served.returncode) == (1, 2)
    assert checked.stdout == ""
    assert checked.stderr == served.stderr
    assert "inputs[0].features.views[0]: unknown feature view 'txn_stats'" in checked.stderr
    named = mlgate("models", "check", repository, "--views", str(tmp_path / "views.yaml"))
    assert (named.returncode, named.stderr) == (
        1,
        f"--views: {tmp_path / 'views.yaml'}: no such file\n",
    )
