"""Coalesced feature reads against a real redis-server: one MGET, each caller its own rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.coalescing import CoalescingReader
from feature_store.codec import encode_row, row_key
from feature_store.errors import (
    EntityNotFound,
    FeatureStoreError,
    SchemaMismatch,
    StoreUnavailable,
)
from feature_store.redis_store import RedisStore
from feature_store.store import OnlineStore, Status, ViewRows
from feature_store.views import FeatureView
from tests.conftest import MODELS_DIR, RedisServer
from tests.integration.test_redis_store import command_calls

NOW = 1_700_000_000_000
HOUR_MS = 3_600_000


def make_view(name: str, **fields: Any) -> FeatureView:
    features = [{"name": "count", "default": -1.0}, {"name": "amount", "default": -2.0}]
    return FeatureView.model_validate(
        {"name": name, "entity": "user_id", "features": features} | fields
    )


STATS = make_view("txn_stats", ttl_s=3600)
PROFILE = make_view("user_profile", dtype="int64")
RISK = make_view("risk", ttl_s=3600, on_missing="error", on_stale="default")
PLANS: tuple[tuple[FeatureView, ...], ...] = ((STATS, PROFILE), (STATS,), (RISK, STATS), (PROFILE,))
# u0..u19 have stats rows (every third one an hour and more old), u0..u14 profile rows,
# u0..u17 risk rows; "ghost" has none; "old" has a stats row of an earlier stats schema.
POOL = [f"u{i}" for i in range(20)] + ["ghost", "old"]
OLD_SCHEMA = "old"

Row = tuple[list[float], int]  # values, event time (ms)


def _written() -> dict[str, dict[str, Row]]:
    """What `seed` writes, view name -> entity id -> row: the tests' expectations derive
    from it, never from the store's read path."""
    times = [NOW - (HOUR_MS + 1 if i % 3 == 0 else 1000 * i) for i in range(20)]
    return {
        STATS.name: {f"u{i}": ([2 * i + 0.5, 2 * i + 1.5], times[i]) for i in range(20)},
        PROFILE.name: {f"u{i}": ([20.0 * i, 20.0 * i + 10], NOW) for i in range(15)},
        RISK.name: {f"u{i}": ([2 * i - 5.0, 2 * i - 4.0], times[i]) for i in range(18)},
    }


WRITTEN = _written()


async def seed(store: OnlineStore, admin: redis.Redis) -> None:
    for view in (STATS, PROFILE, RISK):
        table = WRITTEN[view.name]
        ids = list(table)
        values = np.array([table[e][0] for e in ids], dtype=view.np_dtype)
        await store.write(view, ids, values, np.array([table[e][1] for e in ids]))
    older = make_view("txn_stats", features=[{"name": "count"}, {"name": "amount_usd"}])
    admin.set(row_key(STATS, OLD_SCHEMA), encode_row(older, np.ones(2), NOW))


@dataclass(frozen=True)
class Expected:
    """The rows one view should give, worked out from WRITTEN by the documented rules."""

    view: FeatureView
    values: list[list[float]]
    status: list[Status]
    event_time_ms: list[int]


def expected(
    views: Sequence[FeatureView], entity_ids: Sequence[str], now_ms: int | None
) -> list[Expected] | FeatureStoreError:
    """What a read of the seeded rows gives. View by view, in order: a row of the stored old
    schema fails the read (SchemaMismatch); a missing row fails an ``on_missing: error`` view
    (EntityNotFound, naming the first and counting the others), else gets the defaults
    (MISSING, event time 0); a present row older than ttl_s is STALE, or DEFAULTED with the
    defaults when the view says ``on_stale: default``; any other row is FRESH."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    answer: list[Expected] = []
    for view in views:
        table = WRITTEN[view.name]
        if view.name == STATS.name and OLD_SCHEMA in entity_ids:
            return SchemaMismatch(f"feature view {view.name!r}: (a row of an older schema)")
        missing = [e for e in entity_ids if e not in table]
        if missing and view.on_missing == "error":
            return EntityNotFound(view.name, view.entity, missing[0], also_missing=len(missing) - 1)
        defaults = [f.default for f in view.features]
        rows = Expected(view, [], [], [])
        for e in entity_ids:
            if e not in table:
                values, status, event_time = defaults, Status.MISSING, 0
            else:
                values, event_time = table[e]
                status = Status.FRESH
                if view.ttl_s is not None and now - event_time > view.ttl_s * 1000:
                    status = Status.STALE if view.on_stale == "serve" else Status.DEFAULTED
                    if status is Status.DEFAULTED:
                        values = defaults
            rows.values.append(values)
            rows.status.append(status)
            rows.event_time_ms.append(event_time)
        answer.append(rows)
    return answer


def assert_rows(got: Sequence[ViewRows], want: list[Expected] | FeatureStoreError) -> None:
    assert not isinstance(want, FeatureStoreError), f"expected {want!r}, got rows"
    assert len(got) == len(want)
    for g, e in zip(got, want, strict=True):
        assert g.view is e.view
        assert g.values.dtype == e.view.np_dtype
        assert g.values.tolist() == e.values
        assert g.status.tolist() == e.status
        assert g.event_time_ms.tolist() == e.event_time_ms


Outcome = list[ViewRows] | BaseException


async def outcome(read: Any) -> Outcome:
    try:
        rows: list[ViewRows] = await read
    except Exception as exc:
        return exc
    return rows


def assert_outcome(got: Outcome, want: list[Expected] | FeatureStoreError) -> None:
    if isinstance(want, FeatureStoreError):
        assert isinstance(got, BaseException), f"expected {want!r}, got rows"
        assert type(got) is type(want)
        if isinstance(want, SchemaMismatch):  # the rest of its message details the header
            assert str(got).startswith(f"feature view {STATS.name!r}: ")
        else:
            assert str(got) == str(want)
    else:
        assert not isinstance(got, BaseException), f"expected rows, got {got!r}"
        assert_rows(got, want)


@dataclass
class Bench:
    store: RedisStore
    reader: CoalescingReader
    admin: redis.Redis


@pytest.fixture
async def bench(redis_server: RedisServer, redis_url: str) -> AsyncIterator[Bench]:
    store = RedisStore(redis_url)
    admin = redis.Redis(port=redis_server.port)
    try:
        await seed(store, admin)
        await store.ping()  # the pooled connection exists: its handshake is not counted
        admin.config_resetstat()
        yield Bench(store, CoalescingReader(store), admin)
    finally:
        admin.close()
        await store.close()


async def test_concurrent_reads_share_one_mget_and_each_gets_the_rows_written(
    bench: Bench,
) -> None:
    asks = [
        ((STATS, PROFILE), ["u1", "u2"]),
        ((STATS, PROFILE), ["u14", "ghost", "u0", "u1"]),  # a missing profile, a stale stat
        ((STATS,), ["u5"]),
        ((RISK, STATS), ["u3", "u4", "u6"]),  # stale risk rows get the defaults
        ((STATS, PROFILE), ["u19", "u19"]),
        ((PROFILE,), ["u7", "u8", "u9"]),
    ]
    got = await asyncio.gather(*(bench.reader.read(v, ids, now_ms=NOW) for v, ids in asks))
    assert command_calls(bench.admin) == {"mget": 1}
    assert (bench.reader.round_trips, bench.reader.reads) == (1, len(asks))
    for (views, ids), rows in zip(asks, got, strict=True):
        assert_rows(rows, expected(views, ids, NOW))
    # The cases above are not vacuous: every status turns up.
    seen = {int(s) for rows in got for r in rows for s in r.status}
    assert seen == {Status.FRESH, Status.STALE, Status.MISSING, Status.DEFAULTED}


async def test_each_caller_is_judged_at_its_own_now(bench: Bench) -> None:
    early, late = await asyncio.gather(
        bench.reader.read([STATS], ["u1", "u2"], now_ms=NOW),
        bench.reader.read([STATS], ["u1", "u2"], now_ms=NOW + HOUR_MS),
    )
    assert command_calls(bench.admin) == {"mget": 1}
    assert early[0].status.tolist() == [Status.FRESH, Status.FRESH]
    assert late[0].status.tolist() == [Status.STALE, Status.STALE]


async def test_one_callers_missing_entity_fails_that_caller_alone(bench: Bench) -> None:
    first, missing, last = await asyncio.gather(
        outcome(bench.reader.read([RISK, STATS], ["u1", "u2"], now_ms=NOW)),
        outcome(bench.reader.read([RISK, STATS], ["u5", "u18", "ghost"], now_ms=NOW)),
        outcome(bench.reader.read([RISK, STATS], ["u17"], now_ms=NOW)),
    )
    assert command_calls(bench.admin) == {"mget": 1}
    assert isinstance(missing, EntityNotFound)
    assert str(missing) == "feature view 'risk' has no row for user_id 'u18' (and 1 more)"
    assert_outcome(first, expected([RISK, STATS], ["u1", "u2"], NOW))
    assert_outcome(last, expected([RISK, STATS], ["u17"], NOW))


async def test_a_row_of_an_old_schema_fails_only_the_callers_that_read_it(bench: Bench) -> None:
    clean, stale_schema, other_view = await asyncio.gather(
        outcome(bench.reader.read([STATS, PROFILE], ["u1"], now_ms=NOW)),
        outcome(bench.reader.read([STATS, PROFILE], ["u2", "old"], now_ms=NOW)),
        outcome(bench.reader.read([PROFILE], ["old"], now_ms=NOW)),
    )
    assert command_calls(bench.admin) == {"mget": 1}
    assert isinstance(stale_schema, SchemaMismatch) and "'txn_stats'" in str(stale_schema)
    assert_outcome(clean, expected([STATS, PROFILE], ["u1"], NOW))
    assert_outcome(other_view, expected([PROFILE], ["old"], NOW))


async def test_a_lone_read_is_one_mget_and_gets_the_rows_written(bench: Bench) -> None:
    rows = await bench.reader.read([STATS, PROFILE], ["u3", "ghost"], now_ms=NOW)
    assert command_calls(bench.admin) == {"mget": 1}
    assert_rows(rows, expected([STATS, PROFILE], ["u3", "ghost"], NOW))


async def test_reads_arriving_while_a_round_trip_is_out_share_the_next_one(bench: Bench) -> None:
    # The server holds every client's commands for a while: the first MGET stays out.
    bench.admin.client_pause(300)
    first = asyncio.create_task(bench.reader.read([STATS], ["u1"], now_ms=NOW))
    later = []
    for ids in (["u2"], ["u3", "u4"], ["u5"]):
        await asyncio.sleep(0.02)  # each arrives in a turn of its own
        later.append(asyncio.create_task(bench.reader.read([STATS], ids, now_ms=NOW)))
    await asyncio.gather(first, *later)
    assert command_calls(bench.admin)["mget"] == 2
    assert (bench.reader.round_trips, bench.reader.reads) == (2, 4)
    rows = await later[1]
    assert rows[0].values.tolist() == [[6.5, 7.5], [8.5, 9.5]]


async def test_a_caller_cancelled_while_waiting_leaves_the_others_their_rows(bench: Bench) -> None:
    keep = asyncio.create_task(bench.reader.read([STATS], ["u1"], now_ms=NOW))
    drop = asyncio.create_task(bench.reader.read([STATS], ["u2"], now_ms=NOW))
    await asyncio.sleep(0)  # both are waiting for the round trip
    drop.cancel()
    rows = await keep
    assert drop.cancelled()
    assert rows[0].values.tolist() == [[2.5, 3.5]]
    assert bench.reader.reads == 1


async def test_reads_of_no_entities_or_no_views_make_no_round_trip(bench: Bench) -> None:
    [rows] = await bench.reader.read([STATS], [], now_ms=NOW)
    assert rows.values.shape == (0, 2)
    assert await bench.reader.read([], ["u1"], now_ms=NOW) == []
    assert command_calls(bench.admin) == {}


async def test_a_failed_round_trip_fails_every_caller_with_store_unavailable(
    doomed_redis: RedisServer,
) -> None:
    store = RedisStore(doomed_redis.url, socket_timeout=0.5)
    reader = CoalescingReader(store)
    try:
        await store.write(STATS, ["u1"], np.array([[1, 2]]), NOW)
        doomed_redis.stop()
        started = time.monotonic()
        got = await asyncio.gather(
            *(outcome(reader.read([STATS], [f"u{i}"], now_ms=NOW)) for i in range(5))
        )
        assert time.monotonic() - started < 0.5
        for exc in got:
            assert isinstance(exc, StoreUnavailable)
            assert str(exc) == f"feature store {doomed_redis.url} unavailable: Connection refused"
        assert len({id(exc) for exc in got}) == 5  # each caller raises its own copy
        assert reader.round_trips == 0
    finally:
        await reader.close()
        await store.close()


# ---- property: any mix of plans, sizes, clocks and arrival turns ---------------------

PROPERTY_DB = 5


@dataclass(frozen=True)
class Ask:
    plan: int
    entity_ids: tuple[str, ...]
    now_ms: int | None
    turns: int  # event-loop turns before it reads


asks = st.builds(
    Ask,
    plan=st.integers(0, len(PLANS) - 1),
    entity_ids=st.lists(st.sampled_from(POOL), min_size=0, max_size=7).map(tuple),
    now_ms=st.sampled_from([NOW, NOW, NOW + HOUR_MS // 2, NOW + 2 * HOUR_MS, None]),
    turns=st.sampled_from([0, 0, 0, 1, 2, 5]),
)


@pytest.fixture(scope="module")
def property_url(redis_server: RedisServer) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/{PROPERTY_DB}"
    admin = redis.Redis(port=redis_server.port, db=PROPERTY_DB)

    async def write() -> None:
        store = RedisStore(url)
        try:
            await seed(store, admin)
        finally:
            await store.close()

    try:
        admin.flushdb()
        asyncio.run(write())
    finally:
        admin.close()
    return url


async def interleave(url: str, plan: list[Ask], max_in_flight: int) -> None:
    store = RedisStore(url)
    reader = CoalescingReader(store, max_in_flight=max_in_flight)

    async def ask(a: Ask) -> Outcome:
        for _ in range(a.turns):
            await asyncio.sleep(0)
        return await outcome(reader.read(PLANS[a.plan], a.entity_ids, a.now_ms))

    try:
        got = await asyncio.gather(*(ask(a) for a in plan))
        for a, result in zip(plan, got, strict=True):
            assert_outcome(result, expected(PLANS[a.plan], a.entity_ids, a.now_ms))
        asked = sum(1 for a in plan if a.entity_ids)
        assert reader.reads == asked
        if all(a.turns == 0 for a in plan) and asked:
            assert reader.round_trips == 1
    finally:
        await reader.close()
        await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(asks, min_size=1, max_size=12), max_in_flight=st.sampled_from([1, 2, 64]))
def test_every_caller_gets_its_own_rows_as_written(
    property_url: str, plan: list[Ask], max_in_flight: int
) -> None:
    asyncio.run(interleave(property_url, plan, max_in_flight))


# ---- the gateway reads through it -----------------------------------------------------


async def test_gateway_predictions_of_concurrent_requests_share_one_mget(
    redis_server: RedisServer, redis_url: str
) -> None:
    from feature_store.synthetic import seed_synthetic
    from feature_store.views import load_views
    from service.pipeline.request import RequestContext
    from service.server import serving
    from service.settings import Settings

    views = load_views(MODELS_DIR / "feature_views.yaml")
    store = RedisStore(redis_url)
    try:
        await seed_synthetic(store, views.values(), 100)
    finally:
        await store.close()
    admin = redis.Redis(port=redis_server.port)
    answers: dict[bool, list[list[float]]] = {}
    try:
        for coalesce in (False, True):
            config = Settings(
                models=MODELS_DIR, feature_store=redis_url, audit="none", coalesce_reads=coalesce
            )
            async with serving(config) as (pipeline, _):
                await pipeline.ready()  # the pooled connection exists
                admin.config_resetstat()
                predictions = await asyncio.gather(
                    *(
                        pipeline.predict(
                            RequestContext("predict", "fraud_mlp", "2"), [f"u{i}", "u99"], None, {}
                        )
                        for i in range(16)
                    )
                )
                mgets = command_calls(admin).get("mget", 0)
            assert mgets == (1 if coalesce else 16)
            answers[coalesce] = [p.outputs["probability"].reshape(-1).tolist() for p in predictions]
    finally:
        admin.close()
    assert answers[True] == answers[False]
