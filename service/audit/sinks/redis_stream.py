"""Redis Streams sink on one server: one pipelined XADD per record of a batch."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from hiredis import pack_command
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.audit.index import RedisIndex, indexed, pack_index_set
from service.audit.record import EncodedRecord
from service.audit.streams import DEFAULT_INDEX_TTL_S, DEFAULT_MAXLEN, RECORD_FIELD, Target, parse

# A trimming argument of XADD: ("MAXLEN", "~", n), ("MINID", "~", id) or none.
Trim = tuple[str | int, ...]


def connect(target: Target, *, timeout_s: float | None = 5.0) -> Redis | RedisCluster:
    """A client of the target's server or cluster."""
    # No client retries: a retried pipeline would add its records twice, and the audit queue
    # has its own recovery (spill, then drain in order).
    connect_s = min(timeout_s or 1.0, 1.0)
    if target.cluster:
        # Its own retries follow MOVED and ASK for the readers; the cluster sink takes only
        # the slot map from it and sends its pipelines itself.
        return RedisCluster.from_url(
            target.url, socket_connect_timeout=connect_s, socket_timeout=timeout_s
        )
    return Redis.from_url(
        target.url,
        socket_connect_timeout=connect_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def trim(maxlen: int | None, minid_age_s: float | None) -> Trim:
    if minid_age_s is not None:
        return ("MINID", "~", int(time.time() * 1000 - minid_age_s * 1000))
    if maxlen is not None:
        return ("MAXLEN", "~", maxlen)
    return ()


async def send(conn: AbstractConnection, packed: bytes, replies: int, timeout_s: float) -> None:
    """Send packed commands and read their replies, all under one deadline.

    An error reply raises after the commands before it were applied: a retry of the whole
    batch then adds those twice (at-least-once)."""
    try:
        async with asyncio.timeout(timeout_s):
            await conn.send_packed_command(packed, check_health=False)
            for _ in range(replies):
                await conn.read_response(timeout=math.inf)
    except BaseException:
        # Replies may be left unread: the connection must not serve anyone again.
        await conn.disconnect()
        raise


def xadd(e: EncodedRecord, key: str, trim: Trim) -> bytes:
    args = (
        "XADD",
        key,
        *trim,
        "*",
        "request_id",
        e.request_id,
        "version",
        e.version,
        "route",
        e.route,
        "flags",
        ",".join(e.flags),
        "ts_ms",
        e.ts_ms,
        RECORD_FIELD,
        e.payload,
    )
    # hiredis's stub declares a one-element tuple; any length is accepted.
    packed: bytes = pack_command(args)  # type: ignore[arg-type]
    return packed


def commands(e: EncodedRecord, key: str, trim: Trim, index_ttl_s: int) -> list[bytes]:
    """The XADD of `e` to `key`, and the SET of its index entry (service.audit.index)."""
    packed = [xadd(e, key, trim)]
    if index_ttl_s and indexed(e):
        packed.append(pack_index_set(e, key, index_ttl_s))
    return packed


class RedisStreamSink:
    """XADD to `audit:<model>` (or its shard with `shards`) with `MAXLEN ~ maxlen`, or
    `MINID ~ now - minid_age_s` if set.

    Each entry carries the encoded record in `record` and, beside it, the small fields that
    `tail` and `export` filter on without decoding: request_id, version, route, flags
    (comma-joined) and ts_ms. Streams store the field names of like entries once.

    A batch is one non-transactional pipeline: every XADD sent in one write, the replies read
    back under one timeout. It is packed with hiredis rather than through redis-py's
    pipeline, whose pure-Python packing of 18 arguments per XADD cost ~3x the event-loop time
    per record (measured: ~60 vs ~20 µs). One server fails or succeeds as a whole: one lane.
    """

    def __init__(
        self,
        url: str,
        *,
        maxlen: int | None = DEFAULT_MAXLEN,
        minid_age_s: float | None = None,
        shards: int | None = None,
        index_ttl_s: int = DEFAULT_INDEX_TTL_S,
        timeout_s: float = 5.0,
    ) -> None:
        self.target = Target(
            url=parse(url).url,
            cluster=False,
            shards=shards,
            maxlen=maxlen,
            minid_age_s=minid_age_s,
            index_ttl_s=index_ttl_s,
        )
        self.minid_age_s = minid_age_s
        self.timeout_s = timeout_s
        # The whole batch runs under one deadline, so no per-read socket timeout.
        client = connect(self.target, timeout_s=None)
        assert isinstance(client, Redis)
        self._redis = client
        self.index = RedisIndex(connect(self.target), self.target)

    @classmethod
    def from_url(cls, url: str) -> RedisStreamSink:
        t = parse(url)
        return cls(
            t.url,
            maxlen=t.maxlen,
            minid_age_s=t.minid_age_s,
            shards=t.shards,
            index_ttl_s=t.index_ttl_s,
        )

    def lane(self, e: EncodedRecord) -> str:
        return ""

    async def write(self, batch: Sequence[EncodedRecord]) -> list[EncodedRecord]:
        t = self.target
        how = trim(t.maxlen, t.minid_age_s)
        packed = [
            c
            for e in batch
            for c in commands(e, t.key_for(e.model, e.request_id), how, t.index_ttl_s)
        ]
        pool = self._redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # untyped upstream
        try:
            await send(conn, b"".join(packed), len(packed), self.timeout_s)
        finally:
            await pool.release(conn)
        return []

    async def close(self) -> None:
        await self.index.close()
        await self._redis.aclose()
