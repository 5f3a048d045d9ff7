"""The audit queue on a real file sink: byte budget, flush on close, spill and drain in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from service.audit import AuditLog, open_audit
from service.audit.framing import iter_file
from service.audit.queue import ENTRY_OVERHEAD
from service.audit.record import EncodedRecord
from service.audit.sinks import FileSink
from tests.unit.test_audit_record import make_record


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("mlgate_audit_records_total", {"outcome": outcome}) or 0.0


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def ids_in(path: Path) -> list[str]:
    return [EncodedRecord.from_payload(p).request_id for p in iter_file(path)]


async def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    # Polled: the state watched (stats, Redis, files) announces no event.
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_close_flushes_every_submitted_record_in_order(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "audit.log"), spill_path=tmp_path / "x.spill")
    queued_before, written_before = counted("queued"), counted("written")
    await log.start()
    for i in range(1000):
        log.submit(make_record(i))
    await log.close()
    assert counted("queued") - queued_before == 1000
    assert counted("written") - written_before == 1000
    assert ids_in(tmp_path / "audit.log") == [f"req-{i:08d}" for i in range(1000)]
    assert log.stats == {"queued": 1000, "written": 1000, "spilled": 0, "drained": 0, "dropped": 0}
    assert log.queue_bytes == 0
    assert not (tmp_path / "x.spill").exists()


async def test_over_the_byte_budget_records_are_dropped_and_counted(tmp_path: Path) -> None:
    one = len(EncodedRecord.of(make_record(0)).payload) + ENTRY_OVERHEAD
    log = AuditLog(
        FileSink(tmp_path / "audit.log"), max_queue_bytes=10 * one + one // 2, spill_path=None
    )
    dropped_before = counted("dropped")
    # The writer is not started and submit never yields: nothing leaves the queue meanwhile.
    for i in range(25):
        log.submit(make_record(i))
    assert log.stats["queued"] == 10
    assert log.stats["dropped"] == 15
    assert counted("dropped") - dropped_before == 15
    assert 9 * one < log.queue_bytes <= 10 * one + one // 2
    await log.close()
    assert ids_in(tmp_path / "audit.log") == [f"req-{i:08d}" for i in range(10)]


async def test_one_oversized_record_is_dropped_not_queued(tmp_path: Path) -> None:
    log = AuditLog(FileSink(tmp_path / "audit.log"), max_queue_bytes=1 << 20, spill_path=None)
    huge = make_record(1)
    huge.inputs["image"] = np.zeros((1, 3, 256, 256), np.float32)  # 768 KiB < the budget
    log.submit(huge)
    assert log.stats == {"queued": 0, "written": 0, "spilled": 0, "drained": 0, "dropped": 1}
    assert log.queue_bytes == 0
    log.submit(make_record(2))
    assert log.stats["queued"] == 1
    await log.close()


async def test_an_unencodable_record_is_dropped_and_the_caller_never_sees_an_error(
    tmp_path: Path,
) -> None:
    log = AuditLog(FileSink(tmp_path / "audit.log"), spill_path=None)
    bad = make_record(1)
    bad.outputs = {"s": np.zeros(2, dtype=[("a", "<f4")])}
    log.submit(bad)
    assert log.stats["dropped"] == 1
    await log.close()
    log.submit(make_record(2))
    assert log.stats["dropped"] == 2, "a closed log drops, and counts"


async def test_records_spill_while_the_sink_fails_and_drain_back_in_order(tmp_path: Path) -> None:
    # A file where the sink's directory should be: every write fails with an OSError.
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    sink_path = blocker / "audit.log"
    log = AuditLog(FileSink(sink_path), spill_path=tmp_path / "spill" / "x.spill", retry_s=0.02)
    await log.start()
    for i in range(300):
        log.submit(make_record(i, ts_ms=int(time.time() * 1000) - 2_000))
        if i % 50 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: log.stats["spilled"] == 300)
    assert gauge("mlgate_audit_lag_seconds") > 1.5, "the spilled records are not written yet"
    assert log.stats["written"] == 0

    blocker.unlink()
    for i in range(300, 400):
        log.submit(make_record(i))
    await eventually(lambda: log.stats["drained"] + log.stats["written"] == 400)
    await log.close()
    assert ids_in(sink_path) == [f"req-{i:08d}" for i in range(400)]
    stats = log.stats
    assert stats["dropped"] == 0
    assert stats["spilled"] == stats["drained"] >= 300
    assert stats["written"] + stats["spilled"] == 400
    assert gauge("mlgate_audit_lag_seconds") == 0.0
    assert not (tmp_path / "spill" / "x.spill").exists()


async def test_a_full_spill_drops_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    one = len(EncodedRecord.of(make_record(79)).payload) + 4  # the longest of the 80
    log = AuditLog(
        FileSink(blocker / "audit.log"),
        spill_path=tmp_path / "x.spill",
        max_spill_bytes=50 * one,
        retry_s=10,
    )
    await log.start()
    for i in range(80):
        log.submit(make_record(i))
    await eventually(lambda: log.stats["spilled"] + log.stats["dropped"] == 80)
    assert log.stats["spilled"] == 50
    assert log.stats["dropped"] == 30
    await log.close(timeout_s=1.0)
    assert len(list(iter_file(tmp_path / "x.spill"))) == 50, "kept for the next process"


async def test_the_next_process_drains_what_a_closed_log_left_in_the_spill(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    spill_dir = tmp_path / "spill"
    first = AuditLog(FileSink(blocker / "audit.log"), spill_path=spill_dir / "1.spill")
    await first.start()
    for i in range(20):
        first.submit(make_record(i))
    await first.close(timeout_s=1.0)
    assert first.stats["spilled"] == 20

    blocker.unlink()
    second = open_audit(f"file://{blocker / 'audit.log'}", spill_dir=spill_dir)
    assert second is not None
    await second.start()
    second.submit(make_record(20))
    await second.close()
    assert ids_in(blocker / "audit.log") == [f"req-{i:08d}" for i in range(21)]
    # The new record queued behind the spill, to keep the order, and came back through it.
    assert second.stats["drained"] == 21
    assert list(spill_dir.glob("*.spill")) == []


def test_open_audit_reads_the_url() -> None:
    assert open_audit("none", spill_dir=Path("/nonexistent")) is None
