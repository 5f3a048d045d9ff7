"""`mlgate bench` driving a live gateway with wrk, the C client."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from loadtests.generator import LoadSpec
from loadtests.runner import Job, execute
from loadtests.workloads import SCENARIOS, Workload
from tests.conftest import start_gateway

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (`make wrk` installs it)"
)


def test_wrk_counts_every_answer_a_live_gateway_gives(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, "--demo-entities", "100")
    try:
        workload = Workload(SCENARIOS["predict-1"], key_space=100, pool=64)
        result = execute(Job(gw.url, workload, LoadSpec(concurrency=4, duration_s=1), "wrk"))
        counted = httpx.get(f"{gw.url}/metrics", timeout=10).text
    finally:
        gw.stop()
    assert result.ok > 50 and not result.errors
    assert result.latency.count == result.ok
    assert 0 < result.latency.percentile_us(50) <= result.latency.percentile_us(99)
    assert result.elapsed_s >= 1.0
    # The gateway answered what wrk counted, and a few it stopped waiting for at the end.
    answered = sum(
        float(line.rsplit(" ", 1)[1])
        for line in counted.splitlines()
        if line.startswith("mlgate_requests_total{") and 'outcome="ok"' in line
    )
    assert result.ok <= answered <= result.ok + 8


def test_wrk_refuses_what_it_cannot_drive() -> None:
    workload = Workload(SCENARIOS["predict-1"], key_space=100, pool=8)
    with pytest.raises(ValueError, match="closed loop"):
        execute(Job("http://127.0.0.1:1", workload, LoadSpec(rate=10, duration_s=1), "wrk"))
    with pytest.raises(ValueError, match="HTTP only"):
        Job("grpc://127.0.0.1:1", Workload(SCENARIOS["v2-dense-1"]), LoadSpec(concurrency=1), "wrk")
