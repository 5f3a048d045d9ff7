"""A feature store that refuses commands: push and predict answer alike, and say nothing inside.

A real redis-server whose ACL user may not read or write features (as with an ACL missing MGET,
or a store at maxmemory): both calls get the same status, and neither body carries the store's
URL, a key or row bytes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import redis

from feature_store.views import load_views
from service.server import create_app
from service.settings import Settings
from tests.conftest import MODELS_DIR, RedisServer

PUSH = "/v1/features/txn_stats"
PREDICT = "/v1/models/fraud_mlp:predict"


@pytest.fixture
async def refused(doomed_redis: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    admin = redis.Redis(port=doomed_redis.port)
    admin.acl_setuser(
        "gateway",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        commands=["+@all", "-mget", "-mset"],
    )
    admin.close()
    url = f"redis://gateway:secret@127.0.0.1:{doomed_redis.port}/0"
    app = create_app(Settings(models=MODELS_DIR, feature_store=url, demo_entities=0, audit="none"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


async def test_a_refused_command_answers_push_and_predict_alike_without_details(
    refused: httpx.AsyncClient,
) -> None:
    push = await refused.post(PUSH, json={"rows": [row_of_view()]})
    predict = await refused.post(PREDICT, json={"entities": ["u1"]})
    assert push.status_code == predict.status_code == 503
    for answer in (push, predict):
        body = answer.json()
        assert set(body) == {"error"}
        for secret in ("redis://", "secret", "127.0.0.1", "fv:", "NOPERM", "mget", "MSET"):
            assert secret not in body["error"]


def row_of_view() -> dict[str, object]:
    view = load_views(MODELS_DIR / "feature_views.yaml")["txn_stats"]
    return {view.entity: "u1", **dict.fromkeys(view.feature_names, 1.0)}


async def test_an_outage_logs_one_warning_line_not_one_per_request(
    doomed_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(
        Settings(models=MODELS_DIR, feature_store=doomed_redis.url, demo_entities=0, audit="none")
    )
    async with app.router.lifespan_context(app):
        doomed_redis.stop()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            with caplog.at_level(logging.WARNING, logger="service.pipeline.features"):
                answers = [
                    (await client.post(PREDICT, json={"entities": [f"u{i}"]})).status_code
                    for i in range(200)
                ]
    assert answers == [503] * 200
    lines = [r for r in caplog.records if r.name == "service.pipeline.features"]
    assert len(lines) <= 1, [r.getMessage() for r in lines[:3]]
