"""The load generator: closed loop (N in flight) or open loop (constant or Poisson arrivals).

Open loop measures each latency from the request's *scheduled* send time. When the server
(or the generator) falls behind, the requests that should have gone out meanwhile are
charged the wait, instead of being silently sent late and timed from their late start:
that is coordinated omission, and a closed-loop tool hides it by construction. How late the
generator itself sent each request is kept apart (``send_lag``) so a lagging generator is
visible rather than blamed on the server.

Every run is bounded by duration and, optionally, by a request count; each request by the
timeout (in open loop counted from its scheduled time, waiting for a free slot included), so
a run always ends on its own, at most one timeout after its duration.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtests.histogram import LatencyHistogram
from loadtests.targets import TIMEOUT, Target

MAX_DURATION_S = 3600.0


@dataclass(frozen=True)
class LoadSpec:
    concurrency: int | None = None
    """Closed loop: this many requests always in flight."""
    rate: float | None = None
    """Open loop: requests per second, whatever the server does."""
    poisson: bool = False
    """Open loop: exponential inter-arrival times instead of a metronome."""
    duration_s: float = 10.0
    requests: int | None = None
    timeout_s: float = 5.0
    max_inflight: int = 1024
    """Open loop: past this many outstanding requests, sends wait (and are charged for it)."""
    phase_s: float = 0.0
    """Open loop: shift of this schedule, so several processes interleave instead of colliding."""
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) and rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be at least 1")
        if self.timeout_s <= 0 or self.max_inflight < 1:
            raise ValueError("timeout and max_inflight must be positive")

    @property
    def mode(self) -> str:
        if self.concurrency is not None:
            return f"closed loop, concurrency {self.concurrency}"
        arrivals = "Poisson" if self.poisson else "constant"
        return f"open loop, {arrivals} {self.rate:g} req/s"


@dataclass
class RunResult:
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    error_latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    """Latencies of the requests that ended in each error kind: how fast a 429 comes back is
    half of what load shedding promises. (Requests that never got a slot have none.)"""

    def record(self, start_ns: int, end_ns: int, error: str | None) -> None:
        if error is None:
            self.ok += 1
            self.latency.record_us((end_ns - start_ns) // 1000)
        else:
            self.errors[error] += 1
            histogram = self.error_latency.get(error)
            if histogram is None:
                histogram = self.error_latency[error] = LatencyHistogram()
            histogram.record_us((end_ns - start_ns) // 1000)

    @property
    def completed(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def throughput_rps(self) -> float:
        """Successful responses per second; errors never inflate it."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def merge(self, other: RunResult) -> None:
        """Fold in a run that went on at the same time (another generator process)."""
        self.latency.merge(other.latency)
        self.send_lag.merge(other.send_lag)
        self.ok += other.ok
        self.errors.update(other.errors)
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        for kind, histogram in other.error_latency.items():
            self.error_latency.setdefault(kind, LatencyHistogram()).merge(histogram)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.completed,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_rps": round(self.throughput_rps, 1),
            "latency_us": self.latency.summary_us(),
            "send_lag_us": self.send_lag.summary_us(),
            "error_latency_us": {
                kind: self.error_latency[kind].summary_us() for kind in sorted(self.error_latency)
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The summary plus the encoded histograms, from which another process can merge."""
        return {
            **self.summary(),
            "latency_hdr": self.latency.encode(),
            "send_lag_hdr": self.send_lag.encode(),
            "error_latency_hdr": {kind: h.encode() for kind, h in self.error_latency.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(
            latency=LatencyHistogram.decode(data["latency_hdr"]),
            send_lag=LatencyHistogram.decode(data["send_lag_hdr"]),
            ok=int(data["ok"]),
            errors=Counter({str(k): int(v) for k, v in data["errors"].items()}),
            elapsed_s=float(data["elapsed_s"]),
            error_latency={
                str(kind): LatencyHistogram.decode(encoded)
                for kind, encoded in data.get("error_latency_hdr", {}).items()
            },
        )


def schedule_ns(spec: LoadSpec) -> Iterator[int]:
    """Send offsets from the start of an open-loop run, in nanoseconds, within both bounds."""
    assert spec.rate is not None
    limit_ns = int(spec.duration_s * 1e9)
    count = spec.requests if spec.requests is not None else math.inf
    phase_ns = int(spec.phase_s * 1e9)
    rng = np.random.default_rng(spec.seed)
    mean_gap_ns = 1e9 / spec.rate
    index = 0
    offset = 0.0
    # Drawn in chunks: a long run at a high rate would not fit in memory as one array.
    while True:
        offsets: np.ndarray
        if spec.poisson:
            offsets = offset + np.cumsum(rng.exponential(mean_gap_ns, size=4096))
            offset = float(offsets[-1])
        else:
            offsets = (index + np.arange(4096)) * mean_gap_ns
        for value in (offsets + phase_ns).astype(np.int64).tolist():
            if index >= count or value >= limit_ns:
                return
            index += 1
            yield value


async def run_load(target: Target, spec: LoadSpec) -> RunResult:
    if spec.concurrency is not None:
        return await _closed_loop(target, spec, spec.concurrency)
    return await _open_loop(target, spec)


async def _closed_loop(target: Target, spec: LoadSpec, concurrency: int) -> RunResult:
    result = RunResult()
    limit = spec.requests if spec.requests is not None else math.inf
    issued = 0
    start = time.perf_counter_ns()
    deadline = start + int(spec.duration_s * 1e9)

    async def worker() -> None:
        nonlocal issued
        clock = time.perf_counter_ns
        while issued < limit:
            sent = clock()
            if sent >= deadline:
                return
            index = issued
            issued += 1
            error = await target.call(index, spec.timeout_s)
            result.record(sent, clock(), error)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = (time.perf_counter_ns() - start) / 1e9
    return result


async def _open_loop(target: Target, spec: LoadSpec) -> RunResult:
    result = RunResult()
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(spec.max_inflight)
    in_flight: set[asyncio.Task[None]] = set()
    clock = time.perf_counter_ns

    async def one(index: int, scheduled: int, timeout_s: float) -> None:
        try:
            error = await target.call(index, timeout_s)
            result.record(scheduled, clock(), error)
        finally:
            slots.release()

    start = clock()
    timeout_ns = int(spec.timeout_s * 1e9)
    for index, offset in enumerate(schedule_ns(spec)):
        scheduled = start + offset
        early = scheduled - clock()
        if early > 0:
            await asyncio.sleep(early / 1e9)
        # The timeout runs from the scheduled time: a request that waits for a free slot
        # longer than that has timed out as far as its caller is concerned.
        expires = scheduled + timeout_ns
        if slots.locked():
            try:
                async with asyncio.timeout((expires - clock()) / 1e9):
                    await slots.acquire()
            except TimeoutError:
                result.errors[TIMEOUT] += 1
                continue
        else:
            await slots.acquire()
        now = clock()
        result.send_lag.record_us((now - scheduled) // 1000)
        task = loop.create_task(one(index, scheduled, (expires - now) / 1e9))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight)
    result.elapsed_s = (clock() - start) / 1e9
    return result
