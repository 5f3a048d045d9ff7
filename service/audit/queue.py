"""The in-process audit queue: bounded in bytes, drained by one background writer task.

`submit` is all the request path pays: encode, account, append; no await, no lock, no I/O.
The writer takes batches off the queue and hands them to the sink. When the sink fails, the
failed records and every later one of their lanes go to the spill instead; the writer
retries the sink with backoff by writing the oldest spilled chunk of each lane, and keeps
draining, oldest first, until the spill is empty. A lane is what a sink keeps in order and
fails as a whole: a file or one Redis server is one lane, so everything queues behind the
spill; on a Redis Cluster each stream is a lane, so a node that is down holds back only its
streams' records, in a spill file per lane, while the other nodes' keep flowing. Either way
the sink sees each lane's records in submission order. Whatever cannot be kept (queue full,
spill full, no spill) is dropped, counted and logged once per burst.

Delivery is at-least-once: a pipeline that fails after the server applied part of it is
retried whole, and those records are stored twice (`mlgate audit export` keeps one row per
request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from service.audit.index import PredictionIndex
from service.audit.record import AuditRecord, EncodedRecord, nbytes_estimate
from service.audit.sinks.base import Sink
from service.audit.spill import SUFFIX, Spill
from service.metrics import AUDIT_LAG, AUDIT_QUEUE_BYTES, AUDIT_RECORDS

log = logging.getLogger(__name__)

T = TypeVar("T")

OUTCOMES = ("queued", "written", "spilled", "drained", "dropped")
_COUNTERS = {outcome: AUDIT_RECORDS.labels(outcome=outcome) for outcome in OUTCOMES}

# What a queued entry costs beyond its payload: the EncodedRecord, its strings and tuple, a
# deque slot (measured with tracemalloc: ~200 bytes).
ENTRY_OVERHEAD = 256
# How often an idle writer refreshes the queue-bytes and lag gauges.
_TICK_S = 1.0


class _Burst:
    """Logs the first drop of a burst, and its total once records get through again."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._count = 0

    def drop(self, n: int, reason: str) -> None:
        if self._count == 0:
            log.warning("audit %s: dropping records: %s", self._where, reason)
        self._count += n

    def end(self) -> None:
        if self._count:
            log.warning("audit %s: %d records dropped in the last burst", self._where, self._count)
            self._count = 0


class AuditLog:
    """Bounded audit queue in front of a sink, with a spill file for when the sink is down.

    A record is refused (dropped and counted) when it alone is larger than `max_record_bytes`
    (default: an eighth of the budget, so one huge tensor cannot starve every other record),
    or when it would take the queue past `max_queue_bytes`. The budget covers the batch being
    written too, not only what waits. `submit` must be called on the event loop's thread.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        max_queue_bytes: int = 64 << 20,
        spill_path: Path | None,
        max_spill_bytes: int = 1 << 30,
        batch_records: int = 256,
        max_record_bytes: int | None = None,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
        linger_s: float = 0.005,
    ) -> None:
        self._sink = sink
        # After a quiet spell the writer waits this long for company before writing: one
        # sink call per few milliseconds instead of one per request at low rates.
        self._linger_s = linger_s
        self._max_queue_bytes = max_queue_bytes
        self._max_record_bytes = max_record_bytes or max_queue_bytes // 8
        self._batch_records = batch_records
        self._spill_path = spill_path
        self._max_spill_bytes = max_spill_bytes
        # A spill per lane, made when a lane first spills. Lane "" is the main file, the only
        # one of a one-lane sink, which adopts what dead processes left (of any lane).
        self._spills: dict[str, Spill] = {}
        if spill_path is not None:
            self._spills[""] = Spill(spill_path, max_spill_bytes)
        # Per lane, the request time of its oldest spilled record, for the lag gauge.
        self._heads: dict[str, int] = {}
        self._min_retry_s = self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._queue: deque[EncodedRecord] = deque()
        self._inflight: list[EncodedRecord] = []
        self._bytes = 0
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._published_queued = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One thread for the spill file: its operations stay in order, off the event loop.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-spill")
        self._closing = False
        self._closed = False
        self._sink_down = False
        self._retry_at = 0.0
        self._refused = _Burst("queue")
        self._lost = _Burst("writer")

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def queue_bytes(self) -> int:
        return self._bytes

    @property
    def index(self) -> PredictionIndex:
        """Where the sink finds a written prediction again (label feedback)."""
        return self._sink.index

    def submit(self, record: AuditRecord) -> None:
        """Queue `record` for the sink, or drop and count it; never blocks, never raises."""
        if self._closed:
            self._refuse("the audit log is closed")
            return
        # Refuse on the cheap estimate first, so an oversized record is never even encoded.
        estimate = nbytes_estimate(record) + ENTRY_OVERHEAD
        if estimate > self._max_record_bytes:
            self._refuse(f"record of ~{estimate} bytes over max_record_bytes")
            return
        if self._bytes + estimate > self._max_queue_bytes:
            self._refuse("queue full")
            return
        try:
            entry = EncodedRecord.of(record)
        except (TypeError, ValueError) as exc:
            self._refuse(f"unencodable record: {exc}")
            return
        size = len(entry.payload) + ENTRY_OVERHEAD
        if size > self._max_record_bytes:
            self._refuse(f"record of {size} bytes over max_record_bytes")
            return
        if self._bytes + size > self._max_queue_bytes:
            self._refuse("queue full")
            return
        self._queue.append(entry)
        self._bytes += size
        self._counts["queued"] += 1
        self._refused.end()
        self._wake.set()

    async def start(self) -> None:
        if (main := self._spills.get("")) is not None:
            await self._in_io(main.open)
            if main.pending:
                log.info("audit: %d spilled bytes to drain first", main.size)
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        self._task.add_done_callback(_report_crash)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush the queue to the sink (or the spill) within `timeout_s`, then release both.

        What the writer has not handled by then goes to the spill file, for the next process.
        """
        if self._closed:
            return
        if self._task is None:
            await self.start()
        assert self._task is not None
        self._closing = True
        # One last attempt at draining the spill, even during a backoff.
        self._sink_down = False
        self._retry_at = 0.0
        self._wake.set()
        done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
        if not done:
            log.warning("audit: writer not done after %.1fs; spilling what is left", timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._closed = True
        leftover = self._inflight + list(self._queue)
        self._queue.clear()
        if leftover:
            await self._to_spill(leftover)
        self._inflight = []
        self._bytes = 0
        for spill in self._spills.values():
            await self._in_io(spill.close)
        self._io.shutdown(wait=False)
        await self._sink.close()
        self._lost.end()
        self._publish()

    async def _run(self) -> None:
        while True:
            batch = self._take()
            held, direct = self._split(batch)
            if held:
                await self._to_spill(held)
            if direct:
                await self._write(direct)
            if self._spill_pending() and time.monotonic() >= self._retry_at:
                await self._drain_chunk()
            self._release(batch)
            self._publish()
            if self._queue or (self._spill_pending() and not self._sink_down):
                continue
            if self._closing:
                return
            await self._idle()

    def _take(self) -> list[EncodedRecord]:
        n = min(self._batch_records, len(self._queue))
        self._inflight = [self._queue.popleft() for _ in range(n)]
        return self._inflight

    def _split(self, batch: list[EncodedRecord]) -> tuple[list[EncodedRecord], list[EncodedRecord]]:
        """The records that must queue behind their lane's spill, and those the sink may take."""
        behind = {lane for lane, spill in self._spills.items() if spill.pending}
        if not behind:
            return [], batch
        held: list[EncodedRecord] = []
        direct: list[EncodedRecord] = []
        for e in batch:
            (held if self._sink.lane(e) in behind else direct).append(e)
        return held, direct

    def _release(self, batch: list[EncodedRecord]) -> None:
        self._bytes -= sum(len(e.payload) for e in batch) + ENTRY_OVERHEAD * len(batch)
        self._inflight = []

    async def _idle(self) -> None:
        timeout = _TICK_S
        if self._spill_pending():
            timeout = min(timeout, max(0.0, self._retry_at - time.monotonic()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
                if not self._closing and len(self._queue) < self._batch_records:
                    await asyncio.sleep(self._linger_s)

    async def _write(self, batch: list[EncodedRecord]) -> None:
        try:
            failed = await self._sink.write(batch)
        except Exception as exc:  # whatever the sink raises, the batch must not be lost
            self._sink_failed(repr(exc))
            await self._to_spill(batch)
            return
        self._count("written", len(batch) - len(failed))
        if failed:
            self._sink_failed(self._lanes_failed(failed))
            await self._to_spill(failed)
        elif not self._spill_pending():
            self._sink_ok()

    async def _to_spill(self, batch: list[EncodedRecord]) -> None:
        if self._spill_path is None:
            self._lose(len(batch), "the sink failed and there is no spill file")
            return
        for lane, records in self._by_lane(batch).items():
            self._count("spilled", await self._spill_lane(lane, records))

    async def _spill_lane(self, lane: str, records: list[EncodedRecord]) -> int:
        """Append the lane's records to its spill; how many it took, the rest dropped."""
        try:
            spill = await self._lane_spill(lane)
            was_pending = spill.pending
            others = sum(s.size for s in self._spills.values()) - spill.size
            n = await self._in_io(spill.append, [e.payload for e in records], others)
            reason = f"spill files full ({self._max_spill_bytes} bytes)"
        except (OSError, RuntimeError) as exc:
            n, was_pending, reason = 0, True, f"spill file not writable: {exc}"
        if n and not was_pending:
            self._heads[lane] = records[0].ts_ms
        if n < len(records):
            self._lose(len(records) - n, reason)
        return n

    async def _lane_spill(self, lane: str) -> Spill:
        spill = self._spills.get(lane)
        if spill is None:
            assert self._spill_path is not None
            name = f"{self._spill_path.stem}-{len(self._spills)}{SUFFIX}"
            spill = Spill(self._spill_path.with_name(name), self._max_spill_bytes)
            # Adopting is the main file's job, done once at start.
            await self._in_io(partial(spill.open, adopt=False))
            self._spills[lane] = spill
        return spill

    async def _drain_chunk(self) -> None:
        """Write the oldest chunk of every lane's spill, in one sink write."""
        chunks: list[tuple[str, Spill, int, list[EncodedRecord]]] = []
        for lane, spill in list(self._spills.items()):
            if spill.pending:
                frames, offset = await self._in_io(spill.read, self._batch_records)
                entries = self._decode(frames)
                if entries:
                    self._heads[lane] = entries[0].ts_ms
                chunks.append((lane, spill, offset, entries))
        batch = [e for *_, entries in chunks for e in entries]
        try:
            failed = await self._sink.write(batch) if batch else []
        except Exception as exc:  # the sink is still down: keep everything, retry later
            self._sink_failed(repr(exc))
            return
        not_stored = {id(e) for e in failed}
        stuck: list[EncodedRecord] = []
        for lane, spill, offset, entries in chunks:
            kept = [e for e in entries if id(e) in not_stored]
            if any(self._sink.lane(e) == lane for e in kept):
                # Retried whole: what the lane's node did store of it comes twice.
                stuck += kept
                continue
            # Records of other lanes in the main file (adopted from a dead process) that
            # failed move to their own lane's spill, so they hold up only that lane.
            for other, records in self._by_lane(kept).items():
                await self._spill_lane(other, records)
            await self._in_io(spill.consume, offset)
            self._count("drained", len(entries) - len(kept))
            if not spill.pending:
                self._heads.pop(lane, None)
                log.info("audit spill file %s drained", spill.path.name)
        if stuck:
            self._sink_failed(self._lanes_failed(stuck))
        else:
            self._sink_ok()

    def _decode(self, frames: list[bytes]) -> list[EncodedRecord]:
        entries: list[EncodedRecord] = []
        for payload in frames:
            try:
                entries.append(EncodedRecord.from_payload(payload))
            except (ValueError, KeyError, TypeError):
                self._lose(1, "unreadable record in the spill file")
        return entries

    def _by_lane(self, records: list[EncodedRecord]) -> dict[str, list[EncodedRecord]]:
        lanes: dict[str, list[EncodedRecord]] = {}
        for e in records:
            lanes.setdefault(self._sink.lane(e), []).append(e)
        return lanes

    def _lanes_failed(self, failed: list[EncodedRecord]) -> str:
        return f"not stored: {len(failed)} records of {', '.join(sorted(self._by_lane(failed)))}"

    def _sink_failed(self, cause: str) -> None:
        if not self._sink_down:
            where = self._spill_path.parent if self._spill_path else "nowhere (no spill file)"
            log.warning("audit sink failed (%s); spilling to %s", cause, where)
        self._sink_down = True
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, self._max_retry_s)

    def _sink_ok(self) -> None:
        if self._sink_down:
            log.warning("audit sink is back")
        self._sink_down = False
        self._retry_s = self._min_retry_s
        self._lost.end()

    def _spill_pending(self) -> bool:
        return any(spill.pending for spill in self._spills.values())

    def _refuse(self, reason: str) -> None:
        self._count("dropped", 1)
        self._refused.drop(1, reason)

    def _lose(self, n: int, reason: str) -> None:
        self._count("dropped", n)
        self._lost.drop(n, reason)

    def _count(self, outcome: str, n: int) -> None:
        self._counts[outcome] += n
        _COUNTERS[outcome].inc(n)

    def _publish(self) -> None:
        # `queued` reaches the counter here, not in submit: Counter.inc takes a lock, a
        # tenth of what submit costs otherwise.
        queued = self._counts["queued"]
        _COUNTERS["queued"].inc(queued - self._published_queued)
        self._published_queued = queued
        AUDIT_QUEUE_BYTES.set(self._bytes)
        AUDIT_LAG.set(self._lag_s())

    def _lag_s(self) -> float:
        oldest = [
            self._heads[lane]
            for lane, s in self._spills.items()
            if s.pending and lane in self._heads
        ]
        if self._inflight:
            oldest.append(self._inflight[0].ts_ms)
        if self._queue:
            oldest.append(self._queue[0].ts_ms)
        if not oldest:
            return 0.0
        return max(0.0, time.time() - min(oldest) / 1000)

    async def _in_io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("audit writer crashed; records will queue until dropped", exc_info=exc)
