"""The audit log on a real redis-server: exact counts, a restart mid-run, retention, a hung
server, tail and export through a consumer group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis

from service.audit import AuditLog, AuditRecord, decode_record, open_audit
from service.audit.reader import AuditSourceError, export, tail
from service.audit.record import EncodedRecord
from service.audit.sinks import RedisStreamSink
from tests.conftest import RedisServer, start_redis
from tests.unit.test_audit_record import assert_same, make_record


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def stream_ids(url: str, model: str = "fraud_mlp") -> list[str]:
    with client(url) as r:
        return [f[b"request_id"].decode() for _, f in r.xrange(f"audit:{model}")]


async def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    # Polled: the state watched (stats, Redis, files) announces no event.
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def new_log(url: str, tmp_path: Path, max_retry_s: float = 5.0) -> AuditLog:
    return AuditLog(
        RedisStreamSink(url),
        spill_path=tmp_path / "spill" / "x.spill",
        retry_s=0.05,
        max_retry_s=max_retry_s,
    )


async def test_n_submitted_records_are_exactly_n_stream_entries_with_their_ids(
    redis_url: str, tmp_path: Path
) -> None:
    log = open_audit(redis_url, spill_dir=tmp_path)
    assert log is not None
    await log.start()
    sent = [
        make_record(i, version=str(i % 2), flags=["nan:score"] if i % 7 == 0 else [])
        for i in range(1000)
    ]
    for i, r in enumerate(sent):
        log.submit(r)
        if i % 100 == 0:
            await asyncio.sleep(0)
    await log.close()

    assert stream_ids(redis_url) == [r.request_id for r in sent]
    with client(redis_url) as r:
        [(_, fields)] = r.xrange("audit:fraud_mlp", count=1)
    assert fields[b"version"] == b"0" and fields[b"route"] == b"primary"
    assert fields[b"flags"] == b"nan:score" and int(fields[b"ts_ms"]) == sent[0].ts_ms
    assert_same(decode_record(fields[b"record"]), sent[0])
    assert log.stats == {"queued": 1000, "written": 1000, "spilled": 0, "drained": 0, "dropped": 0}


async def test_a_redis_restart_mid_run_loses_nothing_and_export_has_no_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both servers run in tmp_path: the first saves its dataset there on SIGTERM, the second
    # loads it, as a Redis with persistence would.
    monkeypatch.chdir(tmp_path)
    server = start_redis()
    port = server.port
    servers: list[RedisServer] = [server]
    try:
        with client(server.url) as r:
            r.config_set("save", "3600 1")
        log = new_log(server.url, tmp_path, max_retry_s=0.2)
        await log.start()
        sent: list[str] = []

        async def produce(n: int) -> None:
            for _ in range(n):
                rec = make_record(len(sent))
                log.submit(rec)
                sent.append(rec.request_id)
                await asyncio.sleep(0.0002)

        await produce(300)
        # Killed while records keep coming in and batches are in flight.
        await asyncio.gather(asyncio.to_thread(server.stop), produce(300))
        await produce(300)
        assert log.stats["spilled"] > 0
        restarted, _ = await asyncio.gather(asyncio.to_thread(start_redis, port), produce(300))
        servers.append(restarted)
        await produce(300)
        await log.close()

        stats = log.stats
        assert stats["queued"] == len(sent) == 1500
        assert stats["dropped"] == 0
        assert stats["written"] + stats["spilled"] == 1500
        assert stats["drained"] == stats["spilled"]

        in_stream = stream_ids(restarted.url)
        first_seen = list(dict.fromkeys(in_stream))
        assert first_seen == sent, "every record, in submission order"
        # A batch the server applied in part before it died is retried whole: at-least-once.
        assert len(in_stream) - len(first_seen) <= 256

        to = tmp_path / "audit.parquet"
        n = await export(restarted.url, model="fraud_mlp", since_ms=None, until_ms=None, to=to)
        table = pq.read_table(to)
        assert n == table.num_rows == 1500
        assert sorted(table.column("request_id").to_pylist()) == sorted(sent)
    finally:
        for s in servers:
            s.stop()


async def test_an_error_reply_spills_the_batch_and_the_connection_stays_usable(
    redis_url: str, tmp_path: Path
) -> None:
    with client(redis_url) as r:
        r.set("audit:fraud_mlp", "not a stream")
    log = new_log(redis_url, tmp_path)
    await log.start()
    for i in range(10):
        log.submit(make_record(i))
    await eventually(lambda: log.stats["spilled"] == 10)
    with client(redis_url) as r:
        r.delete("audit:fraud_mlp")
    for i in range(10, 20):
        log.submit(make_record(i))
    await log.close()
    assert stream_ids(redis_url) == [f"req-{i:08d}" for i in range(20)]
    assert log.stats["dropped"] == 0


async def test_maxlen_retention_trims_the_stream_approximately(redis_url: str) -> None:
    sink = RedisStreamSink(redis_url, maxlen=500)
    encoded = [EncodedRecord.of(make_record(i)) for i in range(2000)]
    for i in range(0, 2000, 250):
        await sink.write(encoded[i : i + 250])
    await sink.close()
    with client(redis_url) as r:
        length = r.xlen("audit:fraud_mlp")
        newest = r.xrevrange("audit:fraud_mlp", count=1)[0][1][b"request_id"]
    # MAXLEN ~ trims whole macro nodes only (100 entries each by default).
    assert 500 <= length < 700
    assert newest == b"req-00001999"


async def test_minid_retention_drops_entries_older_than_the_age(redis_url: str) -> None:
    with client(redis_url) as r:
        # Old entries as if written an hour ago, in more than one macro node.
        hour_ago = int(time.time() * 1000) - 3_600_000
        for i in range(300):
            r.xadd("audit:fraud_mlp", {"request_id": f"old-{i}"}, id=f"{hour_ago}-{i}")
    sink = RedisStreamSink.from_url(f"{redis_url}?minid_age_s=60")
    assert sink.minid_age_s == 60
    await sink.write([EncodedRecord.of(make_record(i)) for i in range(5)])
    await sink.close()
    assert stream_ids(redis_url) == [f"req-{i:08d}" for i in range(5)]


async def test_close_gives_up_on_a_hung_server_within_its_timeout_and_keeps_the_records(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    log = new_log(redis_url, tmp_path)
    await log.start()
    with client(redis_url) as r:
        r.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
    for i in range(50):
        log.submit(make_record(i))
    began = time.monotonic()
    await log.close(timeout_s=0.5)
    assert time.monotonic() - began < 3.0, "not waiting for the server to answer"
    assert log.stats["dropped"] == 0
    with client(redis_url) as r:
        r.execute_command("CLIENT", "UNPAUSE")

    again = new_log(redis_url, tmp_path)
    await again.start()
    await again.close()
    assert list(dict.fromkeys(stream_ids(redis_url))) == [f"req-{i:08d}" for i in range(50)]


async def collect(records: AsyncIterator[AuditRecord], n: int) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    async for r in records:
        out.append(r)
        if len(out) == n:
            break
    return out


async def test_tail_filters_on_version_route_and_flag(redis_url: str, tmp_path: Path) -> None:
    log = new_log(redis_url, tmp_path)
    await log.start()
    for i in range(40):
        log.submit(
            make_record(
                i,
                version="2" if i % 2 else "1",
                route="canary" if i % 4 == 1 else "primary",
                flags=["out_of_range:score"] if i % 5 == 0 else [],
            )
        )
    log.submit(make_record(99, model="other"))
    await log.close()

    async def ids(**kw: object) -> list[int]:
        found = [r async for r in tail(redis_url, model="fraud_mlp", follow=False, **kw)]  # type: ignore[arg-type]
        return [int(r.request_id[4:]) for r in found]

    assert await ids() == list(range(40))
    assert await ids(version="2") == list(range(1, 40, 2))
    assert await ids(version="2", route="canary") == list(range(1, 40, 4))
    assert await ids(flag="out_of_range:score") == list(range(0, 40, 5))
    assert await ids(version="1", last=3) == [34, 36, 38]
    assert await ids(route="shadow") == []


async def test_tail_follow_yields_records_written_after_it_started(
    redis_url: str, tmp_path: Path
) -> None:
    log = new_log(redis_url, tmp_path)
    await log.start()
    log.submit(make_record(0))
    await eventually(lambda: log.stats["written"] == 1)

    follower = asyncio.create_task(
        collect(tail(redis_url, model="fraud_mlp", follow=True, last=1, route="canary"), 3)
    )
    with client(redis_url) as r:
        await eventually(lambda: any(c["cmd"] == "xread" for c in r.client_list()))
    for i in range(1, 7):
        log.submit(make_record(i, route="canary" if i % 2 else "primary"))
    got = await asyncio.wait_for(follower, timeout=5)
    await log.close()
    assert [r.request_id for r in got] == ["req-00000001", "req-00000003", "req-00000005"]


async def test_export_deduplicates_acks_and_a_second_run_exports_nothing_new(
    redis_url: str, tmp_path: Path
) -> None:
    log = new_log(redis_url, tmp_path)
    await log.start()
    ts = 1_700_000_000_000
    for i in range(100):
        log.submit(make_record(i, ts_ms=ts))
    log.submit(make_record(50, ts_ms=ts))  # an at-least-once duplicate
    await log.close()

    async def run(to: Path, group: str = "export") -> int:
        return await export(
            redis_url, model="fraud_mlp", since_ms=ts + 10, until_ms=ts + 90, to=to, group=group
        )

    first = tmp_path / "first.parquet"
    assert await run(first) == 80
    table = pq.read_table(first)
    assert table.column("request_id").to_pylist() == [f"req-{i:08d}" for i in range(10, 90)]
    assert table.column("outputs")[0].as_py()[0][0] == "score"
    assert table.column("ts_ms").to_pylist() == list(range(ts + 10, ts + 90))
    with client(redis_url) as r:
        assert r.xpending("audit:fraud_mlp", "export")["pending"] == 0

    second = tmp_path / "second.parquet"
    assert await run(second) == 0
    assert pq.read_table(second).num_rows == 0
    # Another group is another cursor: history again.
    assert await run(second, group="audit-2024") == 80


async def test_export_and_tail_of_a_model_with_no_stream_are_errors_and_make_none(
    redis_url: str, tmp_path: Path
) -> None:
    to = tmp_path / "out.parquet"
    with pytest.raises(AuditSourceError, match="no audit record of model 'fraud_mlpp'"):
        await export(redis_url, model="fraud_mlpp", since_ms=None, until_ms=None, to=to)
    assert not to.exists()
    with client(redis_url) as r:
        assert r.exists("audit:fraud_mlpp") == 0
    with pytest.raises(AuditSourceError, match="no audit record of model 'fraud_mlpp'"):
        await anext(tail(redis_url, model="fraud_mlpp", follow=False))


async def test_export_claims_what_a_dead_consumer_left_pending(
    redis_url: str, tmp_path: Path
) -> None:
    log = new_log(redis_url, tmp_path)
    await log.start()
    for i in range(30):
        log.submit(make_record(i))
    await log.close()
    with client(redis_url) as r:
        r.xgroup_create("audit:fraud_mlp", "export", id="0")
        # A consumer that read 20 entries and died before acking them.
        r.xreadgroup("export", "dead", {"audit:fraud_mlp": ">"}, count=20)

    to = tmp_path / "out.parquet"

    async def run(min_idle_ms: int) -> int:
        return await export(
            redis_url,
            model="fraud_mlp",
            since_ms=None,
            until_ms=None,
            to=to,
            min_idle_ms=min_idle_ms,
        )

    # Not idle long enough yet: only the 10 undelivered entries.
    assert await run(min_idle_ms=60_000) == 10
    assert await run(min_idle_ms=0) == 20
    assert sorted(pq.read_table(to).column("request_id").to_pylist()) == [
        f"req-{i:08d}" for i in range(20)
    ]
    with client(redis_url) as r:
        assert r.xpending("audit:fraud_mlp", "export")["pending"] == 0
