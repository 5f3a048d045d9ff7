"""A live gateway's drift: the demo population with one feature shifted, and its gauges."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from models.build import FEATURE_VIEWS
from tests.conftest import MODELS_DIR, GatewayProcess

# The whole demo population, so that no window sees an entity twice.
ENTITIES = 20_000
SHIFTED = "amount_mean_24h"
# Windows of 4 s judged every 2 s: a judged window holds a few thousand rows of this traffic.
MONITORING = {"window_s": 4, "sub_windows": 2, "min_rows": 200}


def population() -> tuple[list[str], np.ndarray]:
    """The demo entities' feature names and rows, as the gateway's memory store seeds them."""
    views = load_views(MODELS_DIR / "feature_views.yaml")
    names = [f for v in FEATURE_VIEWS for f in views[v].feature_names]
    rows = np.concatenate([synthetic_rows(views[v], ENTITIES, seed=0)[1] for v in FEATURE_VIEWS], 1)
    return names, rows


def monitored_repo(tmp: Path) -> Path:
    """The demo repository, fraud_mlp (with its reference profiles) judged on MONITORING's
    windows; heavy_mlp has no profile and is not monitored."""
    root = tmp / "models"
    shutil.copytree(MODELS_DIR, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config_path = root / "fraud_mlp" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["monitoring"] = MONITORING
    config_path.write_text(yaml.safe_dump(config))
    return root


def drift_gauges(gw: GatewayProcess, name: str) -> dict[tuple[str, ...], float]:
    text = httpx.get(f"{gw.url}/metrics").text
    order = ("model", "version", "feature", "hash", "kind")
    return {
        tuple(s.labels[k] for k in order if k in s.labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def shift_until_alarmed(
    gw: GatewayProcess, timeout_s: float = 60, part: int = 0, parts: int = 1
) -> dict[tuple[str, ...], float]:
    """Predict the demo entities in order, 50 a request, with SHIFTED moved by half its standard
    deviation, until its alarm is up (or `timeout_s` passed); then the alarm gauges. Entities
    are never repeated within a window: repeated rows are not a sample of the population.
    `part` of `parts`: every parts-th entity from the part-th, for clients sending at once."""
    names, rows = population()
    column = names.index(SHIFTED)
    shifted = (rows[:, column] + 0.5 * rows[:, column].std())[part::parts]
    ids = [f"u{i}" for i in range(ENTITIES)][part::parts]
    deadline = time.monotonic() + timeout_s
    start = 0
    # A connection per request: under --workers, requests then reach every worker.
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while time.monotonic() < deadline:
            chunk = slice(start, start + 50)
            body = {"entities": ids[chunk], "features": {SHIFTED: shifted[chunk].tolist()}}
            reply = client.post(f"{gw.url}/v1/models/fraud_mlp:predict", json=body)
            assert reply.status_code == 200, reply.text
            start = (start + 50) % len(ids)
            if start % 1000 == 0:
                alarms = drift_gauges(gw, "mlgate_drift_alarm")
                if alarms.get(("fraud_mlp", "2", SHIFTED, "input")) == 1:
                    return alarms
    return drift_gauges(gw, "mlgate_drift_alarm")
