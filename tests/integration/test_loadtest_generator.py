"""The generator against a trivial server whose delays and failures are known in advance."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from loadtests.generator import LoadSpec, RunResult, run_load
from loadtests.processes import HOST, free_port, trivial_server
from loadtests.targets import RawHttpTarget


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    with trivial_server("http") as port:
        yield port


def target(port: int, *paths: str) -> RawHttpTarget:
    return RawHttpTarget(HOST, port, [(path, b"{}") for path in paths])


async def run(port: int, spec: LoadSpec, *paths: str) -> RunResult:
    client = target(port, *paths)
    try:
        return await run_load(client, spec)
    finally:
        await client.aclose()


class SendTimes:
    """A real target that also notes when each request actually left."""

    def __init__(self, inner: RawHttpTarget) -> None:
        self.inner = inner
        self.size = inner.size
        self.sent_ns: list[int] = []

    async def call(self, index: int, timeout_s: float) -> str | None:
        self.sent_ns.append(time.perf_counter_ns())
        return await self.inner.call(index, timeout_s)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_histogram_recovers_two_injected_delays(server_port: int) -> None:
    # Requests alternate 5 ms and 40 ms: the lower half of the histogram must sit just above
    # 5 ms and the upper half just above 40 ms, never below either.
    spec = LoadSpec(concurrency=4, requests=60, duration_s=10)
    result = await run(server_port, spec, "/delay/5000", "/delay/40000")
    assert result.ok == 60
    assert result.latency.count == 60
    assert result.latency.percentile_us(1) >= 5_000
    assert result.latency.percentile_us(45) < 20_000
    assert 40_000 <= result.latency.percentile_us(55) < 60_000
    assert result.latency.max_us < 80_000


async def test_open_loop_charges_queueing_to_the_scheduled_send_time(server_port: int) -> None:
    # 100 req/s at a server that takes 20 ms, one request at a time: request k is scheduled at
    # 10k ms but can only start at 20k ms, so its latency is about 20 + 10k ms. A generator
    # that timed from the actual send (coordinated omission) would report 20 ms throughout.
    spec = LoadSpec(rate=100, duration_s=0.3, max_inflight=1)
    result = await run(server_port, spec, "/delay/20000")
    assert result.ok == 30
    assert result.latency.percentile_us(50) > 140_000
    assert result.latency.max_us > 270_000
    assert result.send_lag.percentile_us(90) > 200_000

    closed = await run(server_port, LoadSpec(concurrency=1, requests=5), "/delay/20000")
    assert closed.latency.max_us < 60_000


async def test_open_loop_sends_on_its_schedule(server_port: int) -> None:
    client = SendTimes(target(server_port, "/"))
    result = await run_load(client, LoadSpec(rate=400, duration_s=0.5))
    await client.aclose()
    assert result.ok == 200
    first = client.sent_ns[0]
    errors_ms = sorted(abs((t - first) / 1e6 - i * 2.5) for i, t in enumerate(client.sent_ns))
    # Loose enough for a busy 2-core machine; a generator that sent in bursts, or at the
    # wrong rate, is off by tens to hundreds of milliseconds.
    assert errors_ms[len(errors_ms) // 2] < 5.0
    assert errors_ms[int(len(errors_ms) * 0.9)] < 25.0
    assert 0.49 <= result.elapsed_s < 0.8


async def test_closed_loop_stops_at_the_request_count(server_port: int) -> None:
    result = await run(server_port, LoadSpec(concurrency=8, requests=37), "/")
    assert result.completed == result.ok == 37
    assert result.latency.count == 37


async def test_open_loop_stops_at_the_request_count(server_port: int) -> None:
    result = await run(server_port, LoadSpec(rate=1000, requests=50), "/")
    assert result.completed == 50


async def test_closed_loop_stops_at_the_duration_and_leaves_nothing_running(
    server_port: int,
) -> None:
    started = time.monotonic()
    result = await run(server_port, LoadSpec(concurrency=4, duration_s=0.5), "/delay/100000")
    took = time.monotonic() - started
    # No request starts after the deadline; those in flight then finish within 100 ms.
    assert 0.5 <= took < 0.9
    assert 12 <= result.completed <= 24
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_timeouts_bound_a_run_against_a_stuck_server(server_port: int) -> None:
    started = time.monotonic()
    spec = LoadSpec(concurrency=2, duration_s=0.3, timeout_s=0.2)
    result = await run(server_port, spec, "/delay/5000000")
    assert time.monotonic() - started < 1.0
    assert result.ok == 0
    assert set(result.errors) == {"timeout"}
    assert result.errors["timeout"] == result.completed >= 2


async def test_open_loop_ends_one_timeout_after_its_duration_when_the_server_stalls(
    server_port: int,
) -> None:
    # Two slots, both stuck: the other 48 requests time out waiting for one, each 0.3 s
    # after its own scheduled time, so the run still ends about 0.3 s after its 0.5 s: far
    # sooner than the 5 s the server stalls for (the bound leaves room for a loaded machine).
    started = time.monotonic()
    spec = LoadSpec(rate=100, duration_s=0.5, timeout_s=0.3, max_inflight=2)
    result = await run(server_port, spec, "/delay/5000000")
    assert time.monotonic() - started < 3.0
    assert result.ok == 0
    assert result.errors == {"timeout": 50}


async def test_errors_are_counted_by_kind(server_port: int) -> None:
    spec = LoadSpec(concurrency=2, requests=20)
    result = await run(server_port, spec, "/status/503", "/close", "/status/429", "/")
    assert result.errors == {"http_503": 5, "connection": 5, "http_429": 5}
    assert result.ok == result.latency.count == 5

    nobody = await run(free_port(), LoadSpec(concurrency=1, requests=3), "/")
    assert nobody.errors == {"connection": 3}
