"""Where closed sub-windows' counts are merged: this process alone, or every process on Redis.

Counts are additive, so merging is adding. With Redis, each process appends its packed counts
of a closed sub-window to a list per (version, profile, sub-window) in one pipelined round
trip, and a window is the sum of every list entry of its sub-windows: `--workers N` and every
replica sharing the Redis are judged as one. Keys share one hash tag per version (one slot on
a Redis Cluster) and expire two windows after their sub-window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
from redis.asyncio import Redis, RedisCluster

from service.audit.sinks.redis_stream import connect
from service.audit.streams import parse


@dataclass(frozen=True, slots=True)
class Closed:
    """One process's counts of one ended sub-window of a version."""

    key: str  # VersionDrift.key
    sub_window: int
    counts: np.ndarray
    # The version's window: how long its sub-windows are kept.
    sub_windows: int
    sub_window_s: float

    @property
    def ttl_s(self) -> int:
        return max(1, round(2 * self.sub_windows * self.sub_window_s))


class Counts(Protocol):
    async def add(self, closed: list[Closed]) -> None: ...

    async def windows(self, wanted: list[tuple[str, list[int], int]]) -> list[np.ndarray]:
        """Per (key, sub-windows, bins), the summed counts of those sub-windows."""
        ...

    async def close(self) -> None: ...


class LocalCounts:
    """This process's counts only (no Redis): each worker judges its own traffic."""

    def __init__(self) -> None:
        self._kept: dict[str, dict[int, np.ndarray]] = {}

    async def add(self, closed: list[Closed]) -> None:
        for c in closed:
            kept = self._kept.setdefault(c.key, {})
            found = kept.get(c.sub_window)
            kept[c.sub_window] = c.counts if found is None else found + c.counts
            # Sub-windows two windows older than this one are in no window any more.
            for old in [s for s in kept if s <= c.sub_window - 2 * c.sub_windows]:
                del kept[old]

    async def windows(self, wanted: list[tuple[str, list[int], int]]) -> list[np.ndarray]:
        found = []
        for key, subs, bins in wanted:
            kept = self._kept.get(key, {})
            total = np.zeros(bins, np.int64)
            for s in subs:
                if s in kept:
                    total += kept[s]
            found.append(total)
        return found

    async def close(self) -> None:
        return None


def _redis_key(key: str, sub_window: int) -> str:
    return f"mlgate:drift:{{{key}}}:{sub_window}"


class RedisCounts:
    """Every process's counts, merged in Redis (one server or a Cluster)."""

    def __init__(self, url: str) -> None:
        self._client: Redis | RedisCluster = connect(parse(url), timeout_s=2.0)

    async def add(self, closed: list[Closed]) -> None:
        if not closed:
            return
        pipe = self._client.pipeline(transaction=False)
        for c in closed:
            name = _redis_key(c.key, c.sub_window)
            pipe.rpush(name, c.counts.astype("<i8").tobytes())
            pipe.expire(name, c.ttl_s)
        await pipe.execute()

    async def windows(self, wanted: list[tuple[str, list[int], int]]) -> list[np.ndarray]:
        pipe = self._client.pipeline(transaction=False)
        for key, subs, _ in wanted:
            for s in subs:
                pipe.lrange(_redis_key(key, s), 0, -1)
        replies = iter(cast(list[list[bytes]], await pipe.execute()))
        found = []
        for _, subs, bins in wanted:
            total = np.zeros(bins, np.int64)
            for _ in subs:
                for blob in next(replies):
                    total += np.frombuffer(blob, dtype="<i8")
            found.append(total)
        return found

    async def close(self) -> None:
        await self._client.aclose()
