"""Several worker processes: /metrics reports all of them, not whichever one answered."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from service.cpus import usable_cpus
from tests.conftest import RedisServer, seeded_url, start_gateway, start_workers

COUNTER = re.compile(
    r'mlgate_requests_total\{endpoint="predict",model="fraud_mlp",outcome="ok",version="2"\} (\S+)'
)


async def predict_on_fresh_connections(url: str, connections: int, each: int) -> None:
    async def one(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for j in range(each):
                r = await c.post("/v1/models/fraud_mlp:predict", json={"entities": [f"u{i + j}"]})
                assert r.status_code == 200, r.text

    await asyncio.gather(*(one(i) for i in range(connections)))


def counted_requests(path: Path) -> bool:
    values = MmapedDict.read_all_values_from_file(str(path))
    return any('"mlgate_requests_total"' in key and value > 0 for key, value, *_ in values)


def assert_every_worker_serves_and_metrics_sum(url: str, metrics_dir: Path, workers: int) -> None:
    # Each process keeps its own counter file; as many files that counted requests as workers
    # prove that all of them served (the last may still be starting when the first answers).
    def serving() -> int:
        return sum(counted_requests(p) for p in metrics_dir.glob("counter_*.db"))

    sent = 0
    while serving() < workers and sent < 200 * workers:
        asyncio.run(predict_on_fresh_connections(url, connections=10, each=4))
        sent += 40
    assert serving() == workers, f"{serving()} of {workers} workers served"
    for _ in range(2 * workers):  # whichever worker answers, the figure is the sum
        text = httpx.get(f"{url}/metrics", timeout=10).text
        match = COUNTER.search(text)
        assert match is not None and float(match.group(1)) == sent


def test_metrics_aggregate_every_worker(tmp_path: Path) -> None:
    gw, metrics_dir = start_workers(tmp_path)
    try:
        assert_every_worker_serves_and_metrics_sum(gw.url, metrics_dir, 2)
    finally:
        gw.stop()


def test_serve_runs_one_worker_per_cpu_by_default_with_redis_features(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    gw = start_gateway(
        tmp_path,
        "--feature-store",
        seeded_url(redis_server, 11, 100),
        env={"MLGATE_WORKERS": "auto", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    try:
        assert_every_worker_serves_and_metrics_sum(gw.url, metrics_dir, min(usable_cpus(), 64))
    finally:
        gw.stop()
