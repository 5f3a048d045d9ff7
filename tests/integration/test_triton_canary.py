"""One model on two backends, canaried against each other: fraud_mlp version 2 in-process
(onnxruntime) is the stable version, version 3, the same model.onnx on a real tritonserver, the
canary, and also the shadow of every request the stable version answers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.routing.router import VERSION_HEADER, bucket
from tests.conftest import MODELS_DIR, GatewayProcess, start_gateway
from tests.integration.routing_support import TOKEN, admin, audit_records, predict
from tests.integration.test_triton_backend import mixed, write_repository
from tests.triton_support import TritonServer

ENTITIES = [f"u{i}" for i in range(400)]
WEIGHT = 0.3
# The same model.onnx on the same CPU: any difference is float noise, if that.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def gateway(
    triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gateway")
    routing = {
        "stable": "2",
        "canary": {"version": "3", "weight": WEIGHT},
        "shadow": [{"version": "3"}],
        "agreement_tolerance": TOLERANCE,
    }
    write_repository(tmp / "models", **mixed(triton.grpc), routing=routing)
    gw = start_gateway(
        tmp,
        "--models",
        str(tmp / "models"),
        "--views",
        str(MODELS_DIR / "feature_views.yaml"),
        "--demo-entities",
        str(len(ENTITIES)),
        env={"MLGATE_ADMIN_TOKEN": TOKEN},
    )
    yield gw
    gw.stop()


def on_canary(entity: str) -> bool:
    return bucket("fraud_mlp", entity) < WEIGHT


def answer(gw: GatewayProcess, *entities: str, version: str | None = None) -> httpx.Response:
    headers = {VERSION_HEADER: version} if version else {}
    r = predict(gw, "fraud_mlp", *entities, headers=headers)
    assert r.status_code == 200, r.text
    return r


def test_canaried_entities_stick_to_triton_which_answers_as_onnxruntime(
    gateway: GatewayProcess,
) -> None:
    seen = set()
    for entity in ENTITIES[:60]:
        expected = "3" if on_canary(entity) else "2"
        first, again = answer(gateway, entity), answer(gateway, entity)
        for r in (first, again):
            assert r.json()["model_version"] == r.headers[VERSION_HEADER] == expected
        assert again.json()["predictions"] == first.json()["predictions"]
        in_process = answer(gateway, entity, version="2").json()["predictions"]
        np.testing.assert_allclose(first.json()["predictions"], in_process, rtol=0, atol=TOLERANCE)
        seen.add(expected)
    assert seen == {"2", "3"}


def test_a_batch_keyed_to_the_canary_is_answered_whole_by_triton(gateway: GatewayProcess) -> None:
    lead = next(e for e in ENTITIES if on_canary(e))
    batch = [lead, *(e for e in ENTITIES[100:] if not on_canary(e))][:8]
    r = answer(gateway, *batch)
    assert r.headers[VERSION_HEADER] == "3"
    in_process = answer(gateway, *batch, version="2").json()["predictions"]
    assert len(r.json()["predictions"]) == len(batch)
    np.testing.assert_allclose(r.json()["predictions"], in_process, rtol=0, atol=TOLERANCE)


def test_audit_records_name_each_route_and_pair_the_shadow(gateway: GatewayProcess) -> None:
    canaried = next(e for e in ENTITIES[200:] if on_canary(e))
    stable = next(e for e in ENTITIES[200:] if not on_canary(e))
    ids = {
        "canary": answer(gateway, canaried).json()["request_id"],
        "primary": answer(gateway, stable).json()["request_id"],
    }
    # The shadow copy runs after the primary answer, on its own.
    records = audit_records(
        gateway, "fraud_mlp", lambda rs: any(r.paired_with == ids["primary"] for r in rs)
    )
    routes = {r.request_id: (r.route, r.version) for r in records}
    assert routes[ids["canary"]] == ("canary", "3")
    assert routes[ids["primary"]] == ("primary", "2")
    shadows = [r for r in records if r.route == "shadow" and r.paired_with == ids["primary"]]
    assert [r.version for r in shadows] == ["3"]
    # Only the stable version's answers are mirrored: the canary's come from version 3 itself.
    assert not any(r.paired_with == ids["canary"] for r in records)


def test_the_rollout_window_sees_the_canary_and_its_shadow_agreeing(
    gateway: GatewayProcess,
) -> None:
    for entity in ENTITIES[300:340]:
        answer(gateway, entity)
    # Each process ships its counts to the policy store a few times a second.
    deadline = time.monotonic() + 5
    while True:
        routes = admin(gateway, "GET", "models/fraud_mlp").json()["window"]["routes"]
        if "shadow/3" in routes or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    canary = [figures for slot, figures in routes.items() if slot.startswith("canary/3/")]
    assert len(canary) == 1 and canary[0]["requests"] > 0 and canary[0]["error_rate"] == 0
    assert routes["primary/2"]["requests"] > 0
    shadow = routes["shadow/3"]
    assert shadow["rows_compared"] > 0 and shadow["agreement_rate"] == 1.0
    assert shadow["mean_abs_diff"] <= TOLERANCE


def test_metadata_names_what_runs_each_version(gateway: GatewayProcess) -> None:
    def platform(version: str) -> str:
        url = f"{gateway.url}/v2/models/fraud_mlp/versions/{version}"
        return str(httpx.get(url, timeout=10).json()["platform"])

    assert platform("3") == "triton"
    assert platform("2") == "onnxruntime_onnx"
