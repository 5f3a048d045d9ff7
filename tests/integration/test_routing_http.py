"""Routing end to end: sticky canary, overrides, a slow shadow, automatic rollback, admin API.

One gateway serves several copies of fraud_mlp, each with the routing section its tests need.
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from service.audit import AuditRecord
from service.routing.router import VERSION_HEADER, bucket
from tests.conftest import GatewayProcess, start_gateway
from tests.integration.routing_support import (
    TOKEN,
    add_model,
    admin,
    audit_records,
    nan_model,
    post,
    predict,
    slow_model,
)

ENTITIES = [f"u{i}" for i in range(2000)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("routing")
    root = tmp / "models"
    # config.yaml says 0.1; the --routing file's 0.5 takes its place.
    add_model(root, "sticky", {"stable": "2", "canary": {"version": "1", "weight": 0.1}})
    routing_file = tmp / "routing.yaml"
    routing_file.write_text(yaml.safe_dump({"sticky": {"canary": {"version": 1, "weight": 0.5}}}))
    add_model(root, "shadowed", {"stable": "2"}, extra={"3": slow_model()})
    broken_rollback = {"window_s": 30, "min_requests": 20, "max_flag_rate": 0.2}
    add_model(
        root,
        "broken",
        {"stable": "2", "canary": {"version": "3", "weight": 0.5}, "rollback": broken_rollback},
        extra={"3": nan_model()},
    )
    add_model(root, "managed", {"stable": "2", "canary": {"version": "1", "weight": 0.2}})
    gw = start_gateway(
        tmp,
        "--models",
        str(root),
        "--demo-entities",
        str(len(ENTITIES)),
        "--shadow-queue-size",
        "8",
        "--shadow-concurrency",
        "1",
        "--log-level",
        "info",
        "--routing",
        str(routing_file),
        env={"MLGATE_ADMIN_TOKEN": TOKEN},
    )
    yield gw
    gw.stop()


def v2_infer(gw: GatewayProcess, model: str, entity: str, **kwargs: Any) -> httpx.Response:
    body = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [entity]}]}
    body |= kwargs.pop("body", {})
    return post(f"{gw.url}/v2/models/{model}/infer", body, **kwargs)


def metric(gw: GatewayProcess, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_each_entity_keeps_the_version_its_hash_picks(gateway: GatewayProcess) -> None:
    seen = set()
    for entity in ENTITIES[:60]:
        expected = "1" if bucket("sticky", entity) < 0.5 else "2"
        for _ in range(2):
            r = predict(gateway, "sticky", entity)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == r.headers[VERSION_HEADER] == expected
        r = v2_infer(gateway, "sticky", entity)  # the V2 API routes the same entity alike
        assert r.json()["model_version"] == r.headers[VERSION_HEADER] == expected
        seen.add(expected)
    assert seen == {"1", "2"}


def test_an_explicit_version_overrides_routing(gateway: GatewayProcess) -> None:
    entity = next(e for e in ENTITIES if bucket("sticky", e) >= 0.5)  # routed to 2
    by_url = post(f"{gateway.url}/v1/models/sticky/versions/1:predict", {"entities": [entity]})
    by_header = predict(gateway, "sticky", entity, headers={VERSION_HEADER: "1"})
    by_parameter = predict(gateway, "sticky", entity, body={"parameters": {"mlgate_version": "1"}})
    by_v2_parameter = v2_infer(
        gateway, "sticky", entity, body={"parameters": {"mlgate_version": 1}}
    )
    for r in (by_url, by_header, by_parameter, by_v2_parameter):
        assert r.status_code == 200, r.text
        assert r.headers[VERSION_HEADER] == "1"
    assert predict(gateway, "sticky", entity, headers={VERSION_HEADER: "7"}).status_code == 404


def test_audit_records_carry_the_route(gateway: GatewayProcess) -> None:
    canary = next(e for e in ENTITIES if bucket("sticky", e) < 0.5)
    stable = next(e for e in ENTITIES if bucket("sticky", e) >= 0.5)
    ids = {
        "canary": predict(gateway, "sticky", canary).json()["request_id"],
        "primary": predict(gateway, "sticky", stable).json()["request_id"],
        "override": predict(gateway, "sticky", stable, headers={VERSION_HEADER: "1"}).json()[
            "request_id"
        ],
    }
    wanted = set(ids.values())
    found = {
        r.request_id: r.route
        for r in audit_records(
            gateway, "sticky", lambda records: wanted <= {r.request_id for r in records}
        )
        if r.request_id in wanted
    }
    assert found == {request_id: route for route, request_id in ids.items()}


def test_a_slow_shadow_leaves_primary_answers_and_latency_alone(gateway: GatewayProcess) -> None:
    def run(rounds: int, pause_s: float) -> tuple[list[float], list[Any], list[str]]:
        latencies, answers, ids = [], [], []
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for i in range(rounds):
                batch = [ENTITIES[(8 * i + j) % 400] for j in range(8)]
                started = time.perf_counter()
                r = client.post("/v1/models/shadowed:predict", json={"entities": batch})
                latencies.append(time.perf_counter() - started)
                assert r.status_code == 200 and r.headers[VERSION_HEADER] == "2", r.text
                answers.append(r.json()["predictions"])
                ids.append(r.json()["request_id"])
                time.sleep(pause_s)
        return latencies, answers, ids

    def shadow(sample_rate: float) -> None:
        section = {"shadow": [{"version": "3", "sample_rate": sample_rate}] if sample_rate else []}
        assert admin(gateway, "PATCH", "models/shadowed/routing", section).status_code == 200

    run(20, 0.0)  # warm-up
    # Paced, with a third of the requests mirrored: the shadow keeps up, so what the primary
    # feels is the shadow's presence, not a backlog competing for the machine's two cores.
    off, answers_off, _ = run(60, 0.01)
    shadow(0.3)
    on, answers_on, ids_on = run(60, 0.01)
    # Then a burst with every request mirrored: the shadow's queue (8) overflows.
    shadow(1.0)
    run(40, 0.0)
    shadow(0.0)

    assert answers_on == answers_off
    assert statistics.median(on) <= 1.5 * statistics.median(off) + 0.002

    def mirrored_on(records: list[AuditRecord]) -> list[AuditRecord]:
        return [r for r in records if r.route == "shadow" and r.paired_with in ids_on]

    shadows = mirrored_on(audit_records(gateway, "shadowed", lambda rs: bool(mirrored_on(rs))))
    assert shadows and all(r.version == "3" for r in shadows)
    # Deliberately slow indeed; and each mirrored request was answered in well under its
    # shadow's time, which a copy on the request path could never be.
    shadow_s = statistics.median(r.latency_us["total"] for r in shadows) / 1e6
    mirrored = {r.paired_with for r in shadows}
    answered_s = statistics.median(t for t, i in zip(on, ids_on, strict=True) if i in mirrored)
    assert answered_s < shadow_s / 2
    dropped = metric(gateway, "mlgate_shadow_dropped_total", model="shadowed", version="3")
    assert dropped is not None and dropped > 0
    disagreed = metric(
        gateway,
        "mlgate_shadow_rows_total",
        model="shadowed",
        baseline="2",
        version="3",
        outcome="disagree",
    )
    assert disagreed is not None and disagreed > 0


def test_a_broken_canary_is_rolled_back_automatically(gateway: GatewayProcess) -> None:
    on_canary = [e for e in ENTITIES if bucket("broken", e) < 0.5][:400]
    served_by_canary = 0
    judgeable_at = rolled_back_at = None
    deadline = time.monotonic() + 10
    for entity in itertools.cycle(on_canary):
        r = predict(gateway, "broken", entity)
        if r.headers[VERSION_HEADER] == "2":
            rolled_back_at = time.monotonic()
            break
        assert r.json()["flags"] == [["probability:not_finite"]]
        served_by_canary += 1
        if served_by_canary == 20:  # min_requests
            judgeable_at = time.monotonic()
        if time.monotonic() > deadline:
            break
    # Not judged before min_requests canary requests are in; then within a few ticks (0.25 s).
    assert served_by_canary >= 20
    assert judgeable_at is not None and rolled_back_at is not None
    assert rolled_back_at - judgeable_at < 2.0
    policy = admin(gateway, "GET", "models/broken").json()["policy"]
    assert policy["routing"]["canary"] == {"version": "3", "weight": 0.0}
    assert policy["rollback"]["reason"] == "flag_rate"
    assert "flag rate 1.0000 > 0.2" in policy["rollback"]["detail"]
    for entity in on_canary:
        assert predict(gateway, "broken", entity).headers[VERSION_HEADER] == "2"
    history = admin(gateway, "GET", "models/broken").json()["history"]
    assert history[-1]["who"] == "guarded-rollout" and history[-1]["what"] == "auto_rollback"
    labels = {"model": "broken", "version": "3"}
    assert metric(gateway, "mlgate_rollbacks_total", reason="flag_rate", **labels) == 1
    assert metric(gateway, "mlgate_canary_weight", **labels) == 0


def test_the_admin_api_wants_a_bearer_token(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/admin/models/managed"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.json() == {"error": "unauthorized"}
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url, headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
    wrong = httpx.patch(
        f"{url}/routing", json={"canary": None}, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403 and wrong.json() == {"error": "forbidden"}
    # Refused before anything else: an unknown model says nothing either.
    assert httpx.get(f"{gateway.url}/admin/models/nope").status_code == 401
    assert admin(gateway, "GET", "models/managed").json()["loaded"] == ["1", "2"]


def test_promotion_swaps_the_stable_version_in_one_logged_change(
    gateway: GatewayProcess,
) -> None:
    before = admin(gateway, "GET", "models/managed").json()["policy"]
    r = admin(gateway, "POST", "models/managed/promote")
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["policy"]["routing"]["stable"] == "1"
    assert after["policy"]["routing"].get("canary") is None
    assert after["policy"]["revision"] == before["revision"] + 1
    change = after["history"][-1]
    assert change["what"] == "promote" and change["who"] == "admin@127.0.0.1"
    assert change["before"]["routing"]["stable"] == "2"
    assert change["after"]["routing"]["stable"] == "1"
    for entity in ENTITIES[:20]:
        assert predict(gateway, "managed", entity).headers[VERSION_HEADER] == "1"
    assert httpx.get(f"{gateway.url}/v2/models/managed").json()["versions"] == ["1", "2"]
    logged = [line for line in gateway.log.read_text().splitlines() if "mlgate.changes" in line]
    assert any(
        '"what": "promote"' in line and '"who": "admin@127.0.0.1"' in line for line in logged
    )


def test_versions_load_unload_and_reload_through_the_admin_api(gateway: GatewayProcess) -> None:
    refused = admin(gateway, "POST", "models/managed/versions/1/unload")
    assert refused.status_code == 409  # the stable version since the promotion
    r = admin(gateway, "POST", "models/managed/versions/2/unload")
    assert r.status_code == 200 and r.json()["loaded"] == ["1"]
    assert predict(gateway, "managed", "u1", headers={VERSION_HEADER: "2"}).status_code == 404
    refused = admin(gateway, "PATCH", "models/managed/routing", {"shadow": [{"version": "2"}]})
    assert refused.status_code == 409 and "load it first" in refused.json()["error"]
    r = admin(gateway, "POST", "models/managed/versions/2/load")
    assert r.status_code == 200 and r.json()["loaded"] == ["1", "2"]
    assert predict(gateway, "managed", "u1", headers={VERSION_HEADER: "2"}).status_code == 200
    r = admin(gateway, "POST", "models/managed/versions/2/reload")
    assert r.status_code == 200 and r.json()["policy"]["versions"] == {"1": 0, "2": 1}
    missing = admin(gateway, "POST", "models/managed/versions/5/load")
    # The reason names the version's directory within the repository, never the server's path.
    assert missing.status_code == 422
    assert missing.json() == {"error": "cannot load version '5': managed/5: no version '5' to load"}
    assert admin(gateway, "POST", "models/managed/versions/x/load").status_code == 400


def test_invalid_routing_is_refused_with_the_reason(gateway: GatewayProcess) -> None:
    r = admin(gateway, "PATCH", "models/managed/routing", {"canary": {"version": "2", "weight": 2}})
    assert r.status_code == 400 and "canary.weight" in r.json()["error"]
    r = admin(gateway, "PUT", "models/managed/routing", {"arms": {"x": {"version": "2"}}})
    assert r.status_code == 400
    assert admin(gateway, "PATCH", "models/nope/routing", {}).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "unknown"),
    [
        ("PATCH", "routing", {"canary": {"wieght": 0.5}}, "canary.wieght"),
        ("PUT", "routing", {"stabel": "2"}, "stabel"),
        ("POST", "promote", {"versoin": "1"}, "versoin"),
        ("POST", "rollback", {"raeson": "by hand"}, "raeson"),
        ("POST", "versions/2/reload", {"force": True}, "force"),
    ],
)
def test_a_misspelt_admin_key_is_named_as_unknown_and_changes_nothing(
    gateway: GatewayProcess, method: str, path: str, body: dict[str, Any], unknown: str
) -> None:
    before = admin(gateway, "GET", "models/managed").json()["policy"]["revision"]
    r = admin(gateway, method, f"models/managed/{path}", body)
    assert r.status_code == 400
    error = r.json()["error"]
    # Named as unknown, and first: not mistaken for the field it was meant to be.
    assert f"{unknown}: unknown field" in error
    assert error.index(unknown) < error.index("required") if "required" in error else True
    assert admin(gateway, "GET", "models/managed").json()["policy"]["revision"] == before
