"""Drift end to end: a live gateway serving the demo model with its reference profile, fed the
demo population with one feature shifted by half its standard deviation."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.monitor.profile import REFERENCE_FILE, read_profile
from tests.conftest import MODELS_DIR, GatewayProcess, start_gateway
from tests.integration.drift_support import (
    ENTITIES,
    MONITORING,
    SHIFTED,
    drift_gauges,
    monitored_repo,
    population,
    shift_until_alarmed,
)

TOKEN = "drift-tests-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return monitored_repo(tmp_path_factory.mktemp("drift"))


@pytest.fixture(scope="module")
def gateway(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        tmp_path_factory.mktemp("drift-gw"),
        "--models",
        str(repo),
        "--demo-entities",
        str(ENTITIES),
        "--watch-models",
        "0.2",
        env={"MLGATE_ADMIN_TOKEN": TOKEN},
    )
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def alarmed(gateway: GatewayProcess) -> dict[tuple[str, ...], float]:
    return shift_until_alarmed(gateway)


def test_shifted_feature_alone_raises_its_input_alarm(
    alarmed: dict[tuple[str, ...], float],
) -> None:
    inputs = {
        labels[2]: v
        for labels, v in alarmed.items()
        if labels[:2] == ("fraud_mlp", "2") and labels[3] == "input"
    }
    assert len(inputs) == 32
    assert {name for name, v in inputs.items() if v == 1} == {SHIFTED}


def test_gauges_name_the_window_and_the_reference(
    gateway: GatewayProcess, alarmed: dict[tuple[str, ...], float]
) -> None:
    rows = drift_gauges(gateway, "mlgate_drift_window_rows")
    assert rows[("fraud_mlp", "2")] >= MONITORING["min_rows"]
    info = drift_gauges(gateway, "mlgate_drift_reference_info")
    hash_2 = read_profile(MODELS_DIR / "fraud_mlp" / "2" / REFERENCE_FILE).hash
    assert info[("fraud_mlp", "2", hash_2)] == 1
    scores = drift_gauges(gateway, "mlgate_drift_score")
    thresholds = drift_gauges(gateway, "mlgate_drift_threshold")
    key = ("fraud_mlp", "2", SHIFTED, "input")
    assert scores[key] > thresholds[key] > 0


def test_admin_drift_route_lists_the_shifted_feature_first(
    gateway: GatewayProcess, alarmed: dict[tuple[str, ...], float]
) -> None:
    reply = httpx.get(f"{gateway.url}/admin/models/fraud_mlp/drift", headers=AUTH)
    assert reply.status_code == 200, reply.text
    versions = {v["version"]: v for v in reply.json()["versions"]}
    top = versions["2"]["features"][0]
    assert (top["feature"], top["kind"], top["alarm"]) == (SHIFTED, "input", True)
    assert versions["2"]["window"]["rows"] >= MONITORING["min_rows"]
    # Version 1 has a profile but no traffic: monitored, never judged.
    assert versions["1"]["monitored"] is True and versions["1"]["window"] is None


def test_admin_drift_route_needs_the_admin_token(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/admin/models/fraud_mlp/drift").status_code == 401
    reply = httpx.get(f"{gateway.url}/admin/models/nope/drift", headers=AUTH)
    assert reply.status_code == 404 and "error" in reply.json()


def test_report_over_the_audit_log_names_the_drifting_feature(
    gateway: GatewayProcess, repo: Path, alarmed: dict[tuple[str, ...], float], tmp_path: Path
) -> None:
    audit = f"file://{gateway.log.parent}/audit-{gateway.port}.log"
    out = tmp_path / "report.html"
    said = monitor("report", repo, "--audit", audit, "--out", str(out))
    assert SHIFTED in said
    page = out.read_text()
    assert f"<h3>{SHIFTED} (input)</h3>" in page and "<svg" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_reference_from_the_audit_log_profiles_what_the_version_answered(
    gateway: GatewayProcess, repo: Path, alarmed: dict[tuple[str, ...], float], tmp_path: Path
) -> None:
    audit = f"file://{gateway.log.parent}/audit-{gateway.port}.log"
    copy = tmp_path / "models"
    shutil.copytree(repo, copy)
    said = monitor("reference", copy, "--audit", audit, "--since", "0")
    profile = read_profile(copy / "fraud_mlp" / "2" / REFERENCE_FILE)
    assert f"33 columns over {profile.rows} rows, hash {profile.hash}" in said
    assert profile.rows >= MONITORING["min_rows"]
    # Every row of the log was shifted: its reference puts the shifted feature's median where
    # the demo reference has its upper half.
    demo = read_profile(MODELS_DIR / "fraud_mlp" / "2" / REFERENCE_FILE)
    column = [c.column.name for c in profile.columns].index(SHIFTED)
    shifted, unshifted = (np.asarray(p.columns[column].edges)[10] for p in (profile, demo))
    assert shifted > unshifted


def shifted_population() -> dict[str, np.ndarray]:
    """The demo population with SHIFTED moved by half its standard deviation, by column name."""
    names, rows = population()
    column = rows[:, names.index(SHIFTED)]
    rows[:, names.index(SHIFTED)] = column + 0.5 * column.std()
    return {n: rows[:, i] for i, n in enumerate(names)}


def build_reference(repo: Path, data: Path) -> str:
    """`mlgate monitor reference` of fraud_mlp version 2 from `data`; the new profile's hash."""
    monitor("reference", repo, "--data", str(data))
    return read_profile(repo / "fraud_mlp" / "2" / REFERENCE_FILE).hash


def current_references(gateway: GatewayProcess, until: str) -> set[str]:
    """Version 2's reference hashes with an info gauge of 1, once `until` is one (or in 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        info = drift_gauges(gateway, "mlgate_drift_reference_info")
        found = {h for (m, v, h), value in info.items() if (m, v) == ("fraud_mlp", "2") and value}
        if until in found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_reload_takes_up_a_new_reference_profile(
    gateway: GatewayProcess, repo: Path, alarmed: dict[tuple[str, ...], float], tmp_path: Path
) -> None:
    """The shifted traffic becomes version 2's reference, built with the CLI from Parquet; the
    repository watch reloads the version."""
    data = tmp_path / "shifted.parquet"
    pq.write_table(pa.table(shifted_population()), data)
    new = build_reference(repo, data)
    assert current_references(gateway, new) == {new}
    route = httpx.get(f"{gateway.url}/admin/models/fraud_mlp/drift", headers=AUTH).json()
    assert {v["version"]: v for v in route["versions"]}["2"]["reference"]["hash"] == new


def monitor(command: str, repo: Path, *args: str) -> str:
    """`mlgate monitor <command>` for fraud_mlp version 2 of `repo`; what it printed."""
    mlgate = Path(sys.executable).parent / "mlgate"
    version = ["--model", "fraud_mlp", "--version", "2", "--models", str(repo)]
    done = subprocess.run(
        [str(mlgate), "monitor", command, *version, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_monitoring_off_leaves_profiled_versions_unmonitored(repo: Path, tmp_path: Path) -> None:
    gw = start_gateway(
        tmp_path,
        "--models",
        str(repo),
        "--demo-entities",
        "100",
        "--monitoring",
        "off",
        env={"MLGATE_ADMIN_TOKEN": TOKEN},
    )
    try:
        reply = httpx.post(f"{gw.url}/v1/models/fraud_mlp:predict", json={"entities": ["u1"]})
        assert reply.status_code == 200
        assert drift_gauges(gw, "mlgate_drift_reference_info") == {}
        route = httpx.get(f"{gw.url}/admin/models/fraud_mlp/drift", headers=AUTH).json()
        assert [v["monitored"] for v in route["versions"]] == [False, False]
    finally:
        gw.stop()
