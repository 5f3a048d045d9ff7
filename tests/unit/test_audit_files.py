"""Length-prefixed files: the file sink's rotation, the spill's bounds, crash repair, adoption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.audit.framing import frame, iter_file
from service.audit.record import EncodedRecord
from service.audit.sinks.file import FileSink, sink_files
from service.audit.spill import Spill
from tests.unit.test_audit_record import make_record


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"payload-{i:06d}".encode() * 3 for i in range(start, start + n)]


def test_a_partial_last_frame_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = frame(payloads(3))
    path.write_bytes(data + data[:7])
    assert list(iter_file(path)) == payloads(3)


def test_a_frame_larger_than_a_read_block_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    big = os.urandom(700_000)
    path.write_bytes(frame([b"a", big, b"b"]))
    assert list(iter_file(path)) == [b"a", big, b"b"]


async def test_file_sink_rotates_by_size_and_keeps_the_newest_files(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    sink = FileSink(path, rotate_bytes=4_000, keep=2)
    records = [EncodedRecord.of(make_record(i)) for i in range(60)]
    for i in range(0, 60, 5):
        await sink.write(records[i : i + 5])
    await sink.close()

    files = sink_files(path)
    assert [f.name for f in files] == ["audit.log.2", "audit.log.1", "audit.log"]
    assert all(f.stat().st_size <= 4_000 for f in files)
    kept = [p for f in files for p in iter_file(f)]
    # Whole batches rotate together: what is kept is the newest records, in order.
    assert kept == [r.payload for r in records[-len(kept) :]]
    assert 5 <= len(kept) < 60


async def test_file_sink_cuts_a_crash_torn_frame_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(frame(payloads(2)) + b"\x40\x00\x00\x00torn")
    sink = FileSink(path)
    await sink.write([EncodedRecord.of(make_record(1))])
    await sink.close()
    read = list(iter_file(path))
    assert read[:2] == payloads(2)
    assert EncodedRecord.from_payload(read[2]).request_id == "req-00000001"


def test_spill_appends_the_prefix_that_fits_and_refuses_the_rest(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "a.spill", max_bytes=10 * (4 + len(payloads(1)[0])))
    spill.open()
    assert spill.append(payloads(6)) == 6
    assert spill.append(payloads(6, start=6)) == 4
    assert spill.append(payloads(1, start=12)) == 0
    frames, offset = spill.read(100)
    assert frames == payloads(10)
    spill.consume(offset)
    assert not spill.pending
    assert spill.size == 0, "a drained spill starts over, so it never grows past one outage"
    spill.close()
    assert not (tmp_path / "a.spill").exists()


def test_spill_keeps_what_was_not_drained_for_the_next_process(tmp_path: Path) -> None:
    path = tmp_path / "a.spill"
    spill = Spill(path, max_bytes=1 << 20)
    spill.open()
    spill.append(payloads(10))
    _, offset = spill.read(4)
    spill.consume(offset)
    spill.close()

    again = Spill(path, max_bytes=1 << 20)
    again.open()
    assert again.read(100)[0] == payloads(6, start=4)
    again.close()


def test_spill_adopts_orphans_but_not_a_live_workers_file(tmp_path: Path) -> None:
    live = Spill(tmp_path / "222.spill", max_bytes=1 << 20)
    live.open()
    live.append(payloads(2, start=50))
    dead = Spill(tmp_path / "111.spill", max_bytes=1 << 20)
    dead.open()
    dead.append(payloads(3))
    dead.close()

    mine = Spill(tmp_path / "333.spill", max_bytes=1 << 20)
    mine.open()
    assert mine.read(100)[0] == payloads(3)
    assert not (tmp_path / "111.spill").exists()
    assert (tmp_path / "222.spill").exists()
    live.close()
    mine.close()


def test_a_spill_file_held_by_another_process_is_refused(tmp_path: Path) -> None:
    first = Spill(tmp_path / "a.spill", max_bytes=1 << 20)
    first.open()
    with pytest.raises(RuntimeError, match="held by another process"):
        Spill(tmp_path / "a.spill", max_bytes=1 << 20).open()
    first.close()
