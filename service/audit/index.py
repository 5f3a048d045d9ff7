"""Finding a recorded prediction again, hours later: by its request id, or by an entity and a
time. Label feedback joins a true label to what it finds here.

The audit writer indexes each answered prediction as it writes it, off the request path: a
compact entry of its time, version, route, entity ids and outputs (not its features or inputs).
Shadow copies (their request ids are the gateway's own) and feedback records are not indexed.

Redis sinks (one server or a cluster) SET `<stream>:id:<request id>` with a TTL
(`?index_ttl_s=`, default two days; 0: no id index) in the same pipeline as the record's XADD.
The key carries the stream's hash tag, so on a cluster it lives on the stream's node and rides
in that node's pipeline. Entity + time needs no index of its own: stream ids are the time of
the XADD in ms, so an XRANGE around the time finds the candidates, which are decoded and
matched. Every process and replica sees the same index.

The file sink keeps an in-process bounded index instead (the newest MEMORY_ENTRIES
predictions that process wrote): a label joins only through the process that served its
prediction, and only while that prediction is among the newest. With several workers or
replicas, or labels that come days later, audit to Redis.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import msgpack
import numpy as np
from hiredis import pack_command
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from service.audit.record import EncodedRecord, Tensor, tensor_array, unpack
from service.audit.streams import RECORD_FIELD, Target
from service.protocol.errors import Unavailable

log = logging.getLogger(__name__)

# Routes whose records are not predictions a client can label.
UNINDEXED_ROUTES = frozenset({"shadow", "feedback"})
MEMORY_ENTRIES = 100_000
# A record reaches its stream up to this long after its request (queue, batching, a spill
# drained later within the minute): the XRANGE of an entity + time search reaches this far on.
WRITE_SLACK_MS = 60_000
# The most stream entries an entity + time search reads per stream.
SCAN_LIMIT = 10_000
_RECORD = RECORD_FIELD.encode()
# XRANGE's reply: (entry id, fields) pairs.
Entries = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Recorded:
    """A prediction as the audit log recorded it, enough to score a label against."""

    request_id: str
    ts_ms: int
    model: str
    version: str
    route: str
    entity_ids: list[str] | None
    outputs: dict[str, np.ndarray]


class PredictionIndex(Protocol):
    async def by_id(self, model: str, request_id: str) -> Recorded | None: ...

    async def near(
        self, model: str, entity: str, ts_ms: int, within_ms: int
    ) -> Recorded | None: ...

    async def close(self) -> None: ...


def indexed(e: EncodedRecord) -> bool:
    return e.route not in UNINDEXED_ROUTES


def entry_bytes(payload: bytes) -> bytes:
    """The compact index entry of an encoded audit record."""
    d = unpack(payload)
    packed: bytes = msgpack.packb(
        {"ts": d["ts"], "ver": d["ver"], "route": d["route"], "ent": d["ent"], "out": d["out"]},
        use_bin_type=True,
    )
    return packed


def recorded(model: str, request_id: str, entry: bytes | dict[str, Any]) -> Recorded:
    """An index entry (or a whole decoded record's map) as a Recorded."""
    d = msgpack.unpackb(entry, raw=False) if isinstance(entry, bytes) else entry
    outputs: dict[str, Tensor] = d["out"]
    return Recorded(
        request_id=request_id,
        ts_ms=d["ts"],
        model=model,
        version=d["ver"],
        route=d["route"],
        entity_ids=d["ent"],
        outputs={name: tensor_array(t) for name, t in outputs.items()},
    )


def index_key(stream: str, request_id: str) -> str:
    return f"{stream}:id:{request_id}"


def pack_index_set(e: EncodedRecord, stream: str, ttl_s: int) -> bytes:
    """The SET of `e`'s index entry, packed to ride in the pipeline of its XADD."""
    args = ("SET", index_key(stream, e.request_id), entry_bytes(e.payload), "EX", ttl_s)
    packed: bytes = pack_command(args)  # type: ignore[arg-type]  # any length is accepted
    return packed


class MemoryIndex:
    """The newest `max_entries` predictions written by this process (the file sink's index)."""

    def __init__(self, max_entries: int = MEMORY_ENTRIES) -> None:
        self._max = max_entries
        # (model, request id) -> (ts_ms, entity ids, entry), oldest first.
        self._entries: OrderedDict[tuple[str, str], tuple[int, list[str] | None, bytes]] = (
            OrderedDict()
        )

    def add(self, e: EncodedRecord) -> None:
        if not indexed(e):
            return
        entry = entry_bytes(e.payload)
        entities = msgpack.unpackb(entry, raw=False)["ent"]
        self._entries[(e.model, e.request_id)] = (e.ts_ms, entities, entry)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def by_id(self, model: str, request_id: str) -> Recorded | None:
        found = self._entries.get((model, request_id))
        return None if found is None else recorded(model, request_id, found[2])

    async def near(self, model: str, entity: str, ts_ms: int, within_ms: int) -> Recorded | None:
        best: tuple[int, str, bytes] | None = None
        # Newest first: of equally close predictions the later one wins, as on Redis.
        for (m, request_id), (ts, entities, entry) in reversed(self._entries.items()):
            distance = abs(ts - ts_ms)
            if m != model or distance > within_ms or not entities or entity not in entities:
                continue
            if best is None or distance < best[0]:
                best = (distance, request_id, entry)
        return None if best is None else recorded(model, best[1], best[2])

    async def close(self) -> None:
        self._entries.clear()


@asynccontextmanager
async def _answering() -> AsyncIterator[None]:
    """A Redis that cannot answer is a 503 for the label's sender; the details (hosts) go to
    the log."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("audit index: %s", exc)
        raise Unavailable("the audit log cannot be read; retry later") from None


class RedisIndex:
    """The id index and the streams of a Redis audit sink, read back."""

    def __init__(self, client: Redis | RedisCluster, target: Target) -> None:
        self._client = client
        self._target = target

    async def by_id(self, model: str, request_id: str) -> Recorded | None:
        key = index_key(self._target.key_for(model, request_id), request_id)
        async with _answering():
            entry = cast(bytes | None, await self._client.get(key))
        return None if entry is None else recorded(model, request_id, entry)

    async def near(self, model: str, entity: str, ts_ms: int, within_ms: int) -> Recorded | None:
        async with _answering():
            return await self._near(model, entity, ts_ms, within_ms)

    async def _near(self, model: str, entity: str, ts_ms: int, within_ms: int) -> Recorded | None:
        low, high = max(0, ts_ms - within_ms), ts_ms + within_ms + WRITE_SLACK_MS
        best: tuple[int, int, dict[str, Any]] | None = None
        for stream in self._target.keys(model):
            entries = cast(Entries, await self._client.xrange(stream, low, high, count=SCAN_LIMIT))
            for _, fields in entries:
                d = unpack(fields[_RECORD])
                distance = abs(d["ts"] - ts_ms)
                if (
                    d["route"] in UNINDEXED_ROUTES
                    or distance > within_ms
                    or not d["ent"]
                    or entity not in d["ent"]
                ):
                    continue
                if best is None or (distance, -d["ts"]) < (best[0], -best[1]):
                    best = (distance, d["ts"], d)
        return None if best is None else recorded(model, best[2]["id"], best[2])

    async def close(self) -> None:
        await self._client.aclose()
