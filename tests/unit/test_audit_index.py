"""The prediction index label feedback joins through: the file sink's bounded in-process index,
and a Redis index whose server does not answer."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.processes import free_port
from service.audit.index import MemoryIndex, RedisIndex
from service.audit.record import EncodedRecord
from service.audit.sinks.redis_stream import commands, connect, xadd
from service.audit.streams import parse
from service.protocol.errors import Unavailable
from tests.unit.test_audit_record import make_record


async def test_the_memory_index_keeps_the_newest_entries_only() -> None:
    index = MemoryIndex(max_entries=3)
    records = [make_record(i) for i in range(5)]
    for r in records:
        index.add(EncodedRecord.of(r))

    assert await index.by_id("fraud_mlp", "req-00000001") is None
    found = await index.by_id("fraud_mlp", "req-00000004")
    assert found is not None and found.version == "1" and found.route == "primary"
    np.testing.assert_array_equal(found.outputs["score"], records[4].outputs["score"])


async def test_the_memory_index_finds_the_closest_prediction_of_an_entity() -> None:
    index = MemoryIndex()
    for i, ts in enumerate((1_000, 5_000, 9_000)):
        index.add(EncodedRecord.of(make_record(i, ts_ms=ts - i, rows=3)))
    # Entity user:2 is in all three records (rows user:i .. user:i+2).
    found = await index.near("fraud_mlp", "user:2", ts_ms=5_400, within_ms=1_000)
    assert found is not None and found.request_id == "req-00000001"
    assert await index.near("fraud_mlp", "user:2", ts_ms=7_000, within_ms=1_000) is None
    assert await index.near("other", "user:2", ts_ms=5_000, within_ms=1_000) is None


async def test_shadow_and_feedback_records_are_not_indexed() -> None:
    index = MemoryIndex()
    for i, route in enumerate(("shadow", "feedback")):
        index.add(EncodedRecord.of(make_record(i, route=route)))
    assert await index.by_id("fraud_mlp", "req-00000000") is None
    assert await index.by_id("fraud_mlp", "req-00000001") is None


async def test_a_redis_index_that_cannot_reach_its_server_is_unavailable() -> None:
    target = parse(f"redis://127.0.0.1:{free_port()}/0")
    index = RedisIndex(connect(target, timeout_s=0.5), target)
    try:
        with pytest.raises(Unavailable):
            await index.by_id("fraud_mlp", "req-1")
        with pytest.raises(Unavailable):
            await index.near("fraud_mlp", "user:1", ts_ms=1_000, within_ms=10)
    finally:
        await index.close()


def test_a_redis_audit_log_keeps_no_id_index_unless_asked() -> None:
    record = EncodedRecord.of(make_record())

    default = parse("redis://127.0.0.1:6379/0")
    asked = parse("redis://127.0.0.1:6379/0?index_ttl_s=600")

    assert commands(record, "audit:m", ("MAXLEN", "~", 10), default.index_ttl_s) == [
        xadd(record, "audit:m", ("MAXLEN", "~", 10))
    ]
    assert len(commands(record, "audit:m", ("MAXLEN", "~", 10), asked.index_ttl_s)) == 2
