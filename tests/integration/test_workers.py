"""Several worker processes: /metrics reports all of them, not whichever one answered."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import start_workers

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


def test_metrics_aggregate_every_worker(tmp_path: Path) -> None:
    gw, metrics_dir = start_workers(tmp_path)
    try:
        # Each process keeps its own counter file; two files that counted requests prove
        # both workers served (the second may still be starting when the first answers).
        def serving() -> int:
            return sum(counted_requests(p) for p in metrics_dir.glob("counter_*.db"))

        sent = 0
        while serving() < 2 and sent < 400:
            asyncio.run(predict_on_fresh_connections(gw.url, connections=10, each=4))
            sent += 40
        assert serving() == 2, "one worker took everything"
        for _ in range(4):  # whichever worker answers, the figure is the sum
            text = httpx.get(f"{gw.url}/metrics", timeout=10).text
            match = COUNTER.search(text)
            assert match is not None and float(match.group(1)) == sent
    finally:
        gw.stop()
