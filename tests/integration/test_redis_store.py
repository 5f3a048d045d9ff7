"""Online store semantics, identical on MemoryStore and RedisStore, and Redis failure modes."""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import redis

from feature_store.codec import encode_row, row_key
from feature_store.errors import (
    EntityNotFound,
    FeatureStoreError,
    SchemaMismatch,
    StoreUnavailable,
)
from feature_store.open import open_store
from feature_store.redis_store import RedisStore
from feature_store.store import EARLIEST_EVENT_TIME_MS, OnlineStore, Status
from feature_store.views import FeatureView
from loadtests.processes import free_port
from tests.conftest import RedisServer, start_redis

NOW = 1_700_000_000_000
HOUR_MS = 3_600_000


def make_view(name: str = "txn_stats", **fields: Any) -> FeatureView:
    features = [{"name": "count", "default": -1.0}, {"name": "amount", "default": -2.0}]
    return FeatureView.model_validate(
        {"name": name, "entity": "user_id", "features": features} | fields
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[OnlineStore]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    store = open_store(url)
    assert store.kind == request.param
    try:
        yield store
    finally:
        await store.close()


async def test_written_rows_read_back_fresh_in_request_order(store: OnlineStore) -> None:
    view = make_view(ttl_s=3600)
    await store.write(view, ["u1", "u2"], np.array([[1, 10.5], [2, 20.5]]), NOW - 1000)
    [rows] = await store.read([view], ["u2", "u1"], now_ms=NOW)
    assert rows.view is view
    assert rows.values.tolist() == [[2, 20.5], [1, 10.5]]
    assert rows.values.dtype == np.float32
    assert rows.status.tolist() == [Status.FRESH, Status.FRESH]
    assert rows.event_time_ms.tolist() == [NOW - 1000, NOW - 1000]


async def test_missing_row_serves_defaults_with_status_missing(store: OnlineStore) -> None:
    view = make_view()
    await store.write(view, ["u1"], np.array([[1, 2]]), NOW)
    [rows] = await store.read([view], ["u1", "nobody"], now_ms=NOW)
    assert rows.values.tolist() == [[1, 2], [-1, -2]]
    assert rows.status.tolist() == [Status.FRESH, Status.MISSING]
    assert rows.counts() == {"fresh": 1, "stale": 0, "missing": 1, "defaulted": 0}


@pytest.mark.parametrize("on_stale", ["serve", "default"])
async def test_missing_row_of_a_ttl_view_is_missing_not_stale(
    store: OnlineStore, on_stale: str
) -> None:
    # A missing row has no event time: it must not count as older than the ttl.
    view = make_view(ttl_s=3600, on_stale=on_stale)
    times = np.array([NOW, NOW - 2 * HOUR_MS])
    await store.write(view, ["new", "old"], np.array([[1, 2], [3, 4]]), times)
    [rows] = await store.read([view], ["new", "nobody", "old"], now_ms=NOW)
    old_status, old_values = (
        (Status.STALE, [3, 4]) if on_stale == "serve" else (Status.DEFAULTED, [-1, -2])
    )
    assert rows.status.tolist() == [Status.FRESH, Status.MISSING, old_status]
    assert rows.values.tolist() == [[1, 2], [-1, -2], old_values]
    assert rows.event_time_ms.tolist() == [NOW, 0, NOW - 2 * HOUR_MS]
    [nobody] = await store.read([view], ["nobody", "nobody_else"], now_ms=NOW)
    assert nobody.status.tolist() == [Status.MISSING, Status.MISSING]
    assert nobody.values.tolist() == [[-1, -2], [-1, -2]]


async def test_missing_row_of_an_on_missing_error_view_raises_entity_not_found(
    store: OnlineStore,
) -> None:
    view = make_view("risk", on_missing="error")
    await store.write(view, ["u1"], np.array([[1, 2]]), NOW)
    with pytest.raises(EntityNotFound, match=r"'risk' has no row for user_id 'u7' \(and 1 more\)"):
        await store.read([view], ["u1", "u7", "u8"], now_ms=NOW)


async def test_row_older_than_ttl_is_served_as_stale(store: OnlineStore) -> None:
    view = make_view(ttl_s=3600)
    await store.write(
        view,
        ["old", "edge"],
        np.array([[1, 2], [3, 4]]),
        np.array([NOW - HOUR_MS - 1, NOW - HOUR_MS]),
    )
    [rows] = await store.read([view], ["old", "edge"], now_ms=NOW)
    assert rows.values.tolist() == [[1, 2], [3, 4]]
    assert rows.status.tolist() == [Status.STALE, Status.FRESH]


async def test_stale_row_of_an_on_stale_default_view_serves_defaults(store: OnlineStore) -> None:
    view = make_view(ttl_s=3600, on_stale="default")
    await store.write(view, ["old"], np.array([[1, 2]]), NOW - 2 * HOUR_MS)
    await store.write(view, ["new"], np.array([[3, 4]]), NOW)
    [rows] = await store.read([view], ["old", "new"], now_ms=NOW)
    assert rows.values.tolist() == [[-1, -2], [3, 4]]
    assert rows.status.tolist() == [Status.DEFAULTED, Status.FRESH]
    assert rows.counts()["defaulted"] == 1


async def test_view_without_ttl_never_goes_stale(store: OnlineStore) -> None:
    view = make_view(ttl_s=None)
    await store.write(view, ["u1"], np.array([[1, 2]]), EARLIEST_EVENT_TIME_MS)
    [rows] = await store.read([view], ["u1"], now_ms=NOW)
    assert rows.status.tolist() == [Status.FRESH]


async def test_write_without_event_time_stamps_now(store: OnlineStore) -> None:
    view = make_view(ttl_s=60)
    before = time.time_ns() // 1_000_000
    await store.write(view, ["u1"], np.array([[1, 2]]))
    [rows] = await store.read([view], ["u1"])
    assert rows.status.tolist() == [Status.FRESH]
    assert before <= rows.event_time_ms[0] <= time.time_ns() // 1_000_000


async def test_views_of_one_entity_are_independent_rows(store: OnlineStore) -> None:
    stats, profile = make_view("txn_stats"), make_view("user_profile", dtype="int64")
    await store.write(stats, ["u1"], np.array([[1.5, 2.5]]), NOW)
    await store.write(profile, ["u1"], np.array([[7, 8]]), NOW)
    got = await store.read([profile, stats], ["u1"], now_ms=NOW)
    assert [rows.view.name for rows in got] == ["user_profile", "txn_stats"]
    assert got[0].values.dtype == np.int64 and got[0].values.tolist() == [[7, 8]]
    assert got[1].values.tolist() == [[1.5, 2.5]]


async def test_a_row_written_under_an_old_view_definition_is_a_schema_mismatch(
    store: OnlineStore,
) -> None:
    await store.write(make_view(), ["u1"], np.array([[1, 2]]), NOW)
    renamed = make_view(features=[{"name": "count"}, {"name": "amount_usd"}])
    with pytest.raises(SchemaMismatch, match="'txn_stats'"):
        await store.read([renamed], ["u1"], now_ms=NOW)


async def test_empty_requests_answer_empty_rows(store: OnlineStore) -> None:
    view = make_view(dtype="int64")
    [rows] = await store.read([view], [], now_ms=NOW)
    assert rows.view is view
    assert rows.values.shape == (0, 2) and rows.values.dtype == np.int64
    assert rows.status.shape == (0,) and rows.event_time_ms.shape == (0,)
    assert rows.counts() == {"fresh": 0, "stale": 0, "missing": 0, "defaulted": 0}
    assert await store.read([], ["u1"], now_ms=NOW) == []
    await store.write(view, [], np.empty((0, 2)))
    [after] = await store.read([view], ["u1"], now_ms=NOW)
    assert after.status.tolist() == [Status.MISSING]  # the empty write stored nothing


async def test_write_rejects_values_not_one_row_per_entity(store: OnlineStore) -> None:
    with pytest.raises(ValueError, match=r"2 entity ids need values of shape \(2, 2\)"):
        await store.write(make_view(), ["u1", "u2"], np.zeros((3, 2)))


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in stats.items()
        if not name.startswith(("cmdstat_info", "cmdstat_config"))
    }


async def test_read_of_8_entities_by_2_views_is_one_mget(
    redis_server: RedisServer, redis_url: str
) -> None:
    views = [make_view("txn_stats"), make_view("user_profile")]
    ids = [f"u{i}" for i in range(8)]
    store = RedisStore(redis_url)
    admin = redis.Redis(port=redis_server.port)
    try:
        for view in views:
            await store.write(view, ids[:6], np.ones((6, 2)), NOW)
        await store.ping()  # the pooled connection exists: its handshake is not counted below
        admin.config_resetstat()
        got = await store.read(views, ids, now_ms=NOW)
        assert command_calls(admin) == {"mget": 1}
        assert [rows.counts()["fresh"] for rows in got] == [6, 6]
    finally:
        admin.close()
        await store.close()


async def test_empty_requests_send_no_command_to_redis(
    redis_server: RedisServer, redis_url: str
) -> None:
    view = make_view()
    store = RedisStore(redis_url)
    admin = redis.Redis(port=redis_server.port)
    try:
        await store.ping()  # the pooled connection exists: its handshake is not counted below
        admin.config_resetstat()
        await store.read([view], [], now_ms=NOW)
        await store.read([], ["u1"], now_ms=NOW)
        await store.write(view, [], np.empty((0, 2)))
        assert command_calls(admin) == {}
        await store.read([view], ["u1"], now_ms=NOW)  # the count above does see a read
        assert command_calls(admin) == {"mget": 1}
    finally:
        admin.close()
        await store.close()


async def test_ping_is_answered_by_the_redis_server(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    admin = redis.Redis(port=redis_server.port)
    try:
        admin.config_resetstat()
        await store.ping()
        assert command_calls(admin).get("ping") == 1
    finally:
        admin.close()
        await store.close()


async def test_write_stores_every_row(redis_server: RedisServer, redis_url: str) -> None:
    view = make_view()
    store = RedisStore(redis_url)
    admin = redis.Redis(port=redis_server.port)
    try:
        ids = [f"u{i}" for i in range(1234)]
        values = np.arange(2468, dtype=np.float32).reshape(1234, 2)
        await store.write(view, ids, values, NOW)
        assert admin.dbsize() == 1234
        assert admin.get(row_key(view, "u1233")) == encode_row(view, values[-1], NOW)
        [rows] = await store.read([view], ids, now_ms=NOW)
        assert np.array_equal(rows.values, values)
    finally:
        admin.close()
        await store.close()


async def test_stopped_redis_raises_store_unavailable_quickly(doomed_redis: RedisServer) -> None:
    view = make_view()
    store = RedisStore(doomed_redis.url, socket_timeout=0.5)
    try:
        await store.write(view, ["u1"], np.array([[1, 2]]), NOW)
        doomed_redis.stop()
        started = time.monotonic()
        with pytest.raises(
            StoreUnavailable, match=rf"{doomed_redis.url} unavailable: Connection refused"
        ):
            await store.read([view], ["u1"], now_ms=NOW)
        with pytest.raises(StoreUnavailable):
            await store.write(view, ["u1"], np.array([[1, 2]]), NOW)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        assert time.monotonic() - started < 0.5
    finally:
        await store.close()


async def test_first_command_after_a_redis_restart_succeeds_on_a_fresh_connection(
    doomed_redis: RedisServer,
) -> None:
    view = make_view()
    store = RedisStore(doomed_redis.url)
    try:
        await store.ping()  # leaves a pooled connection that the restart breaks
        doomed_redis.stop()
        revived = start_redis(port=doomed_redis.port)
        try:
            [rows] = await store.read([view], ["u1"], now_ms=NOW)
            assert rows.status.tolist() == [Status.MISSING]
        finally:
            revived.stop()
    finally:
        await store.close()


async def test_unresponsive_redis_raises_store_unavailable_after_one_socket_timeout() -> None:
    # A listening socket nobody accepts from: the TCP handshake succeeds, no reply ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable: timed out"):
                await store.read([make_view()], ["u1"])
            assert 0.3 <= time.monotonic() - started < 0.55  # not retried: a retry would take 0.6
        finally:
            await store.close()


async def test_password_never_appears_in_store_errors(redis_server: RedisServer) -> None:
    # Nothing listens on `closed`: connection refused. The session's server has no password
    # configured: AUTH fails there. Both errors name the URL, neither its password.
    closed = free_port()
    for url in (
        f"redis://:s3cret@127.0.0.1:{closed}/0",
        f"redis://admin:s3cret@127.0.0.1:{redis_server.port}/0",
        f"redis://127.0.0.1:{redis_server.port}/0?username=admin&password=s3cret",
    ):
        store = RedisStore(url)
        try:
            assert "s3cret" not in store.url and "***" in store.url
            operations: list[Callable[[], Awaitable[object]]] = [
                partial(store.read, [make_view()], ["u1"]),
                partial(store.write, make_view(), ["u1"], np.array([[1, 2]])),
                store.ping,
            ]
            for operation in operations:
                with pytest.raises(FeatureStoreError) as caught:
                    await operation()
                assert store.url in str(caught.value)
                assert "s3cret" not in str(caught.value)
                # Nor the chained exceptions that a logged traceback would show.
                assert "s3cret" not in "".join(traceback.format_exception(caught.value))
        finally:
            await store.close()


@pytest.mark.parametrize("url", ["postgres://db/1", "redis-cluster://h:1", "localhost:6379"])
def test_open_store_rejects_other_schemes_naming_url_and_accepted_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"memory://, redis://, rediss://") as caught:
        open_store(url)
    assert url in str(caught.value)
