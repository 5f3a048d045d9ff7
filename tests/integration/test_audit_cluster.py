"""The audit log on a 3-master Redis Cluster: each model's stream sharded over every node,
read back through `mlgate audit export`, `mlgate audit tail` and `mlgate replay` merged by
time, exactly once; group exports that resume on every shard; a node stopped mid-writes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
import redis

from loadtests.processes import RedisCluster
from service.audit import AuditLog, AuditRecord, open_audit
from service.audit.reader import export
from service.audit.sinks import RedisClusterStreamSink
from service.audit.streams import parse
from service.cli import main
from tests.conftest import MODELS_DIR, start_gateway
from tests.integration.test_audit_path import wait_for
from tests.integration.test_audit_redis import eventually
from tests.integration.test_replay import make_records, write
from tests.unit.test_audit_record import make_record

MODELS = ("fraud_mlp", "churn", "ltv")


def records(start: int, n: int) -> list[AuditRecord]:
    return [make_record(i, model=MODELS[i % len(MODELS)]) for i in range(start, start + n)]


async def log_all(url: str, sent: list[AuditRecord], spill_dir: Path) -> AuditLog:
    log = open_audit(url, spill_dir=spill_dir)
    assert log is not None
    await log.start()
    for i, r in enumerate(sent):
        log.submit(r)
        if i % 100 == 0:
            await asyncio.sleep(0)
    await log.close()
    return log


def client(cluster: RedisCluster) -> redis.RedisCluster:
    return redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])


def stream_request_ids(cluster: RedisCluster, model: str) -> dict[str, list[str]]:
    """Every entry's request id, per shard stream of the model, in stream order."""
    with client(cluster) as r:
        return {
            key: [f[b"request_id"].decode() for _, f in r.xrange(key)]
            for key in parse(cluster.url).keys(model)
        }


def cli(*args: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 0


def stream_order(stream_ids: list[str]) -> list[tuple[int, int]]:
    return [(int(ms), int(seq)) for ms, seq in (i.split("-") for i in stream_ids)]


def test_records_land_on_every_node_and_the_cli_reads_each_once_in_time_order(
    cluster: RedisCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = records(0, 2000)
    log = asyncio.run(log_all(f"{cluster.url}?index_ttl_s=3600", sent, tmp_path / "spill"))
    assert log.stats == {"queued": 2000, "written": 2000, "spilled": 0, "drained": 0, "dropped": 0}

    keys_per_node = [cluster.cli(port, "--scan").split() for port in cluster.ports]
    streams_per_node = [sum(":id:" not in key for key in keys) for keys in keys_per_node]
    # 8 shards of each of 3 models on evenly spaced slots: 2 or 3 of each model per master.
    assert sum(streams_per_node) == 24 and min(streams_per_node) >= 6, streams_per_node
    # Beside them, one id index entry per record (service.audit.index), on its stream's node.
    assert sum(map(len, keys_per_node)) == 24 + len(sent)
    mine = [r.request_id for r in sent if r.model == "fraud_mlp"]
    shards = stream_request_ids(cluster, "fraud_mlp")
    assert len(shards) == 8
    assert all(50 < len(ids) < 120 for ids in shards.values()), "an even spread by request id"
    assert sorted(i for ids in shards.values() for i in ids) == sorted(mine)

    to = tmp_path / "fraud.parquet"
    cli("audit", "export", "--audit", cluster.url, "--model", "fraud_mlp", "--to", str(to))
    table = pq.read_table(to)
    exported = table.column("request_id").to_pylist()
    assert sorted(exported) == sorted(mine), "every record, once"
    order = stream_order(table.column("stream_id").to_pylist())
    assert order == sorted(order), "merged by time across the shards"
    assert len({ms for ms, _ in order}) > 1, "written over more than one millisecond"

    capsys.readouterr()
    cli("audit", "tail", "--audit", cluster.url, "--model", "fraud_mlp", "-n", "5")
    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == exported[-5:]
    cli("audit", "tail", "--audit", cluster.url, "--model", "fraud_mlp", "--all")
    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == exported


def test_a_gateway_serving_with_a_cluster_audit_url_records_every_answer(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    gw = start_gateway(tmp_path, "--demo-entities", "100", env={"MLGATE_AUDIT": cluster.url})
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for i in range(40):
                body = {"entities": [f"u{i}"], "request_id": f"req-{i}"}
                assert c.post("/v1/models/fraud_mlp:predict", json=body).status_code == 200
        got = asyncio.run(wait_for(cluster.url, "fraud_mlp", 40))
    finally:
        gw.stop()
    assert sorted(r.request_id for r in got) == sorted(f"req-{i}" for i in range(40))
    assert len([ids for ids in stream_request_ids(cluster, "fraud_mlp").values() if ids]) > 1


def test_replay_re_scores_every_sharded_record_once(
    cluster: RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    logged, _ = make_records()
    sink = RedisClusterStreamSink.from_url(cluster.url)
    asyncio.run(write(sink, logged))
    primaries = sum(r.route == "primary" for r in logged)
    assert len({key for key, ids in stream_request_ids(cluster, "fraud_mlp").items() if ids}) > 1

    capsys.readouterr()
    replay = ["replay", "--model", "fraud_mlp", "--candidate", "1", "--audit", cluster.url]
    cli(*replay, "--models", str(MODELS_DIR))
    out = capsys.readouterr().out
    assert re.search(rf"^compared +{primaries} records, 150 rows", out, re.MULTILINE)
    assert re.search(r"^max \|difference\| +0$", out, re.MULTILINE)


def test_a_group_export_resumes_on_every_shard_where_the_last_run_stopped(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    def run(to: Path) -> list[str]:
        cli("audit", "export", "--audit", cluster.url, "--model", "fraud_mlp", "--to", str(to))
        return list(pq.read_table(to).column("request_id").to_pylist())

    first = records(0, 900)
    asyncio.run(log_all(cluster.url, first, tmp_path / "spill"))
    assert sorted(run(tmp_path / "1.parquet")) == sorted(
        r.request_id for r in first if r.model == "fraud_mlp"
    )

    second = records(900, 900)
    asyncio.run(log_all(cluster.url, second, tmp_path / "spill"))
    with client(cluster) as r:
        # A consumer that read part of three shards and died before acking: its entries are
        # claimed by the next run once idle.
        for key in parse(cluster.url).keys("fraud_mlp")[:3]:
            assert r.xreadgroup("export", "dead", {key: ">"}, count=20)
    n = asyncio.run(
        export(
            cluster.url,
            model="fraud_mlp",
            since_ms=None,
            until_ms=None,
            to=tmp_path / "2.parquet",
            min_idle_ms=0,
        )
    )
    resumed = pq.read_table(tmp_path / "2.parquet").column("request_id").to_pylist()
    assert n == 300
    assert sorted(resumed) == sorted(r.request_id for r in second if r.model == "fraud_mlp")
    with client(cluster) as r:
        for key in parse(cluster.url).keys("fraud_mlp"):
            assert r.xpending(key, "export")["pending"] == 0
    assert run(tmp_path / "3.parquet") == [], "nothing twice"


async def test_a_stopped_node_spills_only_its_shards_and_drains_them_when_it_returns(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    spill_dir = tmp_path / "spill"
    log = AuditLog(
        RedisClusterStreamSink.from_url(cluster.url),
        spill_path=spill_dir / "1.spill",
        retry_s=0.05,
        max_retry_s=0.2,
    )
    await log.start()
    target = parse(cluster.url)
    port = cluster.ports[1]
    with client(cluster) as r:
        stopped = {
            key
            for model in MODELS
            for key in target.keys(model)
            if r.get_node_from_key(key).port == port
        }
    sent: list[AuditRecord] = []

    async def produce(n: int) -> None:
        for _ in range(n):
            rec = make_record(len(sent), model=MODELS[len(sent) % len(MODELS)])
            log.submit(rec)
            sent.append(rec)
            await asyncio.sleep(0.0002)

    # The nodes run without persistence; this one saves its dataset when stopped and loads it
    # when started again, as a node with persistence (or a promoted replica) would have it.
    dump = Path(cluster.cli(port, "config", "get", "dir").split()[1]) / "dump.rdb"
    cluster.cli(port, "config", "set", "save", "3600 1")
    try:
        await produce(600)
        # Stopped while records keep coming in and batches are in flight.
        await asyncio.gather(asyncio.to_thread(cluster.stop, 1), produce(600))
        await produce(600)
        await eventually(lambda: log.stats["written"] + log.stats["spilled"] == len(sent))
        during = log.stats
        held = [r for r in sent[1200:] if target.key_for(r.model, r.request_id) in stopped]
        assert 0 < len(held) < 400
        assert during["spilled"] >= len(held)
        assert during["written"] >= 1200 - len(held), "the other nodes' records kept flowing"
        assert len(list(spill_dir.glob("1-*.spill"))) == len(stopped), "a spill file per stream"

        await asyncio.gather(asyncio.to_thread(cluster.start, 1), produce(300))
        await asyncio.to_thread(cluster.wait_ok)
    finally:
        dump.unlink(missing_ok=True)  # loaded by now; no other node may ever load it
    await produce(300)
    await log.close()

    stats = log.stats
    assert stats["queued"] == len(sent) == 2400
    assert stats["dropped"] == 0
    assert stats["written"] + stats["spilled"] == len(sent)
    assert stats["drained"] == stats["spilled"]
    assert list(spill_dir.glob("*.spill")) == []

    duplicates = 0
    for model in MODELS:
        submitted = [r.request_id for r in sent if r.model == model]
        for key, in_stream in stream_request_ids(cluster, model).items():
            first_seen = list(dict.fromkeys(in_stream))
            mine = [i for i in submitted if target.key_for(model, i) == key]
            assert first_seen == mine, f"every record of {key}, in submission order"
            duplicates += len(in_stream) - len(first_seen)
    # A pipeline the node applied in part before it died is retried whole: at-least-once.
    assert duplicates <= 256
