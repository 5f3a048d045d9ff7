"""Reading the audit log back: `tail` (follow, filter) and `export` (to Parquet).

Both take the URL the gateway writes to. On Redis, tail filters on the small index fields of
each entry and decodes only what matches; export goes through a consumer group. On a file
sink, both read the rotated files oldest first.

Export semantics (Redis): the group is a cursor over the model's stream. A run claims what
dead consumers left pending (XAUTOCLAIM, idle over `min_idle_ms`), re-reads its own pending
entries, then reads every new entry; it writes the rows whose ts_ms lies in
[since_ms, until_ms) once per request_id, renames the file into place and only then XACKs
every entry it read, in the window or not. So a second run with the same group exports 0
rows; a run that dies before the rename leaves its entries pending for the next run
(at-least-once); use a new group to export history again.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from redis.exceptions import ResponseError

from service.audit.framing import iter_file, read_frames
from service.audit.record import AuditRecord, decode_record
from service.audit.sinks.file import sink_files
from service.audit.sinks.redis_stream import RECORD_FIELD, connect, split_retention, stream_key

_CHUNK = 512
_FOLLOW_POLL_S = 0.2
_RECORD = RECORD_FIELD.encode()

SCHEMA = pa.schema(
    [
        ("stream_id", pa.string()),
        ("request_id", pa.string()),
        ("ts_ms", pa.int64()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("route", pa.string()),
        ("paired_with", pa.string()),
        ("entity_ids", pa.list_(pa.string())),
        ("flags", pa.list_(pa.string())),
        ("latency_us", pa.map_(pa.string(), pa.int64())),
        # Numeric outputs flattened, for analysis without decoding; `record` has them exactly.
        ("outputs", pa.map_(pa.string(), pa.list_(pa.float64()))),
        ("record", pa.binary()),
    ]
)


@dataclass(frozen=True, slots=True)
class Filter:
    model: str
    version: str | None = None
    route: str | None = None
    flag: str | None = None

    def index_matches(self, fields: dict[bytes, bytes]) -> bool:
        """On a stream entry's index fields, without decoding the record."""
        return (
            (self.version is None or fields[b"version"].decode() == self.version)
            and (self.route is None or fields[b"route"].decode() == self.route)
            and (self.flag is None or self.flag in fields[b"flags"].decode().split(","))
        )

    def matches(self, r: AuditRecord) -> bool:
        return (
            r.model == self.model
            and (self.version is None or r.version == self.version)
            and (self.route is None or r.route == self.route)
            and (self.flag is None or self.flag in r.flags)
        )


def file_path(url: str) -> Path | None:
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


async def tail(
    url: str,
    *,
    model: str,
    follow: bool,
    version: str | None = None,
    route: str | None = None,
    flag: str | None = None,
    last: int | None = None,
) -> AsyncIterator[AuditRecord]:
    """The model's records that match, oldest first: the last `last` of them (all if None),
    then, with `follow`, every new one as it is written, until the caller stops iterating."""
    where = Filter(model, version, route, flag)
    path = file_path(url)
    records = (
        _tail_file(path, where, follow, last)
        if path is not None
        else _tail_stream(url, where, follow, last)
    )
    async for r in records:
        yield r


Fields = dict[bytes, bytes]
# A pending entry trimmed from the stream since it was read comes back without fields.
Entry = tuple[bytes, Fields | None]


class _Stream:
    """One model's audit stream; redis-py's loose reply types are narrowed here, once."""

    def __init__(self, url: str, model: str) -> None:
        self.client = connect(split_retention(url)[0])
        self.key = stream_key(model)

    async def range(self, after: str, count: int) -> list[tuple[bytes, Fields]]:
        start = "-" if after == "0-0" else f"({after}"
        reply = await self.client.xrange(self.key, start, "+", count)
        return cast(list[tuple[bytes, Fields]], reply)

    async def revrange(self, before: str, count: int) -> list[tuple[bytes, Fields]]:
        end = "+" if before == "+" else f"({before}"
        reply = await self.client.xrevrange(self.key, end, "-", count)
        return cast(list[tuple[bytes, Fields]], reply)

    async def read(self, after: str, count: int, block_ms: int) -> list[tuple[bytes, Fields]]:
        # A RESP2 reply: [[key, entries]], or nil on timeout.
        reply = await self.client.xread({self.key: after}, count=count, block=block_ms)
        return cast(list[tuple[bytes, Fields]], cast(list[Any], reply)[0][1]) if reply else []

    async def create_group(self, group: str) -> None:
        try:
            await self.client.xgroup_create(self.key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim(self, group: str, consumer: str, min_idle_ms: int, cursor: str) -> str:
        """Move idle pending entries of other consumers to `consumer`; the next cursor."""
        # Not JUSTID: redis-py then drops the cursor. The entries are read again anyway.
        reply = await self.client.xautoclaim(
            self.key, group, consumer, min_idle_ms, start_id=cursor, count=_CHUNK
        )
        return cast(bytes, reply[0]).decode()

    async def read_group(self, group: str, consumer: str, cursor: str) -> list[Entry]:
        reply = await self.client.xreadgroup(group, consumer, {self.key: cursor}, count=_CHUNK)
        return cast(list[Entry], cast(list[Any], reply)[0][1]) if reply else []

    async def ack(self, group: str, ids: list[bytes]) -> None:
        for i in range(0, len(ids), 1000):
            await self.client.xack(self.key, group, *ids[i : i + 1000])

    async def close(self) -> None:
        await self.client.aclose()


async def _tail_stream(
    url: str, where: Filter, follow: bool, last: int | None
) -> AsyncIterator[AuditRecord]:
    stream = _Stream(url, where.model)
    try:
        newest = "0-0"
        if last is None:
            while entries := await stream.range(newest, _CHUNK):
                newest = entries[-1][0].decode()
                for _, fields in entries:
                    if where.index_matches(fields):
                        yield decode_record(fields[_RECORD])
        else:
            history, newest = await _last_matching(stream, where, last)
            for fields in history:
                yield decode_record(fields[_RECORD])
        while follow:
            # BLOCK is under the client's socket timeout, so a quiet stream is no error.
            for entry_id, fields in await stream.read(newest, _CHUNK, block_ms=1000):
                newest = entry_id.decode()
                if where.index_matches(fields):
                    yield decode_record(fields[_RECORD])
    finally:
        await stream.close()


async def _last_matching(stream: _Stream, where: Filter, last: int) -> tuple[list[Fields], str]:
    """The last `last` matching entries, oldest first, and the id of the newest entry."""
    found: list[Fields] = []
    newest = "0-0"
    before = "+"
    while len(found) < last and (entries := await stream.revrange(before, _CHUNK)):
        if newest == "0-0":
            newest = entries[0][0].decode()
        before = entries[-1][0].decode()
        found.extend(f for _, f in entries if where.index_matches(f))
    return found[:last][::-1], newest


async def _tail_file(
    path: Path, where: Filter, follow: bool, last: int | None
) -> AsyncIterator[AuditRecord]:
    kept: deque[AuditRecord] | None = None if last is None else deque(maxlen=last)
    # Opened before the rotated files are read, so a rotation meanwhile loses nothing.
    current = _FileFollower(path)
    try:
        async for r in _written(path, current, where):
            if kept is None:
                yield r
            else:
                kept.append(r)
        for r in kept or ():
            yield r
        while follow:
            frames = await current.read()
            if not frames:
                await asyncio.sleep(_FOLLOW_POLL_S)
            for r in _matching(frames, where):
                yield r
    finally:
        current.close()


async def _written(path: Path, current: _FileFollower, where: Filter) -> AsyncIterator[AuditRecord]:
    """The matching records already written: the rotated files, then the current one."""
    for older in sink_files(path)[:-1]:
        for r in _matching(await asyncio.to_thread(_read_all, older), where):
            yield r
    while frames := await current.read():
        for r in _matching(frames, where):
            yield r


def _matching(payloads: Iterable[bytes], where: Filter) -> Iterator[AuditRecord]:
    for payload in payloads:
        record = decode_record(payload)
        if where.matches(record):
            yield record


class _FileFollower:
    """Reads a sink's current file as it grows and, when it is rotated away, every file that
    came after it, however many rotations happened meanwhile."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1
        self._offset = 0
        self._open(path)

    async def read(self) -> list[bytes]:
        """The next complete frames; [] at the end of the data written so far."""
        while True:
            if self._fd < 0 and not self._open(self._path):
                return []
            frames, self._offset = await asyncio.to_thread(
                read_frames, self._fd, self._offset, _CHUNK
            )
            if frames or self._is_current():
                return frames
            # A rotated file never grows again: go on with the one written after it.
            self._open_next()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._offset = -1, 0

    def _open(self, path: Path) -> bool:
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        return True

    def _is_current(self) -> bool:
        try:
            return os.stat(self._path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return True

    def _open_next(self) -> None:
        mine = os.fstat(self._fd).st_ino
        self.close()
        files = sink_files(self._path)
        inodes = [_inode(f) for f in files]
        # Gone altogether (rotated past `keep`): the oldest file left is the best we can do.
        start = inodes.index(mine) + 1 if mine in inodes else 0
        for f in files[start:]:
            if self._open(f):
                return


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


def _read_all(path: Path) -> list[bytes]:
    return list(iter_file(path))


async def export(
    url: str,
    *,
    model: str,
    since_ms: int | None,
    until_ms: int | None,
    to: Path,
    group: str = "export",
    consumer: str | None = None,
    min_idle_ms: int = 60_000,
) -> int:
    """Write the model's records with since_ms <= ts_ms < until_ms to `to` (Parquet), once per
    request id; returns the rows written. See the module docstring for the group semantics;
    a file sink has no group: every run exports the whole window."""
    window = _Window(since_ms, until_ms)
    path = file_path(url)
    if path is not None:
        return await asyncio.to_thread(_export_file, path, model, window, to)
    return await _export_stream(
        url, model, window, to, group, consumer or socket.gethostname(), min_idle_ms
    )


@dataclass(frozen=True, slots=True)
class _Window:
    since_ms: int | None
    until_ms: int | None

    def __contains__(self, ts_ms: int) -> bool:
        return (self.since_ms is None or ts_ms >= self.since_ms) and (
            self.until_ms is None or ts_ms < self.until_ms
        )


class _ParquetRows:
    """Rows deduplicated by request id, written to `<to>.tmp` in row groups, renamed on close."""

    def __init__(self, to: Path, rows_per_group: int = 4096) -> None:
        self.to = to
        self._tmp = to.with_name(to.name + ".tmp")
        to.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._tmp, SCHEMA)
        self._rows: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._rows_per_group = rows_per_group
        self.written = 0

    def add(self, stream_id: str | None, r: AuditRecord, payload: bytes) -> None:
        if r.request_id in self._seen:
            return
        self._seen.add(r.request_id)
        self._rows.append(_row(stream_id, r, payload))
        if len(self._rows) >= self._rows_per_group:
            self._flush()

    def close(self) -> None:
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.to)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA))
            self.written += len(self._rows)
            self._rows = []


def _row(stream_id: str | None, r: AuditRecord, payload: bytes) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "request_id": r.request_id,
        "ts_ms": r.ts_ms,
        "model": r.model,
        "version": r.version,
        "route": r.route,
        "paired_with": r.paired_with,
        "entity_ids": r.entity_ids,
        "flags": r.flags,
        "latency_us": list(r.latency_us.items()),
        "outputs": [
            (name, a.astype(np.float64).ravel().tolist())
            for name, a in r.outputs.items()
            if a.dtype.kind in "biuf"
        ],
        "record": payload,
    }


def _export_file(path: Path, model: str, window: _Window, to: Path) -> int:
    rows = _ParquetRows(to)
    try:
        for payload in _iter_files(path):
            r = decode_record(payload)
            if r.model == model and r.ts_ms in window:
                rows.add(None, r, payload)
    except BaseException:
        rows.abort()
        raise
    rows.close()
    return rows.written


def _iter_files(path: Path) -> Iterator[bytes]:
    for p in sink_files(path):
        yield from iter_file(p)


async def _export_stream(
    url: str,
    model: str,
    window: _Window,
    to: Path,
    group: str,
    consumer: str,
    min_idle_ms: int,
) -> int:
    stream = _Stream(url, model)
    try:
        await stream.create_group(group)
        cursor = "0-0"
        while (cursor := await stream.claim(group, consumer, min_idle_ms, cursor)) != "0-0":
            pass
        newest = await stream.revrange("+", 1)
        end = _id(newest[0][0]) if newest else (0, 0)
        rows = _ParquetRows(to)
        read: list[bytes] = []
        try:
            # Our own pending entries first (a run that died, or the ones just claimed), then
            # the new ones up to what the stream held when we started: a busy gateway must
            # not keep the export running.
            for start, stop in (("0", None), (">", end)):
                async for entry_id, fields in _read_group(stream, group, consumer, start, stop):
                    read.append(entry_id)
                    if fields and int(fields[b"ts_ms"]) in window:
                        payload = fields[_RECORD]
                        rows.add(entry_id.decode(), decode_record(payload), payload)
        except BaseException:
            rows.abort()
            raise
        rows.close()
        await stream.ack(group, read)
        return rows.written
    finally:
        await stream.close()


async def _read_group(
    stream: _Stream, group: str, consumer: str, start: str, end: tuple[int, int] | None
) -> AsyncIterator[Entry]:
    """XREADGROUP from `start` ("0": our pending list, ">": new entries) to the end, or
    to the first batch that reaches the entry `end`."""
    cursor = start
    while entries := await stream.read_group(group, consumer, cursor):
        for entry in entries:
            yield entry
        if end is not None and _id(entries[-1][0]) >= end:
            return
        if start == "0":
            cursor = entries[-1][0].decode()


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)
