"""Coalesced reads: concurrent lookups share one round trip to the store (the DataLoader idea).

A read does not go out at once: it waits for the end of the event loop's current turn, so
that every request handled in that turn joins it, and, while `max_in_flight` round trips are
out already, until one of them returns, so the next round trip takes everyone who arrived
meanwhile. No timer is involved: a lone read pays a task and a loop turn each way (about
10 µs of CPU, measured), and under load a batch grows exactly as fast as the store falls
behind.

Each caller still gets what `OnlineStore.read` would have given it: its own rows in its own
order, its own EntityNotFound or SchemaMismatch (which fail no other caller); a failed round
trip (StoreUnavailable) fails every read that was in it, and on a Redis Cluster a node that
did not answer fails only the reads with a key on it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass

from feature_store.store import Lookup, OnlineStore, ViewRows
from feature_store.views import FeatureView


@dataclass(slots=True)
class _Waiting:
    lookup: Lookup
    future: asyncio.Future[list[ViewRows]]


class CoalescingReader:
    """`read` as `OnlineStore.read`, with concurrent reads merged into one `read_many`.

    `max_in_flight` round trips are out at once, at most: 1 (the default) sends the next one
    when the last returns; a large number sends one per event-loop turn without waiting.
    """

    def __init__(self, store: OnlineStore, *, max_in_flight: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.store = store
        self.max_in_flight = max_in_flight
        # Round trips made and reads they carried, for tests and benchmarks.
        self.round_trips = 0
        self.reads = 0
        self._waiting: list[_Waiting] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(
        self,
        views: Sequence[FeatureView],
        entity_ids: Sequence[str],
        now_ms: int | None = None,
    ) -> list[ViewRows]:
        """What `OnlineStore.read` returns or raises, in a round trip shared with others."""
        if not views or not entity_ids:
            return await self.store.read(views, entity_ids, now_ms)  # no round trip at all
        future: asyncio.Future[list[ViewRows]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(Lookup(views, entity_ids, now_ms), future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._scheduled or self._in_flight >= self.max_in_flight:
            return
        self._scheduled = True
        # A task's first step runs after every callback already due in this turn: the reads
        # those callbacks make join this round trip.
        task = asyncio.get_running_loop().create_task(self._round_trip())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _round_trip(self) -> None:
        self._scheduled = False
        # A caller cancelled while waiting (its client went away) is left out.
        batch = [w for w in self._waiting if not w.future.done()]
        self._waiting = []
        if not batch:
            return
        self._in_flight += 1
        try:
            results = await self.store.read_many([w.lookup for w in batch])
        except asyncio.CancelledError:
            for w in batch:
                w.future.cancel()
            raise
        except Exception as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(_own_copy(exc))
        else:
            self.round_trips += 1
            self.reads += len(batch)
            for w, result in zip(batch, results, strict=True):
                if w.future.done():
                    continue
                if isinstance(result, list):
                    w.future.set_result(result)
                else:
                    w.future.set_exception(result)
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._schedule()

    async def close(self) -> None:
        """Wait for the round trips under way; call before closing the store."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _own_copy(exc: Exception) -> Exception:
    """`exc` for one of several callers: each raise then grows its own traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc
    clone.__cause__ = exc.__cause__
    return clone
