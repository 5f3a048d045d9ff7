"""The dashboard and the alert rules against a live gateway: every metric they name is exported,
and a real Prometheus scraping the gateway takes an alert to firing (seen through its own HTTP
API, /api/v1/alerts)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtests.processes import HOST, free_port, stop, wait_for_port
from tests.conftest import GatewayProcess, start_gateway
from tests.integration.drift_support import ENTITIES, SHIFTED, monitored_repo, shift_until_alarmed

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("monitoring")
    repo = monitored_repo(tmp)
    gw = start_gateway(tmp, "--models", str(repo), "--demo-entities", str(ENTITIES))
    yield gw
    gw.stop()


def used_metrics() -> set[str]:
    """Every metric name in the dashboard's queries and the rules' expressions."""
    dashboard = (MONITORING / "mlgate-dashboard.json").read_text()
    rules = yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())
    exprs = [dashboard] + [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {name for expr in exprs for name in re.findall(r"\bmlgate_[a-z0-9_]+", expr)}


def exported_metrics(gw: GatewayProcess) -> set[str]:
    """The metric families the gateway's /metrics declares, with their series' names."""
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    names = set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    names |= set(re.findall(r"^(mlgate_[a-z0-9_]+)", text, re.MULTILINE))
    return names


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SERIES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_every_metric_the_dashboard_and_rules_use_is_exported(gateway: GatewayProcess) -> None:
    exported = exported_metrics(gateway)

    used = used_metrics()
    missing = {n for n in used if n not in exported and base_name(n) not in exported}

    assert not missing, "not exported by the gateway"


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen[bytes]

    def alerts(self) -> list[dict[str, Any]]:
        reply = httpx.get(f"http://{HOST}:{self.port}/api/v1/alerts", timeout=5).json()
        alerts: list[dict[str, Any]] = reply["data"]["alerts"]
        return alerts

    def firing(self, name: str) -> list[dict[str, str]]:
        """The labels of every firing alert of that name."""
        return [
            a["labels"]
            for a in self.alerts()
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]


def shortened_rules(to: Path) -> Path:
    """alerts.rules.yml with every range, offset and `for` cut to seconds, so that a test sees
    an alert fire in seconds; the expressions are otherwise the committed ones."""
    rules = yaml.safe_load((MONITORING / "alerts.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", "[15s]", rule["expr"])
            rule["expr"] = re.sub(r"offset \d+[smhd]", "offset 15s", rule["expr"])
            if "for" in rule:
                rule["for"] = "1s"
    path = to / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture
def prometheus(tmp_path: Path, gateway: GatewayProcess) -> Iterator[Prometheus]:
    """A real Prometheus scraping the gateway every second and evaluating the rules every
    second; run under `timeout`, so it stops by itself even if this test process is killed."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not on PATH: run `make test`, which installs it")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(shortened_rules(tmp_path))],
        "scrape_configs": [
            {"job_name": "mlgate", "static_configs": [{"targets": [f"{HOST}:{gateway.port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "timeout",
                "300",
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={HOST}:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc, timeout_s=30)
        yield Prometheus(port, proc)
    finally:
        stop(proc)


def until(check: Any, traffic: Any, timeout_s: float) -> Any:
    """Keep `traffic` flowing until `check` holds (its last value either way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        traffic()
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_burst_of_400s_takes_the_high_error_rate_alert_to_firing(
    gateway: GatewayProcess, prometheus: Prometheus
) -> None:
    wrong_shape = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3]}]}
    wrong_shape["inputs"][0]["data"] = [0.0, 1.0, 2.0]

    def burst() -> None:
        for _ in range(20):
            answer = httpx.post(f"{gateway.url}/v2/models/fraud_mlp/infer", json=wrong_shape)
            assert answer.status_code == 400
        # Requests of the other model stay fine: its alert must not fire.
        for entity in range(5):
            body = {"entities": [f"u{entity}"]}
            assert httpx.post(f"{gateway.url}/v1/models/heavy_mlp:predict", json=body).is_success

    firing = until(lambda: prometheus.firing("MlgateHighErrorRate"), burst, timeout_s=60)

    assert [labels["model"] for labels in firing] == ["fraud_mlp"]
    assert firing[0]["severity"] == "page"


def test_a_half_sigma_shift_on_one_feature_fires_feature_drift_for_that_feature_only(
    gateway: GatewayProcess, prometheus: Prometheus
) -> None:
    # The demo population, which the reference profiles are built from, with one feature moved
    # up by half its standard deviation (tests/integration/drift_support.py).
    firing = until(
        lambda: prometheus.firing("MlgateFeatureDrift"),
        lambda: shift_until_alarmed(gateway, timeout_s=2),
        timeout_s=120,
    )

    assert {(a["model"], a["feature"]) for a in firing} == {("fraud_mlp", SHIFTED)}
