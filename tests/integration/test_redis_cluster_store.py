"""The Redis Cluster store against a real 3-master cluster: the rows a single server serves,
one round trip per node, reads through a slot migration, a node down and back, bulk loads,
and the gateway's answers with a node down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from prometheus_client import REGISTRY
from redis.crc import key_slot

from feature_store.coalescing import CoalescingReader
from feature_store.codec import row_key
from feature_store.errors import StoreUnavailable
from feature_store.loader import load_file
from feature_store.open import open_store
from feature_store.redis_cluster_store import RedisClusterStore
from feature_store.store import Lookup, OnlineStore, Status, ViewRows
from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from loadtests.processes import HOST, RedisCluster
from service.server import create_app
from service.settings import Settings
from tests.conftest import MODELS_DIR, REPO_ROOT

VIEWS = load_views(MODELS_DIR / "feature_views.yaml")
BOTH = list(VIEWS.values())  # txn_stats and user_profile, both keyed by user_id
NOW = 1_700_000_000_000
SEED = 7


class Trips:
    """Counts a store's round trips, as the gateway's metric does."""

    def __init__(self, store: OnlineStore) -> None:
        self.n = 0
        store.on_round_trip = self.add

    def add(self) -> None:
        self.n += 1


def written(n: int, start: int = 0) -> dict[str, tuple[list[str], npt.NDArray[Any]]]:
    """The rows the tests write, per view: the oracle reads are checked against."""
    return {view.name: synthetic_rows(view, n, SEED, start=start) for view in BOTH}


async def write_all(store: OnlineStore, rows: dict[str, tuple[list[str], Any]]) -> None:
    for view in BOTH:
        ids, values = rows[view.name]
        await store.write(view, ids, values, NOW)


def assert_rows_are(
    got: Sequence[ViewRows], rows: dict[str, tuple[list[str], Any]], ids: Sequence[str]
) -> None:
    """`got` holds, per view, exactly the values written for `ids`, all fresh."""
    for view_rows in got:
        all_ids, values = rows[view_rows.view.name]
        index = [all_ids.index(entity_id) for entity_id in ids]
        np.testing.assert_array_equal(view_rows.values, values[index])
        assert (view_rows.status == Status.FRESH).all()
        assert (view_rows.event_time_ms == NOW).all()


def slot_owners(cluster: RedisCluster) -> dict[int, int]:
    """Slot -> index of the node serving it, from CLUSTER NODES (not from the client)."""
    owners: dict[int, int] = {}
    running = next(p for p in cluster.ports if cluster.cli(p, "ping").strip() == "PONG")
    for line in cluster.cli(running, "cluster", "nodes").splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for span in fields[8:]:
            if span.startswith("["):  # a slot being migrated, listed by its two nodes
                continue
            first, _, last = span.partition("-")
            for slot in range(int(first), int(last or first) + 1):
                owners[slot] = cluster.ports.index(port)
    return owners


def node_of(owners: dict[int, int], entity_id: str) -> int:
    return owners[key_slot(row_key(BOTH[0], entity_id).encode())]


def dbsizes(cluster: RedisCluster) -> list[int]:
    return [int(cluster.cli(port, "dbsize")) for port in cluster.ports]


@pytest.fixture
async def store(cluster: RedisCluster) -> AsyncIterator[RedisClusterStore]:
    opened = open_store(cluster.url)
    assert isinstance(opened, RedisClusterStore)
    assert opened.kind == "redis-cluster"
    try:
        yield opened
    finally:
        await opened.close()


async def test_reads_over_every_node_match_a_single_server_in_one_trip_per_node(
    store: RedisClusterStore, cluster: RedisCluster, redis_url: str
) -> None:
    rows = written(64)
    ids = rows[BOTH[0].name][0]
    single = open_store(redis_url)
    try:
        await write_all(store, rows)
        await write_all(single, rows)
        owners = slot_owners(cluster)
        assert {node_of(owners, entity_id) for entity_id in ids} == {0, 1, 2}
        assert sum(dbsizes(cluster)) == 2 * 64 and min(dbsizes(cluster)) > 0

        cluster_trips, single_trips = Trips(store), Trips(single)
        wanted = [*reversed(ids), "nobody"]  # request order, and a missing entity
        got = await store.read(BOTH, wanted, now_ms=NOW + 1000)
        alone = await single.read(BOTH, wanted, now_ms=NOW + 1000)
        assert (cluster_trips.n, single_trips.n) == (3, 1)
        found = [ViewRows(r.view, r.values[:-1], r.status[:-1], r.event_time_ms[:-1]) for r in got]
        assert_rows_are(found, rows, wanted[:-1])
        for mine, theirs in zip(got, alone, strict=True):
            np.testing.assert_array_equal(mine.values, theirs.values)
            np.testing.assert_array_equal(mine.status, theirs.status)
            np.testing.assert_array_equal(mine.event_time_ms, theirs.event_time_ms)
        assert got[0].status[-1] == Status.MISSING

        # Concurrent reads coalesced into one batch: still one trip per node for them all.
        reader = CoalescingReader(store)
        cluster_trips.n = 0
        groups = [ids[i : i + 8] for i in range(0, 64, 8)]
        answers = await asyncio.gather(*(reader.read(BOTH, group, NOW) for group in groups))
        assert (reader.round_trips, cluster_trips.n) == (1, 3)
        for group, answer in zip(groups, answers, strict=True):
            assert_rows_are(answer, rows, group)
    finally:
        await single.close()


def ids_in_slot(slot: int, n: int) -> list[str]:
    found = (f"m{i}" for i in count() if key_slot(f"user_id:m{i}".encode()) == slot)
    return [next(found) for _ in range(n)]


async def test_reads_during_a_slot_migration_all_succeed_with_the_rows_written(
    store: RedisClusterStore, cluster: RedisCluster
) -> None:
    rows = written(32)
    ids = rows[BOTH[0].name][0]
    slot = key_slot(row_key(BOTH[0], ids[0]).encode())
    moving = ids_in_slot(slot, 6)
    moving_rows = {view.name: (moving, synthetic_rows(view, 6, SEED + 1)[1]) for view in BOTH}
    await write_all(store, rows)
    await write_all(store, moving_rows)
    owners = slot_owners(cluster)
    source = owners[slot]
    target = (source + 1) % 3
    ports = cluster.ports
    node_ids = [cluster.cli(port, "cluster", "myid").strip() for port in ports]
    admin = [redis.Redis(host=HOST, port=port) for port in ports]

    rounds = [0, 0, 0]  # reads made, per reader
    read_done = asyncio.Condition()
    failures: list[BaseException] = []
    done = asyncio.Event()

    async def reader(k: int, wanted: list[str], of: dict[str, tuple[list[str], Any]]) -> None:
        while not done.is_set():
            try:
                assert_rows_are(await store.read(BOTH, wanted, NOW + 1000), of, wanted)
            except Exception as exc:
                failures.append(exc)
            async with read_done:
                rounds[k] += 1
                read_done.notify_all()

    async def after_rounds(n: int) -> None:
        """Until every reader has made `n` more reads: each state of the slot is read in."""
        until = min(rounds) + n
        async with read_done:
            await read_done.wait_for(lambda: min(rounds) >= until)

    async def admin_call(node: int, *args: Any) -> Any:
        return await asyncio.to_thread(admin[node].execute_command, *args)

    readers = [
        asyncio.create_task(reader(0, moving, moving_rows)),
        asyncio.create_task(reader(1, moving[:1], moving_rows)),
        asyncio.create_task(reader(2, ids, rows)),  # this slot (ids[0]) and every other
    ]
    try:
        await after_rounds(10)
        await admin_call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", node_ids[source])
        await admin_call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", node_ids[target])
        await after_rounds(10)
        keys = await admin_call(source, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        assert len(keys) == 2 * 7  # ids[0] and the six moving ids, two views each
        half = len(keys) // 2
        for part in (keys[:half], keys[half:]):  # the slot's keys split over two nodes first
            await admin_call(source, "MIGRATE", HOST, ports[target], "", 0, 5000, "KEYS", *part)
            await after_rounds(10)
        for node in (target, source, 3 - source - target):
            await admin_call(node, "CLUSTER", "SETSLOT", slot, "NODE", node_ids[target])
        await after_rounds(10)  # the old owner answers MOVED now
    finally:
        done.set()
        await asyncio.gather(*readers)
        for client in admin:
            client.close()
    assert failures == []
    assert slot_owners(cluster)[slot] == target
    assert int(cluster.cli(ports[target], "cluster", "countkeysinslot", str(slot))) == 14
    assert int(cluster.cli(ports[source], "cluster", "countkeysinslot", str(slot))) == 0


async def until_true(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not recovered in time"
        await asyncio.sleep(0.05)


async def test_a_stopped_node_fails_only_its_reads_and_the_store_recovers_by_itself(
    store: RedisClusterStore, cluster: RedisCluster
) -> None:
    rows = written(64)
    ids = rows[BOTH[0].name][0]
    await write_all(store, rows)
    owners = slot_owners(cluster)
    down = 0  # the node of the URL the store was opened from
    on_down = [i for i in ids if node_of(owners, i) == down]
    elsewhere = [i for i in ids if node_of(owners, i) != down]
    assert on_down and elsewhere

    cluster.stop(down)
    with pytest.raises(StoreUnavailable):
        await store.read(BOTH, on_down[:1])
    with pytest.raises(StoreUnavailable):
        await store.read(BOTH, [elsewhere[0], on_down[0]])
    with pytest.raises(StoreUnavailable):
        await store.ping()
    assert_rows_are(await store.read(BOTH, elsewhere, NOW), rows, elsewhere)
    fine, failed, mixed = await store.read_many(
        [Lookup(BOTH, elsewhere, NOW), Lookup(BOTH, on_down, NOW), Lookup(BOTH, ids, NOW)]
    )
    assert isinstance(fine, list)
    assert_rows_are(fine, rows, elsewhere)
    assert isinstance(failed, StoreUnavailable) and isinstance(mixed, StoreUnavailable)

    cluster.start(down)  # empty: the test nodes keep nothing on disk
    cluster.wait_ok()

    async def reads_everything() -> bool:
        try:
            await store.read(BOTH, ids, NOW)
        except StoreUnavailable:
            return False
        return True

    await until_true(reads_everything)
    await store.ping()
    await write_all(store, rows)  # the rows the restart lost, through the same store
    assert_rows_are(await store.read(BOTH, ids, NOW), rows, ids)


async def test_a_hundred_thousand_rows_load_spread_over_the_nodes_and_read_back(
    store: RedisClusterStore, cluster: RedisCluster, tmp_path: Path
) -> None:
    view = VIEWS["txn_stats"]
    n = 100_000
    ids, values = synthetic_rows(view, n, SEED)
    table = pa.table(
        {view.entity: ids, **{name: values[:, j] for j, name in enumerate(view.feature_names)}}
    )
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    trips = Trips(store)
    started = time.perf_counter()
    assert await load_file(store, view, path, progress=False) == n
    seconds = time.perf_counter() - started
    sizes = dbsizes(cluster)
    assert sum(sizes) == n
    assert all(0.25 * n < size < 0.42 * n for size in sizes), sizes  # ~a third per node
    assert trips.n == 3 * 10  # one per node for each of the loader's 10 batches
    assert seconds < 30, f"{n} rows took {seconds:.1f}s"  # a few seconds on a CI runner
    print(f"loaded {n} rows into 3 nodes in {seconds:.2f}s ({n / seconds:,.0f} rows/s)")

    sample = ids[:: n // 1000]
    [got] = await store.read([view], sample)  # loaded now, so read now: fresh
    np.testing.assert_array_equal(got.values, values[:: n // 1000])
    assert (got.status == Status.FRESH).all()


def mlgate(*args: str) -> subprocess.CompletedProcess[str]:
    """`mlgate ARGS` of this checkout, from the repository root (its default views file)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    binary = Path(sys.executable).with_name("mlgate")
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60
    )


async def test_features_load_cli_writes_to_the_cluster_and_fails_cleanly_on_a_down_node(
    store: RedisClusterStore, cluster: RedisCluster, tmp_path: Path
) -> None:
    view = VIEWS["user_profile"]
    ids, values = synthetic_rows(view, 300, SEED)
    path = tmp_path / "profile.csv"
    header = ",".join([view.entity, *view.feature_names])
    lines = [",".join([i, *map(repr, row.tolist())]) for i, row in zip(ids, values, strict=True)]
    path.write_text("\n".join([header, *lines]) + "\n")
    argv = ["features", "load", str(path), "--view", view.name, "--feature-store", cluster.url]
    loaded = mlgate(*argv)
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 300 rows into user_profile" in loaded.stdout
    [got] = await store.read([view], ids, NOW)
    np.testing.assert_array_equal(got.values, values)

    cluster.stop(2)
    failed = mlgate(*argv)
    assert failed.returncode == 1
    assert "feature store" in failed.stderr and "unavailable" in failed.stderr
    assert "Traceback" not in failed.stderr and "fv:" not in failed.stderr
    assert "\ufffd" not in failed.stderr  # no packed row bytes (undecodable as text)


def round_trips_counted() -> float:
    value = REGISTRY.get_sample_value(
        "mlgate_feature_store_round_trips_total", {"store": "redis-cluster"}
    )
    return value or 0.0


async def test_gateway_answers_every_nodes_entities_and_503_only_for_a_stopped_nodes(
    store: RedisClusterStore, cluster: RedisCluster
) -> None:
    rows = written(64)
    ids = rows[BOTH[0].name][0]
    await write_all(store, rows)
    owners = slot_owners(cluster)
    per_node = [[i for i in ids if node_of(owners, i) == node][:2] for node in range(3)]
    settings = Settings(models=MODELS_DIR, feature_store=cluster.url, demo_entities=0, audit="none")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

            async def predict(entities: list[str]) -> httpx.Response:
                return await client.post(
                    "/v1/models/fraud_mlp:predict", json={"entities": entities}
                )

            before = round_trips_counted()
            answer = await predict([i for group in per_node for i in group])
            assert answer.status_code == 200, answer.text
            assert round_trips_counted() - before == 3  # one per node, in the metric
            for group in per_node:
                assert (await predict(group)).status_code == 200

            cluster.stop(1)
            down = await predict(per_node[1])
            assert down.status_code == 503
            body = down.json()
            assert set(body) == {"error"}
            for secret in ("redis", "127.0.0.1", str(cluster.ports[1]), "fv:", "user_id:"):
                assert secret not in body["error"]
            for node in (0, 2):
                assert (await predict(per_node[node])).status_code == 200
            assert (await predict(per_node[0] + per_node[1])).status_code == 503
