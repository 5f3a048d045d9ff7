"""Reading the audit log back: `tail` (follow, filter) and `export` (to Parquet).

Both take the URL the gateway writes to. On Redis, tail filters on the small index fields of
each entry and decodes only what matches; export goes through a consumer group. A model
sharded over several streams (a Redis Cluster, or `?shards=N`: service.audit.streams) is read
from every shard, merged by stream id (milliseconds, then sequence: the order of time across
nodes, as far as their clocks agree). On a file sink, both read the rotated files oldest first.

Export semantics (Redis): the group is a cursor over each of the model's streams, so a run
resumes every shard where the last one stopped. A run claims what dead consumers left
pending (XAUTOCLAIM, idle over `min_idle_ms`), re-reads its own pending entries, then reads
every new entry; it writes the rows whose ts_ms lies in [since_ms, until_ms) once per
request_id, renames the file into place and only then XACKs every entry it read, in the
window or not. So a second run with the same group exports 0 rows; a run that dies before the
rename leaves its entries pending for the next run (at-least-once); use a new group to export
history again. A file sink keeps the same promise with a cursor file per model and group beside
it (`<audit file>.export-<model>-<group>`: the file, by inode, and the offset read up to), moved
on only after the rename; a cursor whose file was rotated away starts at the oldest file left.

An export of a model the log holds nothing of, or of a file sink with no file, is an
AuditSourceError: most often a typo, which an empty Parquet file would hide.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from redis.exceptions import ResponseError

from feature_store.store import Status, display_url
from service.audit.framing import iter_file, read_frames
from service.audit.record import AuditRecord, EncodedRecord, decode_record
from service.audit.sinks.file import sink_files
from service.audit.sinks.redis_stream import connect
from service.audit.streams import RECORD_FIELD, parse

_CHUNK = 512
_FOLLOW_POLL_S = 0.2
_RECORD = RECORD_FIELD.encode()

T = TypeVar("T")

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
        # Per view, a row of feature values and a status (fresh, stale, missing, defaulted)
        # per entity, in entity_ids' order.
        ("features", pa.map_(pa.string(), pa.list_(pa.list_(pa.float64())))),
        ("feature_status", pa.map_(pa.string(), pa.list_(pa.string()))),
        # Numeric tensors flattened, in C order, as float64.
        ("inputs", pa.map_(pa.string(), pa.list_(pa.float64()))),
        ("outputs", pa.map_(pa.string(), pa.list_(pa.float64()))),
    ]
)
_STATUS_LABELS = [status.label for status in Status]


class AuditSourceError(Exception):
    """What an export or tail was pointed at holds nothing of the model: no audit file, or no
    record or stream of the model."""


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
    if path is not None and not follow and not sink_files(path):
        raise AuditSourceError(f"{path}: no audit file")
    records = (
        _tail_file(path, where, follow, last)
        if path is not None
        else _tail_stream(url, where, follow, last)
    )
    found = False
    async for r in records:
        found = True
        yield r
    if not found:
        await _require_model(url, model)


async def _require_model(url: str, model: str) -> None:
    """AuditSourceError unless the log at `url` holds something of `model`."""
    path = file_path(url)
    if path is not None:
        payloads = await asyncio.to_thread(lambda: list(_iter_files(path)))
        if not any(EncodedRecord.from_payload(p).model == model for p in payloads):
            raise _unknown_model(str(path), model)
        return
    streams = _Streams(url, model)
    try:
        if not await streams.any_exist():
            raise _unknown_model(display_url(url), model, streams.keys)
    finally:
        await streams.close()


def _unknown_model(where: str, model: str, keys: Iterable[str] = ()) -> AuditSourceError:
    shown = f" ({', '.join(keys)})" if keys else ""
    return AuditSourceError(f"{where}: no audit record of model {model!r}{shown}")


def _iter_files(path: Path) -> Iterator[bytes]:
    for p in sink_files(path):
        yield from iter_file(p)


Fields = dict[bytes, bytes]
# A pending entry trimmed from the stream since it was read comes back without fields.
Entry = tuple[bytes, Fields | None]
# An entry of one of a model's streams: the stream's key, the entry.
KeyedEntry = tuple[str, bytes, Fields | None]


class _Streams:
    """A model's audit streams (one, or its shards); redis-py's loose reply types are
    narrowed here, once."""

    def __init__(self, url: str, model: str) -> None:
        target = parse(url)
        self.client = connect(target)
        self.cluster = target.cluster
        self.keys = target.keys(model)

    async def range(self, key: str, after: str, count: int) -> list[tuple[bytes, Fields]]:
        start = "-" if after == "0-0" else f"({after}"
        reply = await self.client.xrange(key, start, "+", count)
        return cast(list[tuple[bytes, Fields]], reply)

    async def revrange(self, key: str, before: str, count: int) -> list[tuple[bytes, Fields]]:
        end = "+" if before == "+" else f"({before}"
        reply = await self.client.xrevrange(key, end, "-", count)
        return cast(list[tuple[bytes, Fields]], reply)

    async def read(self, after: dict[str, str], count: int) -> list[tuple[str, bytes, Fields]]:
        """The entries after `after[key]` of every stream, in id order; waits up to a second
        for the first (one blocking XREAD on one server; a cluster refuses XREAD across
        slots, so there each stream is read without blocking, then a short sleep)."""
        if self.cluster:
            replies = await asyncio.gather(
                *(self.client.xread({key: after[key]}, count=count) for key in self.keys)
            )
            found = [_entries(reply) for reply in replies]
        else:
            # BLOCK is under the client's socket timeout, so a quiet stream is no error.
            streams: dict[Any, Any] = dict(after)
            found = [_entries(await self.client.xread(streams, count=count, block=1000))]
        entries = sorted((e for part in found for e in part), key=lambda e: _id(e[1]))
        if self.cluster and not entries:
            await asyncio.sleep(_FOLLOW_POLL_S)
        return entries

    async def any_exist(self) -> bool:
        found = await asyncio.gather(*(self.client.exists(key) for key in self.keys))
        return any(found)

    async def create_group(self, key: str, group: str) -> None:
        try:
            await self.client.xgroup_create(key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim(
        self, key: str, group: str, consumer: str, min_idle_ms: int, cursor: str
    ) -> str:
        """Move idle pending entries of other consumers to `consumer`; the next cursor."""
        # Not JUSTID: redis-py then drops the cursor. The entries are read again anyway.
        reply = await self.client.xautoclaim(
            key, group, consumer, min_idle_ms, start_id=cursor, count=_CHUNK
        )
        return cast(bytes, reply[0]).decode()

    async def read_group(self, key: str, group: str, consumer: str, cursor: str) -> list[Entry]:
        reply = await self.client.xreadgroup(group, consumer, {key: cursor}, count=_CHUNK)
        return cast(list[Entry], cast(list[Any], reply)[0][1]) if reply else []

    async def ack(self, key: str, group: str, ids: list[bytes]) -> None:
        for i in range(0, len(ids), 1000):
            await self.client.xack(key, group, *ids[i : i + 1000])

    async def close(self) -> None:
        await self.client.aclose()


def _entries(reply: Any) -> list[tuple[str, bytes, Fields]]:
    """XREAD's RESP2 reply, [[key, entries], ...] or nil, flattened."""
    return [
        (key.decode(), entry_id, fields)
        for key, entries in cast(list[tuple[bytes, list[tuple[bytes, Fields]]]], reply or [])
        for entry_id, fields in entries
    ]


async def _merge(
    sources: list[AsyncIterator[T]], key: Callable[[T], tuple[int, int]]
) -> AsyncIterator[T]:
    """The items of sources each in `key` order, merged into one `key` order."""
    heads: list[tuple[tuple[int, int], int, T]] = []
    for i, source in enumerate(sources):
        if (item := await anext(source, None)) is not None:
            heapq.heappush(heads, (key(item), i, item))
    while heads:
        _, i, item = heapq.heappop(heads)
        yield item
        if (after := await anext(sources[i], None)) is not None:
            heapq.heappush(heads, (key(after), i, after))


def _entry_id(entry: tuple[str, bytes, Any]) -> tuple[int, int]:
    return _id(entry[1])


async def _tail_stream(
    url: str, where: Filter, follow: bool, last: int | None
) -> AsyncIterator[AuditRecord]:
    streams = _Streams(url, where.model)
    try:
        newest = dict.fromkeys(streams.keys, "0-0")
        if last is None:
            async for key, entry_id, fields in _merge(
                [_ranged(streams, key) for key in streams.keys], _entry_id
            ):
                newest[key] = entry_id.decode()
                if where.index_matches(fields):
                    yield decode_record(fields[_RECORD])
        else:
            history, newest = await _last_matching(streams, where, last)
            for fields in history:
                yield decode_record(fields[_RECORD])
        while follow:
            for key, entry_id, fields in await streams.read(newest, _CHUNK):
                newest[key] = entry_id.decode()
                if where.index_matches(fields):
                    yield decode_record(fields[_RECORD])
    finally:
        await streams.close()


async def _ranged(streams: _Streams, key: str) -> AsyncIterator[tuple[str, bytes, Fields]]:
    after = "0-0"
    while entries := await streams.range(key, after, _CHUNK):
        after = entries[-1][0].decode()
        for entry_id, fields in entries:
            yield key, entry_id, fields


async def _last_matching(
    streams: _Streams, where: Filter, last: int
) -> tuple[list[Fields], dict[str, str]]:
    """The last `last` matching entries of all the streams, oldest first, and the id of each
    stream's newest entry."""
    found: list[tuple[str, bytes, Fields]] = []
    newest: dict[str, str] = {}
    for key in streams.keys:
        newest[key] = "0-0"
        before = "+"
        mine: list[tuple[str, bytes, Fields]] = []
        while len(mine) < last and (entries := await streams.revrange(key, before, _CHUNK)):
            if before == "+":
                newest[key] = entries[0][0].decode()
            before = entries[-1][0].decode()
            mine.extend((key, i, f) for i, f in entries if where.index_matches(f))
        found.extend(mine[:last])
    found.sort(key=_entry_id)
    return [f for _, _, f in (found[-last:] if last else [])], newest


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
    request id; returns the rows written. See the module docstring for the group semantics,
    which a file sink follows too."""
    window = _Window(since_ms, until_ms)
    path = file_path(url)
    if path is not None:
        return await asyncio.to_thread(_export_file, path, model, window, to, group)
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

    def add(self, stream_id: str | None, r: AuditRecord) -> None:
        if r.request_id in self._seen:
            return
        self._seen.add(r.request_id)
        self._rows.append(_row(stream_id, r))
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


def _row(stream_id: str | None, r: AuditRecord) -> dict[str, Any]:
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
        "features": [
            (view, values.astype(np.float64).tolist()) for view, (values, _) in r.features.items()
        ],
        "feature_status": [
            (view, [_STATUS_LABELS[code] for code in status.tolist()])
            for view, (_, status) in r.features.items()
        ],
        "inputs": _numeric(r.inputs),
        "outputs": _numeric(r.outputs),
    }


def _numeric(tensors: dict[str, np.ndarray]) -> list[tuple[str, list[float]]]:
    """The numeric tensors flattened; BYTES tensors (entity ids) are in their own column."""
    return [
        (name, a.astype(np.float64).ravel().tolist())
        for name, a in tensors.items()
        if a.dtype.kind in "biuf"
    ]


def _export_file(path: Path, model: str, window: _Window, to: Path, group: str) -> int:
    files = sink_files(path)
    if not files:
        raise AuditSourceError(f"{path}: no audit file")
    cursor = _FileCursor(path.with_name(f"{path.name}.export-{model}-{group}"))
    known = cursor.exists()
    rows = _ParquetRows(to)
    try:
        for payload in cursor.unread(files):
            r = decode_record(payload)
            if r.model == model:
                known = True
                if r.ts_ms in window:
                    rows.add(None, r)
        if not known:
            raise _unknown_model(str(path), model)
    except BaseException:
        rows.abort()
        raise
    rows.close()
    cursor.save()
    return rows.written


class _FileCursor:
    """How far an export group has read a file sink: a file, by inode (a rotation renames it,
    the inode stays), and an offset in it; every file older than it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._at: tuple[int, int] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def unread(self, files: list[Path]) -> Iterator[bytes]:
        """The payloads after the cursor, oldest first; the cursor moves to their end, and is
        kept by `save`."""
        inode, offset = orjson.loads(self.path.read_bytes()) if self.exists() else (-1, 0)
        inodes = [_inode(f) for f in files]
        start = inodes.index(inode) if inode in inodes else 0
        offset = offset if inode in inodes else 0
        for f in files[start:]:
            fd = os.open(f, os.O_RDONLY)
            try:
                while True:
                    frames, offset = read_frames(fd, offset, _CHUNK)
                    if not frames:
                        break
                    yield from frames
                self._at = (os.fstat(fd).st_ino, offset)
            finally:
                os.close(fd)
            offset = 0

    def save(self) -> None:
        if self._at is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(orjson.dumps(self._at))
            os.replace(tmp, self.path)


async def _export_stream(
    url: str,
    model: str,
    window: _Window,
    to: Path,
    group: str,
    consumer: str,
    min_idle_ms: int,
) -> int:
    streams = _Streams(url, model)
    try:
        # Before any group is made: making one makes its stream.
        if not await streams.any_exist():
            raise _unknown_model(display_url(url), model, streams.keys)
        sources = [
            await _group_entries(streams, key, group, consumer, min_idle_ms) for key in streams.keys
        ]
        rows = _ParquetRows(to)
        read: dict[str, list[bytes]] = {key: [] for key in streams.keys}
        try:
            async for key, entry_id, fields in _merge(sources, _entry_id):
                read[key].append(entry_id)
                if fields and int(fields[b"ts_ms"]) in window:
                    rows.add(entry_id.decode(), decode_record(fields[_RECORD]))
        except BaseException:
            rows.abort()
            raise
        rows.close()
        for key, ids in read.items():
            await streams.ack(key, group, ids)
        return rows.written
    finally:
        await streams.close()


async def _group_entries(
    streams: _Streams, key: str, group: str, consumer: str, min_idle_ms: int
) -> AsyncIterator[KeyedEntry]:
    """The entries of one stream an export run reads, in id order: our own pending entries
    first (a run that died, or the ones just claimed), then the new ones up to what the
    stream held when we started: a busy gateway must not keep the export running."""
    await streams.create_group(key, group)
    cursor = "0-0"
    while (cursor := await streams.claim(key, group, consumer, min_idle_ms, cursor)) != "0-0":
        pass
    newest = await streams.revrange(key, "+", 1)
    end = _id(newest[0][0]) if newest else (0, 0)

    async def entries() -> AsyncIterator[KeyedEntry]:
        for start, stop in (("0", None), (">", end)):
            async for entry_id, fields in _read_group(streams, key, group, consumer, start, stop):
                yield key, entry_id, fields

    return entries()


async def _read_group(
    streams: _Streams, key: str, group: str, consumer: str, start: str, end: tuple[int, int] | None
) -> AsyncIterator[Entry]:
    """XREADGROUP from `start` ("0": our pending list, ">": new entries) to the end, or
    to the first batch that reaches the entry `end`."""
    cursor = start
    while entries := await streams.read_group(key, group, consumer, cursor):
        for entry in entries:
            yield entry
        if end is not None and _id(entries[-1][0]) >= end:
            return
        if start == "0":
            cursor = entries[-1][0].decode()


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)
