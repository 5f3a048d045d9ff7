"""Output contracts on the request path: flag, reject, clamp and fallback, end to end."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from service.audit import AuditRecord
from service.audit.reader import tail
from tests.conftest import MODELS_DIR, GatewayProcess, start_gateway

ENTITIES = 200


def demo_features(n: int) -> np.ndarray:
    """The features the gateway's memory store is seeded with, for users u0..u{n-1}."""
    views = load_views(MODELS_DIR / "feature_views.yaml")
    parts = [synthetic_rows(views[name], n, seed=0)[1] for name in ("txn_stats", "user_profile")]
    return np.concatenate(parts, axis=1).astype(np.float32)


def scores(version: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(MODELS_DIR / "fraud_mlp" / version / "model.onnx"))
    out: np.ndarray = session.run(None, {"features": x})[0].reshape(-1)
    return out


@pytest.fixture(scope="module")
def cut() -> dict[str, Any]:
    """A bound that version 2 breaks and version 1 keeps for one user, and keeps for another."""
    x = demo_features(ENTITIES)
    v1, v2 = scores("1", x), scores("2", x)
    gap = v2 - v1
    broken = int(np.argmax(gap))  # v2 far above v1 here
    bound = float((v1[broken] + v2[broken]) / 2)
    kept = int(np.argmin(v2))
    assert v2[kept] < bound < v2[broken] and v1[broken] < bound
    return {"bound": bound, "broken": f"u{broken}", "kept": f"u{kept}", "v1": v1, "v2": v2}


@pytest.fixture(scope="module")
def gateway(
    cut: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("guard")
    root = tmp / "models"
    root.mkdir()
    shutil.copy(MODELS_DIR / "feature_views.yaml", root)
    policies: dict[str, dict[str, Any]] = {
        "flag": {"policy": "flag"},
        "reject": {"policy": "reject"},
        "clamp": {"policy": "clamp"},
        "fallback": {"policy": "fallback", "fallback": {"version": "1"}},
        "fallback_default": {"policy": "fallback", "fallback": {"default": {"probability": 0.0}}},
    }
    for policy, guard in policies.items():
        name = f"fraud_{policy}"
        shutil.copytree(MODELS_DIR / "fraud_mlp", root / name)
        path = root / name / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config.update(name=name, guard=guard)
        config.pop("version_backends", None)
        config["outputs"][0]["valid_range"] = {"min": 0.0, "max": cut["bound"]}
        path.write_text(yaml.safe_dump(config))
    gw = start_gateway(tmp, "--models", str(root), "--demo-entities", str(ENTITIES))
    yield gw
    gw.stop()


def predict(gw: GatewayProcess, model: str, *entities: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/models/{model}/versions/2:predict",
        json={"entities": list(entities)},
        timeout=10,
    )


def test_flag_serves_the_prediction_and_marks_the_row(
    gateway: GatewayProcess, cut: dict[str, Any]
) -> None:
    r = predict(gateway, "fraud_flag", cut["kept"], cut["broken"])
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["flags"] == [[], ["probability:above_max"]]
    broken = int(cut["broken"][1:])
    assert doc["predictions"][1] == pytest.approx(float(cut["v2"][broken]), abs=1e-6)


def test_flags_reach_v2_responses_and_metrics(gateway: GatewayProcess, cut: dict[str, Any]) -> None:
    body = {
        "inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [cut["broken"]]}]
    }
    r = httpx.post(f"{gateway.url}/v2/models/fraud_flag/versions/2/infer", json=body, timeout=10)
    assert r.json()["parameters"] == {"flags": "probability:above_max"}
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert (
        'mlgate_guard_events_total{action="flagged",model="fraud_flag",'
        'reason="probability:above_max",version="2"}'
    ) in text
    assert 'mlgate_guard_flag_rate{model="fraud_flag",version="2"}' in text


def test_v1_instances_meet_the_same_contracts(gateway: GatewayProcess, cut: dict[str, Any]) -> None:
    x = demo_features(ENTITIES)
    instances = [x[int(cut[row][1:])].tolist() for row in ("kept", "broken")]
    url = f"{gateway.url}/v1/models/fraud_{{}}/versions/2:predict"
    r = httpx.post(url.format("flag"), json={"instances": instances}, timeout=10)
    assert r.json()["flags"] == [[], ["probability:above_max"]]
    r = httpx.post(url.format("reject"), json={"instances": instances}, timeout=10)
    assert r.status_code == 422 and "probability" in r.json()["error"]


def test_reject_answers_422_with_the_reason(gateway: GatewayProcess, cut: dict[str, Any]) -> None:
    r = predict(gateway, "fraud_reject", cut["kept"], cut["broken"])
    assert r.status_code == 422
    assert "above" in r.json()["error"] and "probability" in r.json()["error"]
    assert predict(gateway, "fraud_reject", cut["kept"]).status_code == 200


def test_clamp_puts_the_prediction_in_range(gateway: GatewayProcess, cut: dict[str, Any]) -> None:
    doc = predict(gateway, "fraud_clamp", cut["broken"]).json()
    assert doc["predictions"][0] == pytest.approx(cut["bound"], abs=1e-6)
    assert doc["flags"] == [["probability:above_max"]]


def test_fallback_serves_the_other_versions_answer_for_broken_rows(
    gateway: GatewayProcess, cut: dict[str, Any]
) -> None:
    doc = predict(gateway, "fraud_fallback", cut["kept"], cut["broken"]).json()
    kept, broken = int(cut["kept"][1:]), int(cut["broken"][1:])
    assert doc["predictions"][0] == pytest.approx(float(cut["v2"][kept]), abs=1e-6)
    assert doc["predictions"][1] == pytest.approx(float(cut["v1"][broken]), abs=1e-6)
    assert doc["flags"][1] == ["probability:above_max"]


def test_fallback_to_a_default(gateway: GatewayProcess, cut: dict[str, Any]) -> None:
    doc = predict(gateway, "fraud_fallback_default", cut["broken"]).json()
    assert doc["predictions"] == [0.0]


def test_audit_records_carry_the_flags(gateway: GatewayProcess, cut: dict[str, Any]) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/models/fraud_reject/versions/2:predict",
        json={"entities": [cut["broken"]], "request_id": "refused-1"},
        timeout=10,
    )
    assert r.status_code == 422  # refused, and recorded all the same

    async def read() -> AuditRecord | None:
        url = f"file://{gateway.log.parent}/audit-{gateway.port}.log"
        for _ in range(50):
            async for record in tail(url, model="fraud_reject", follow=False):
                if record.request_id == "refused-1":
                    return record
            await asyncio.sleep(0.1)
        return None

    record = asyncio.run(read())
    assert record is not None and record.flags == ["probability:above_max"]
