"""Replicas behind one Service hold one routing policy: two `mlgate serve` processes on their own
ports, sharing it through a redis-server (with no --policy-store: the feature store's Redis is
the default) and through a Redis Cluster. A change made through one is served by the other
within a second; a rollback decided on the traffic of both holds on both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.routing.router import VERSION_HEADER, bucket
from tests.conftest import GatewayProcess, free_port, start_gateway, start_redis
from tests.integration.routing_support import TOKEN, add_model, admin, nan_model, post, predict

MODEL = "fleet"
# Version 3 answers NaN: every answer of it is flagged, a breach once judged.
ROLLBACK = {"window_s": 60, "min_requests": 20, "max_flag_rate": 0.2}
ROUTING = {"stable": "2", "canary": {"version": "3", "weight": 0.0}, "rollback": ROLLBACK}
# How long a change may take to reach the other process.
PROPAGATION_S = 1.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "models"
    add_model(root, MODEL, ROUTING, extra={"3": nan_model()})
    return root


@pytest.fixture(params=["redis", "cluster"])
def fleet(
    request: pytest.FixtureRequest, root: Path, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateways on their own ports, as two replicas behind a Service."""
    # No --policy-store: the default must be the feature store's Redis, one node or a cluster.
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("cluster").url
    args = ("--models", str(root), "--feature-store", url)
    env = {"MLGATE_ADMIN_TOKEN": TOKEN}
    a = start_gateway(tmp_path, *args, env=env)
    try:
        b = start_gateway(tmp_path, *args, env=env)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def served_version(gw: GatewayProcess, entity: str) -> str:
    r = predict(gw, MODEL, entity)
    assert r.status_code == 200, r.text
    return r.headers[VERSION_HEADER]


def infer_version(gw: GatewayProcess) -> str:
    """The version that answers a V2 request with the features in it (no store needed)."""
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32}
    r = post(f"{gw.url}/v2/models/{MODEL}/infer", {"inputs": [tensor]})
    assert r.status_code == 200, r.text
    return r.headers[VERSION_HEADER]


def policy(gw: GatewayProcess) -> dict[str, Any]:
    doc: dict[str, Any] = admin(gw, "GET", f"models/{MODEL}").json()
    return doc


def test_a_change_through_one_gateway_is_served_by_the_other_within_a_second(
    fleet: tuple[GatewayProcess, GatewayProcess], request: pytest.FixtureRequest
) -> None:
    a, b = fleet
    assert served_version(b, "u1") == "2"
    r = admin(a, "PATCH", f"models/{MODEL}/routing", {"canary": {"version": "1", "weight": 1.0}})
    assert r.status_code == 200, r.text
    changed = time.monotonic()
    deadline = changed + PROPAGATION_S
    while served_version(b, "u1") != "1":
        assert time.monotonic() < deadline, "the other gateway still serves the old policy"
        time.sleep(0.005)
    took_ms = (time.monotonic() - changed) * 1000
    print(f"\n{request.node.callspec.id}: served by the other gateway after {took_ms:.1f} ms")
    # The other gateway's own account: it took the change up from the store, not from a restart.
    doc = policy(b)
    assert doc["policy"]["routing"]["canary"] == {"version": "1", "weight": 1.0}
    assert doc["applied_at_ms"] - r.json()["history"][-1]["at_ms"] < PROPAGATION_S * 1000


def test_a_rollback_decided_on_both_gateways_traffic_holds_on_both(
    fleet: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = fleet
    r = admin(a, "PATCH", f"models/{MODEL}/routing", {"canary": {"version": "3", "weight": 0.5}})
    assert r.status_code == 200, r.text
    entities = [f"u{i}" for i in range(1000)]
    canary = [e for e in entities if bucket(MODEL, e) < 0.5][:20]
    deadline = time.monotonic() + PROPAGATION_S
    while served_version(b, canary[0]) != "3":
        assert time.monotonic() < deadline, "the canary never reached the other gateway"
        time.sleep(0.01)
    # min_requests is 20: neither gateway alone sees that many canary requests (8 + 12, the
    # first above included), so whoever rolls back counted both gateways'.
    for gw, chosen in ((b, canary[1:8]), (a, canary[8:])):
        assert {served_version(gw, e) for e in chosen} == {"3"}, "rolled back too early"

    deadline = time.monotonic() + 5
    docs = [policy(gw) for gw in (a, b)]
    while any(d["policy"]["routing"]["canary"]["weight"] != 0 for d in docs):
        assert time.monotonic() < deadline, f"no rollback on both: {docs}"
        time.sleep(0.05)
        docs = [policy(gw) for gw in (a, b)]
    for doc in docs:
        rollback = doc["policy"]["rollback"]
        assert rollback["reason"] == "flag_rate"
        assert "over 20 canary requests" in rollback["detail"]
        # Whichever gateway decided, the other took the rollback up within a second.
        assert doc["applied_at_ms"] - rollback["at_ms"] < PROPAGATION_S * 1000
    assert docs[0]["policy"]["revision"] == docs[1]["policy"]["revision"]
    for gw in (a, b):
        assert {served_version(gw, e) for e in canary} == {"2"}


def test_a_gateway_started_without_its_redis_serves_its_config_then_joins_the_fleet(
    root: Path, tmp_path: Path
) -> None:
    port = free_port()
    args = ("--models", str(root), "--feature-store", f"redis://127.0.0.1:{port}/0")
    env = {"MLGATE_ADMIN_TOKEN": TOKEN}
    late = start_gateway(tmp_path, *args, env=env)  # nothing listens on `port` yet
    try:
        assert infer_version(late) == "2"  # config.yaml's stable version
        redis = start_redis(port)
        try:
            other = start_gateway(tmp_path, *args, env=env)
            try:
                r = admin(other, "PATCH", f"models/{MODEL}/routing", {"stable": "1"})
                assert r.status_code == 200, r.text
                deadline = time.monotonic() + 10
                while infer_version(late) != "1":
                    assert time.monotonic() < deadline, "never joined the shared policy"
                    time.sleep(0.1)
                assert policy(late)["policy"]["revision"] == policy(other)["policy"]["revision"]
            finally:
                other.stop()
        finally:
            redis.stop()
    finally:
        late.stop()
