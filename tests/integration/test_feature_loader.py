"""Bulk loading from CSV and Parquet, and deterministic synthetic seeding, into real stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import redis

from feature_store.errors import ViewConfigError
from feature_store.loader import load_file
from feature_store.memory_store import MemoryStore
from feature_store.redis_store import RedisStore
from feature_store.store import Status
from feature_store.synthetic import seed_synthetic, synthetic_rows
from feature_store.views import FeatureView
from tests.conftest import RedisServer

NOW = 1_700_000_000_000
VIEW = FeatureView.model_validate(
    {
        "name": "txn_stats",
        "entity": "user_id",
        "ttl_s": 3600,
        "features": [{"name": "txn_count_1h"}, {"name": "amount_sum_1h", "default": -1}],
    }
)
INT_VIEW = FeatureView.model_validate(
    {"name": "counts", "entity": "user_id", "dtype": "int64", "features": [{"name": "n"}]}
)

Writer = Callable[[pa.Table, Path], None]


def write_csv(table: pa.Table, path: Path) -> None:
    pacsv.write_csv(table, path)


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, row_group_size=4)


FORMATS = [
    pytest.param(".csv", write_csv, id="csv"),
    pytest.param(".parquet", write_parquet, id="parquet"),
]


def table_of(n: int, **extra: Any) -> pa.Table:
    return pa.table(
        {
            "user_id": [f"{i:03d}" for i in range(n)],
            "txn_count_1h": pa.array(np.arange(n, dtype=np.float64)),
            "amount_sum_1h": pa.array(np.arange(n) * 2.5),
            "comment": ["ignored"] * n,
            **extra,
        }
    )


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize(("suffix", "write"), FORMATS)
async def test_file_loads_every_row_in_batches(
    tmp_path: Path, redis_store: RedisStore, suffix: str, write: Writer
) -> None:
    path = tmp_path / f"stats{suffix}"
    write(table_of(11), path)
    assert await load_file(redis_store, VIEW, path, batch_rows=3, progress=False) == 11
    ids = [f"{i:03d}" for i in range(11)]
    [rows] = await redis_store.read([VIEW], ids)
    assert rows.values.tolist() == [[i, i * 2.5] for i in range(11)]
    assert rows.counts()["fresh"] == 11


@pytest.mark.parametrize(("suffix", "write"), FORMATS)
async def test_event_time_column_sets_each_rows_freshness(
    tmp_path: Path, redis_store: RedisStore, suffix: str, write: Writer
) -> None:
    path = tmp_path / f"stats{suffix}"
    write(table_of(2, ts=[NOW - 7_200_000, NOW]), path)
    await load_file(redis_store, VIEW, path, event_time_column="ts", progress=False)
    [rows] = await redis_store.read([VIEW], ["000", "001"], now_ms=NOW)
    assert rows.status.tolist() == [Status.STALE, Status.FRESH]
    assert rows.event_time_ms.tolist() == [NOW - 7_200_000, NOW]


async def test_timestamp_event_times_are_converted_to_epoch_ms(tmp_path: Path) -> None:
    path = tmp_path / "stats.parquet"
    stamps = pa.array([NOW * 1000, (NOW + 1) * 1000], pa.timestamp("us", tz="UTC"))
    pq.write_table(table_of(2, ts=stamps), path)
    store = MemoryStore()
    await load_file(store, VIEW, path, event_time_column="ts", progress=False)
    [rows] = await store.read([VIEW], ["000", "001"], now_ms=NOW)
    assert rows.event_time_ms.tolist() == [NOW, NOW + 1]


async def test_entity_column_can_be_named_and_null_features_get_their_default(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stats.csv"
    path.write_text("customer,txn_count_1h,amount_sum_1h\n007,1,\n008,,4.5\n")
    store = MemoryStore()
    await load_file(store, VIEW, path, entity_column="customer", progress=False)
    [rows] = await store.read([VIEW], ["007", "008"])
    assert rows.values.tolist() == [[1, -1], [0, 4.5]]
    assert rows.counts()["fresh"] == 2


@pytest.mark.parametrize(("suffix", "write"), FORMATS)
async def test_missing_column_is_named_with_the_file_and_nothing_is_written(
    tmp_path: Path, redis_url: str, redis_store: RedisStore, suffix: str, write: Writer
) -> None:
    path = tmp_path / f"stats{suffix}"
    write(table_of(3).drop_columns(["amount_sum_1h"]), path)
    with pytest.raises(ViewConfigError, match=rf"{path}: missing column\(s\) 'amount_sum_1h'"):
        await load_file(redis_store, VIEW, path, progress=False)
    with pytest.raises(ViewConfigError, match=r"missing column\(s\) 'amount_sum_1h', 'when'"):
        await load_file(redis_store, VIEW, path, event_time_column="when", progress=False)
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.dbsize() == 0


async def test_fractional_values_in_an_int64_view_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "counts.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "n": [1.5]}), path)
    with pytest.raises(ViewConfigError, match=rf"{path}: row 1: column 'n': value 1.5: not int64"):
        await load_file(MemoryStore(), INT_VIEW, path, progress=False)


async def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"stats.json: unsupported file type '.json'"):
        await load_file(MemoryStore(), VIEW, path, progress=False)


def test_synthetic_rows_are_the_same_whatever_the_chunking() -> None:
    ids, values = synthetic_rows(VIEW, 10, seed=7)
    assert ids == [f"u{i}" for i in range(10)]
    head = synthetic_rows(VIEW, 4, seed=7)[1]
    tail_ids, tail = synthetic_rows(VIEW, 6, seed=7, start=4)
    assert tail_ids[0] == "u4"
    assert np.array_equal(values, np.concatenate([head, tail]))
    assert not np.array_equal(values, synthetic_rows(VIEW, 10, seed=8)[1])
    assert values.dtype == np.float32 and (values >= 0).all()
    assert synthetic_rows(INT_VIEW, 3, seed=7)[1].dtype == np.int64


async def test_seed_synthetic_writes_the_same_rows_whatever_the_store_and_batch_size(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    views = [VIEW, INT_VIEW]
    ids = [f"u{i}" for i in range(1000)]
    await seed_synthetic(redis_store, views, 1000, seed=3, batch_rows=300)
    memory = MemoryStore()
    await seed_synthetic(memory, views, 1000, seed=3, batch_rows=1000)
    with redis.Redis(port=redis_server.port) as admin:
        assert admin.dbsize() == 2000
    from_redis = await redis_store.read(views, ids)
    from_memory = await memory.read(views, ids)
    for view, a, b in zip(views, from_redis, from_memory, strict=True):
        assert a.counts()["fresh"] == 1000
        assert np.array_equal(a.values, b.values)
        assert np.array_equal(a.values, synthetic_rows(view, 1000, seed=3)[1])
