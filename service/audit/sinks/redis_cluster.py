"""Redis Streams sink on a Redis Cluster: each model's records sharded over hash-tagged
streams (service.audit.streams), one pipeline per node per batch, the nodes concurrently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisError

from service.audit.index import RedisIndex
from service.audit.record import EncodedRecord
from service.audit.sinks.redis_stream import commands, connect, send, trim
from service.audit.streams import Target, parse

log = logging.getLogger(__name__)


class RedisClusterStreamSink:
    """XADDs as RedisStreamSink's, grouped by the node that owns each stream's slot.

    A node that fails (down, past the timeout, an error reply such as MOVED after a failover)
    fails only the records of its streams: `write` returns them and the audit queue spills
    them by lane, one lane per stream, while every other node's records are stored. The slot
    map is read again before the next write after any failure.
    """

    def __init__(self, target: Target, *, timeout_s: float = 5.0) -> None:
        if not target.cluster or target.shards is None:
            raise ValueError("a cluster sink needs a redis+cluster:// target")
        self.target = target
        self.timeout_s = timeout_s
        # The whole batch runs under one deadline, so no per-read socket timeout.
        cluster = connect(target, timeout_s=None)
        assert isinstance(cluster, RedisCluster)
        self._cluster = cluster
        self.index = RedisIndex(connect(target), target)
        self._started = False
        self._stale = False

    @classmethod
    def from_url(cls, url: str) -> RedisClusterStreamSink:
        return cls(parse(url))

    def lane(self, e: EncodedRecord) -> str:
        return self.target.key_for(e.model, e.request_id)

    async def write(self, batch: Sequence[EncodedRecord]) -> list[EncodedRecord]:
        """Store the batch; the records not stored (each stream's in order). Raises only when
        no node can tell where the slots are."""
        await self._slot_map()
        how = trim(self.target.maxlen, self.target.minid_age_s)
        failed: list[EncodedRecord] = []
        by_node: dict[ClusterNode, tuple[list[EncodedRecord], list[bytes]]] = {}
        manager = self._cluster.nodes_manager
        for e in batch:
            key = self.lane(e)
            try:
                node = manager.get_node_from_slot(self._cluster.keyslot(key))
            except RedisError:
                failed.append(e)
                continue
            records, xadds = by_node.setdefault(node, ([], []))
            records.append(e)
            xadds.extend(commands(e, key, how, self.target.index_ttl_s))
        results = await asyncio.gather(
            *(
                self._send(node, b"".join(packed), len(packed))
                for node, (_, packed) in by_node.items()
            ),
            return_exceptions=True,
        )
        for (node, (records, _)), result in zip(by_node.items(), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancelled: not a node's fault
                log.debug("audit: node %s failed: %r", node.name, result)
                failed.extend(records)
        self._stale = bool(failed)
        return failed

    async def close(self) -> None:
        await self.index.close()
        await self._cluster.aclose()

    async def _slot_map(self) -> None:
        if not self._started:
            await self._cluster.initialize()
            self._started = True
        elif self._stale:
            await self._cluster.nodes_manager.initialize()
        self._stale = False

    async def _send(self, node: ClusterNode, packed: bytes, replies: int) -> None:
        conn = node.acquire_connection()
        try:
            await send(conn, packed, replies, self.timeout_s)
        finally:
            node.release(conn)
