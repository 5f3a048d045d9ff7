"""Several processes, one policy: changes and rollbacks reach every process within a second,
and the rollout window counts every process's traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.routing.router import VERSION_HEADER, bucket
from tests.conftest import GatewayProcess, start_gateway
from tests.integration.routing_support import AUTH, TOKEN, add_model, admin, nan_model, predict

ROUTING = {
    "stable": "2",
    "canary": {"version": "3", "weight": 0.0},
    "rollback": {"window_s": 60, "min_requests": 40, "max_flag_rate": 0.2},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers") / "models"
    add_model(root, "fleet", ROUTING, extra={"3": nan_model()})
    return root


def fresh_get(gw: GatewayProcess, path: str) -> dict[str, Any]:
    """On a new connection, which the kernel gives to either worker."""
    with httpx.Client(timeout=10, headers=AUTH) as client:
        doc: dict[str, Any] = client.get(f"{gw.url}/admin/{path}").json()
        return doc


def test_a_change_reaches_every_worker_within_a_second(root: Path, tmp_path: Path) -> None:
    # No --policy-store: with several workers the gateway shares a policy file among them.
    gw = start_gateway(
        tmp_path, "--models", str(root), "--workers", "2", env={"MLGATE_ADMIN_TOKEN": TOKEN}
    )
    try:
        seen: dict[int, int] = {}  # worker pid -> revision
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            doc = fresh_get(gw, "models/fleet")
            seen[doc["process"]] = doc["policy"]["revision"]
        assert len(seen) == 2, "one worker took every connection"
        before = max(seen.values())

        canary = {"canary": {"version": "3", "weight": 0.25}}
        r = admin(gw, "PATCH", "models/fleet/routing", canary)
        assert r.status_code == 200
        changed_ms = r.json()["history"][-1]["at_ms"]
        took_ms: dict[int, int] = {}
        deadline = time.monotonic() + 10
        while len(took_ms) < 2 and time.monotonic() < deadline:
            doc = fresh_get(gw, "models/fleet")
            if doc["policy"]["revision"] > before:
                assert doc["policy"]["routing"]["canary"]["weight"] == 0.25
                took_ms[doc["process"]] = doc["applied_at_ms"] - changed_ms
        assert set(took_ms) == set(seen)
        # Each worker says when it took the change up (the other one polls the policy file).
        assert max(took_ms.values()) < 1000
    finally:
        gw.stop()


@pytest.fixture
def pair(root: Path, tmp_path: Path, redis_url: str) -> Iterator[tuple[GatewayProcess, ...]]:
    """Two gateway processes sharing a Redis policy store, each reachable on its own."""
    args = ("--models", str(root), "--policy-store", redis_url)
    env = {"MLGATE_ADMIN_TOKEN": TOKEN}
    gateways = [start_gateway(tmp_path, *args, env=env) for _ in range(2)]
    yield tuple(gateways)
    for gw in gateways:
        gw.stop()


def test_the_rollout_window_counts_every_process(pair: tuple[GatewayProcess, ...]) -> None:
    a, b = pair
    canary = {"canary": {"version": "3", "weight": 0.5}}
    assert admin(a, "PATCH", "models/fleet/routing", canary).status_code == 200
    entities = [f"u{i}" for i in range(5000) if bucket("fleet", f"u{i}") < 0.5]

    def canary_requests(gw: GatewayProcess, chosen: list[str]) -> None:
        for entity in chosen:
            r = predict(gw, "fleet", entity)
            assert r.headers[VERSION_HEADER] == "3", "the change reached this process"

    time.sleep(1.0)
    # Neither process alone reaches min_requests (40); together they just do, with the last
    # request, so no answer here comes after the rollback.
    canary_requests(a, entities[:25])
    canary_requests(b, entities[25:40])
    deadline = time.monotonic() + 3
    docs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        docs = [admin(gw, "GET", "models/fleet").json() for gw in (a, b)]
        if all(d["policy"]["routing"]["canary"]["weight"] == 0 for d in docs):
            break
        time.sleep(0.05)
    for doc in docs:
        policy = doc["policy"]
        assert policy["routing"]["canary"]["weight"] == 0
        assert policy["rollback"]["reason"] == "flag_rate"
        assert "over 40 canary requests" in policy["rollback"]["detail"]
        # Whichever process decided, the other took the rollback up within a second.
        assert doc["applied_at_ms"] - policy["rollback"]["at_ms"] < 1000
    # One process decided; the other took the rollback up rather than making its own.
    rollbacks = [
        line
        for gw in (a, b)
        for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines()
        if line.startswith("mlgate_rollbacks_total{")
    ]
    assert [line.rsplit(" ", 1)[1] for line in rollbacks] == ["1.0"]
