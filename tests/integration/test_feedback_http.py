"""Label feedback end to end: real gateways auditing to a real redis-server and to a file,
labels joined by request id and by entity and time, quality gauges, rollback on quality."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.audit import AuditRecord
from service.audit.index import index_key
from service.audit.reader import tail
from service.audit.streams import stream_key
from service.monitor.quality import AUC_BINS
from service.routing.router import VERSION_HEADER
from tests.conftest import GatewayProcess, RedisServer, start_gateway
from tests.integration.routing_support import add_model, audit_records, post, predict

AUDIT_DB = 5
ENTITIES = [f"u{i}" for i in range(400)]
AUC = {"quality": {"metric": "auc", "window_s": 600}}
# Judged on quality alone: min_requests keeps every other threshold out of it.
ROLLBACK = {"window_s": 600, "min_requests": 1_000_000, "max_quality_drop": 0.2, "min_labels": 20}

# Labels by request id need the audit log's id index, off by default (service.audit.streams).
INDEX_TTL_S = 2 * 86_400


def labelled_models(root: Path) -> None:
    add_model(root, "scored", sections=AUC)
    add_model(root, "gauged", sections=AUC)
    add_model(
        root,
        "judged",
        {"stable": "2", "canary": {"version": "1", "weight": 0.5}, "rollback": ROLLBACK},
        sections={"quality": {"metric": "accuracy", "threshold": 0.5, "window_s": 600}},
    )


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[GatewayProcess]:
    """A gateway auditing to Redis (db AUDIT_DB)."""
    tmp = tmp_path_factory.mktemp("feedback")
    labelled_models(tmp / "models")
    client = redis.Redis(port=redis_server.port, db=AUDIT_DB)
    client.flushdb()
    client.close()
    gw = start_gateway(
        tmp,
        "--models",
        str(tmp / "models"),
        "--demo-entities",
        str(len(ENTITIES)),
        env={
            "MLGATE_AUDIT": f"redis://127.0.0.1:{redis_server.port}/{AUDIT_DB}"
            f"?index_ttl_s={INDEX_TTL_S}"
        },
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def file_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway auditing to a file (start_gateway's default)."""
    tmp = tmp_path_factory.mktemp("feedback-file")
    labelled_models(tmp / "models")
    gw = start_gateway(tmp, "--models", str(tmp / "models"), "--demo-entities", "50")
    yield gw
    gw.stop()


def feedback(gw: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    return post(f"{gw.url}/v1/feedback", body)


def metric(gw: GatewayProcess, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def wait_for(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def scores(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return [float(p) for p in response.json()["predictions"]]


def redis_index(server: RedisServer, model: str, request_id: str) -> redis.Redis:
    """The audit database, once the request's index entry is written."""
    client = redis.Redis(port=server.port, db=AUDIT_DB)
    key = index_key(stream_key(model), request_id)
    assert wait_for(lambda: client.exists(key)), "the index entry was never written"
    return client


def test_a_late_label_joins_its_prediction_by_request_id_with_redis_audit(
    gateway: GatewayProcess, redis_server: RedisServer
) -> None:
    request_id = uuid.uuid4().hex
    predicted = scores(
        predict(gateway, "scored", "u1", "u2", "u3", body={"request_id": request_id})
    )
    client = redis_index(redis_server, "scored", request_id)
    # Labels may come days later: the entry outlives them by the index TTL, not by memory.
    assert client.ttl(index_key(stream_key("scored"), request_id)) > INDEX_TTL_S - 60

    answer = feedback(gateway, {"model": "scored", "request_id": request_id, "labels": [1, 0, 1]})

    assert answer.status_code == 200, answer.text
    assert answer.json() | {"label_delay_ms": 0} == {
        "model": "scored",
        "model_version": "2",
        "request_id": request_id,
        "route": "primary",
        "joined": 3,
        "label_delay_ms": 0,
    }
    (record,) = wait_for(lambda: feedback_records(redis_server, "scored", request_id))
    assert record.version == "2" and record.entity_ids == ["u1", "u2", "u3"]
    assert record.outputs["label"].ravel().tolist() == [1.0, 0.0, 1.0]
    assert len(predicted) == 3


def feedback_records(server: RedisServer, model: str, request_id: str) -> list[AuditRecord]:
    async def read() -> list[AuditRecord]:
        url = f"redis://127.0.0.1:{server.port}/{AUDIT_DB}"
        records = [r async for r in tail(url, model=model, follow=False, route="feedback")]
        return [r for r in records if r.paired_with == request_id]

    return asyncio.run(read())


def test_a_label_joins_by_entity_and_time_with_redis_audit(
    gateway: GatewayProcess, redis_server: RedisServer
) -> None:
    request_id = uuid.uuid4().hex
    predicted_at = time.time_ns() // 1_000_000
    scores(predict(gateway, "scored", "u7", "u8", body={"request_id": request_id}))
    redis_index(redis_server, "scored", request_id)

    body = {"model": "scored", "entity": "u8", "ts_ms": predicted_at + 200, "labels": [1]}
    answer = feedback(gateway, body)

    assert answer.status_code == 200, answer.text
    assert answer.json()["request_id"] == request_id
    (record,) = wait_for(lambda: feedback_records(redis_server, "scored", request_id))
    assert record.entity_ids == ["u8"]
    # Nothing of u8 within 5 s of a time an hour earlier.
    body |= {"ts_ms": predicted_at - 3_600_000}
    assert feedback(gateway, body).status_code == 404


def test_an_unknown_request_id_is_404_and_counted_unmatched(gateway: GatewayProcess) -> None:
    before = metric(gateway, "mlgate_feedback_labels_total", model="scored", outcome="unmatched")

    answer = feedback(gateway, {"model": "scored", "request_id": "never-seen", "labels": [1, 0]})

    assert answer.status_code == 404
    assert "never-seen" in answer.json()["error"]
    after = metric(gateway, "mlgate_feedback_labels_total", model="scored", outcome="unmatched")
    assert after == (before or 0) + 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "scored", "request_id": "x"}, "labels"),
        (
            {"model": "scored", "request_id": "x", "entity": "u1", "ts_ms": 1, "labels": [1]},
            "either",
        ),
        ({"model": "scored", "entity": "u1", "labels": [1]}, "together"),
        ({"model": "scored", "request_id": "x", "labels": ["yes"]}, "labels"),
        ({"model": "scored", "request_id": "x", "labels": [1], "label": 1}, "label"),
    ],
)
def test_a_bad_feedback_body_is_400_naming_the_problem(
    gateway: GatewayProcess, body: dict[str, Any], words: str
) -> None:
    answer = feedback(gateway, body)
    assert answer.status_code == 400
    assert words in answer.json()["error"]


def test_unknown_model_is_404(gateway: GatewayProcess) -> None:
    answer = feedback(gateway, {"model": "nope", "request_id": "x", "labels": [1]})
    assert answer.status_code == 404 and "nope" in answer.json()["error"]


def test_labels_that_do_not_fit_the_prediction_are_400_and_counted_invalid(
    gateway: GatewayProcess, redis_server: RedisServer
) -> None:
    request_id = uuid.uuid4().hex
    scores(predict(gateway, "scored", "u11", "u12", body={"request_id": request_id}))
    redis_index(redis_server, "scored", request_id)
    labels = {"model": "scored", "version": "2", "outcome": "invalid"}
    before = metric(gateway, "mlgate_feedback_labels_total", **labels) or 0

    wrong_count = feedback(gateway, {"model": "scored", "request_id": request_id, "labels": [1]})
    not_a_class = feedback(gateway, {"model": "scored", "request_id": request_id, "labels": [1, 2]})

    assert wrong_count.status_code == 400 and "1 label(s)" in wrong_count.json()["error"]
    assert not_a_class.status_code == 400 and "0 or 1" in not_a_class.json()["error"]
    assert metric(gateway, "mlgate_feedback_labels_total", **labels) == before + 3


def binned_auc(pairs: list[tuple[float, int]]) -> float:
    """AUC by its definition over every (positive, negative) pair, scores in AUC_BINS bins."""

    def bin_of(score: float) -> int:
        return min(max(int(score * AUC_BINS), 0), AUC_BINS - 1)

    positives = [bin_of(s) for s, label in pairs if label == 1]
    negatives = [bin_of(s) for s, label in pairs if label == 0]
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return won / (len(positives) * len(negatives))


def test_quality_gauges_match_a_hand_computation(
    gateway: GatewayProcess, redis_server: RedisServer
) -> None:
    pairs: list[tuple[float, int]] = []
    for i, entity in enumerate(ENTITIES[100:160]):
        request_id = uuid.uuid4().hex
        (score,) = scores(predict(gateway, "gauged", entity, body={"request_id": request_id}))
        # Labels that agree with the score more often than not, with misses both ways.
        label = int(score > 0.5) if i % 3 else int(score <= 0.5)
        pairs.append((score, label))
        redis_index(redis_server, "gauged", request_id)
        answer = feedback(gateway, {"model": "gauged", "request_id": request_id, "labels": [label]})
        assert answer.status_code == 200, answer.text
    expected = binned_auc(pairs)
    assert 0 < expected < 1

    def window_labels() -> float | None:
        return metric(gateway, "mlgate_model_quality_window_labels", model="gauged", version="2")

    assert wait_for(lambda: window_labels() == len(pairs))
    auc = metric(gateway, "mlgate_model_quality", model="gauged", version="2", metric="auc")
    assert auc == pytest.approx(expected, abs=1e-12)


def until_joined(gw: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    """The answer to `body` once its prediction is written and indexed (404 until then)."""
    deadline = time.monotonic() + 5
    while True:
        answer = feedback(gw, body)
        if answer.status_code != 404 or time.monotonic() > deadline:
            return answer
        time.sleep(0.02)


def test_a_canary_whose_realised_quality_drops_is_rolled_back(gateway: GatewayProcess) -> None:
    sent: dict[str, list[bool]] = {"1": [], "2": []}
    for entity in ENTITIES:
        request_id = uuid.uuid4().hex
        response = predict(gateway, "judged", entity, body={"request_id": request_id})
        (score,) = scores(response)
        version = response.headers[VERSION_HEADER]
        # The canary (version 1) is right one time in three, the stable version every time.
        right = version == "2" or len(sent[version]) % 3 == 0
        sent[version].append(right)
        label = int(score >= 0.5) if right else int(score < 0.5)
        body = {"model": "judged", "request_id": request_id, "labels": [label]}
        assert until_joined(gateway, body).status_code == 200
        if min(len(rights) for rights in sent.values()) >= ROLLBACK["min_labels"]:
            break

    labels = {"model": "judged", "version": "1"}
    assert wait_for(lambda: metric(gateway, "mlgate_rollbacks_total", reason="quality", **labels))
    assert metric(gateway, "mlgate_canary_weight", **labels) == 0
    for version, rights in sent.items():
        accuracy = metric(
            gateway, "mlgate_model_quality", model="judged", version=version, metric="accuracy"
        )
        assert accuracy == pytest.approx(sum(rights) / len(rights))


def test_a_late_label_joins_its_prediction_by_request_id_with_file_audit(
    file_gateway: GatewayProcess,
) -> None:
    request_id = uuid.uuid4().hex
    scores(predict(file_gateway, "scored", "u3", "u4", body={"request_id": request_id}))

    # The in-process index is filled as the writer writes: the label joins once it has.
    body = {"model": "scored", "request_id": request_id, "labels": [0, 1]}
    answer = until_joined(file_gateway, body)

    assert answer.status_code == 200, answer.text
    records = audit_records(
        file_gateway, "scored", lambda rs: any(r.route == "feedback" for r in rs)
    )
    (record,) = [r for r in records if r.route == "feedback"]
    assert record.paired_with == request_id
    assert record.outputs["label"].ravel().tolist() == [0.0, 1.0]


def test_a_label_joins_by_entity_and_time_with_file_audit(file_gateway: GatewayProcess) -> None:
    request_id = uuid.uuid4().hex
    predicted_at = time.time_ns() // 1_000_000
    scores(predict(file_gateway, "scored", "u9", "u10", body={"request_id": request_id}))

    body = {"model": "scored", "entity": "u10", "ts_ms": predicted_at, "labels": [1]}
    answer = until_joined(file_gateway, body)

    assert answer.status_code == 200, answer.text
    assert answer.json()["request_id"] == request_id
    assert feedback(file_gateway, body | {"entity": "u11"}).status_code == 404
