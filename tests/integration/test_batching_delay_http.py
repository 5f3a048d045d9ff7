"""`mlgate serve --batching-delay-us`: every batcher waits that fixed delay, adaptive off."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx

from tests.conftest import MODELS_DIR, start_gateway

DELAY_US = 100_000
RELEASE_LINE = re.compile(r"^mlgate_batch_releases_total\{([^}]*)\} (\S+)$", re.MULTILINE)


def fraud_only(tmp: Path) -> Path:
    """fraud_mlp as committed (adaptive batching) and the feature views, nothing else."""
    root = tmp / "models"
    shutil.copytree(MODELS_DIR / "fraud_mlp", root / "fraud_mlp")
    shutil.copy(MODELS_DIR / "feature_views.yaml", root / "feature_views.yaml")
    return root


def releases(url: str, reason: str) -> float:
    """fraud_mlp version 2's batches released for `reason` so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = {"model": "fraud_mlp", "version": "2", "reason": reason}
    total = 0.0
    for labels, value in RELEASE_LINE.findall(text):
        if dict(re.findall(r'(\w+)="([^"]*)"', labels)) == wanted:
            total += float(value)
    return total


def test_a_lone_request_waits_out_the_fixed_delay_instead_of_leaving_at_once(
    tmp_path: Path,
) -> None:
    # Adaptive batching releases a lone request at once ("idle"); with a fixed delay it waits
    # for company until the delay runs out ("delay"), from the flag through the worker's
    # settings to the batcher.
    root = fraud_only(tmp_path)
    gw = start_gateway(
        tmp_path, "--models", str(root), "--demo-entities", "10",
        "--batching-delay-us", str(DELAY_US),
    )  # fmt: skip
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            for entity in ("u1", "u2"):
                r = client.post("/v1/models/fraud_mlp:predict", json={"entities": [entity]})
                assert r.status_code == 200, r.text
        assert releases(gw.url, "delay") == 2
        assert releases(gw.url, "idle") == 0
    finally:
        gw.stop()
