"""The async online-store interface and the result of a lookup, with a status per row.

Backends only move bytes (`_fetch`, `_store`); everything about rows — key layout, packing,
freshness, defaults — lives here, so the memory and Redis stores cannot drift apart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from feature_store.codec import decode_rows, encode_rows, row_key
from feature_store.errors import EntityNotFound
from feature_store.views import FeatureView


class Status(IntEnum):
    FRESH = 0
    STALE = 1
    MISSING = 2
    DEFAULTED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


_LABELS = [status.label for status in Status]


@dataclass(slots=True)
class ViewRows:
    """The rows of one view for the requested entities, in request order."""

    view: FeatureView
    values: npt.NDArray[Any]  # (n, width), view dtype
    status: npt.NDArray[np.uint8]  # (n,), Status values
    event_time_ms: npt.NDArray[np.int64]  # (n,), 0 where missing

    def counts(self) -> dict[str, int]:
        """Rows per status label, every label present (zeros included), for metrics."""
        per_status = np.bincount(self.status, minlength=len(Status))
        return dict(zip(_LABELS, per_status.tolist(), strict=True))


def epoch_ms() -> int:
    """Now, in milliseconds since the Unix epoch: the unit of every event time."""
    return time.time_ns() // 1_000_000


def display_url(url: str) -> str:
    """`url` without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


class OnlineStore(ABC):
    """Reads and writes packed feature rows; one round trip per `read` and per `write`."""

    kind: ClassVar[str]

    async def read(
        self,
        views: Sequence[FeatureView],
        entity_ids: Sequence[str],
        now_ms: int | None = None,
    ) -> list[ViewRows]:
        """Rows of every view for every entity, fetched in one round trip.

        A missing row gets the view defaults (MISSING), or raises EntityNotFound when the view
        says ``on_missing: error``. A row older than ``ttl_s`` at `now_ms` is served as is
        (STALE) or replaced by the defaults (DEFAULTED) when the view says ``on_stale: default``.
        """
        n = len(entity_ids)
        keys = [row_key(view, entity_id) for view in views for entity_id in entity_ids]
        blobs = await self._fetch(keys) if keys else []
        now = epoch_ms() if now_ms is None else now_ms
        return [
            self._rows_of(view, entity_ids, blobs[i * n : (i + 1) * n], now)
            for i, view in enumerate(views)
        ]

    @staticmethod
    def _rows_of(
        view: FeatureView, entity_ids: Sequence[str], blobs: Sequence[bytes | None], now: int
    ) -> ViewRows:
        values, present, event_time_ms = decode_rows(view, blobs)
        all_present = bool(present.all())
        if view.on_missing == "error" and not all_present:
            missing = np.flatnonzero(~present)
            raise EntityNotFound(
                view.name,
                view.entity,
                entity_ids[int(missing[0])],
                also_missing=len(missing) - 1,
            )
        if all_present:
            status = np.zeros(len(blobs), dtype=np.uint8)  # FRESH
        else:
            status = np.where(present, Status.FRESH, Status.MISSING).astype(np.uint8)
        if view.ttl_s is not None:
            stale = now - event_time_ms > view.ttl_s * 1000.0
            if not all_present:
                stale &= present
            if view.on_stale == "default":
                values[stale] = view.defaults
                status[stale] = Status.DEFAULTED
            else:
                status[stale] = Status.STALE
        return ViewRows(view=view, values=values, status=status, event_time_ms=event_time_ms)

    async def write(
        self,
        view: FeatureView,
        entity_ids: Sequence[str],
        values: npt.ArrayLike,
        event_time_ms: int | npt.NDArray[np.integer[Any]] | None = None,
    ) -> None:
        """Store one row per entity (values (n, width)) in one round trip; None means now."""
        array = np.asarray(values)
        if array.ndim != 2 or array.shape[0] != len(entity_ids):
            raise ValueError(
                f"feature view {view.name!r}: {len(entity_ids)} entity ids need values of shape "
                f"({len(entity_ids)}, {view.width}), got {array.shape}"
            )
        if not entity_ids:
            return
        blobs = encode_rows(view, array, epoch_ms() if event_time_ms is None else event_time_ms)
        keys = [row_key(view, entity_id) for entity_id in entity_ids]
        await self._store(list(zip(keys, blobs, strict=True)))

    @abstractmethod
    async def _fetch(self, keys: list[str]) -> list[bytes | None]:
        """The stored value of every key, None where absent, in one round trip."""

    @abstractmethod
    async def _store(self, items: list[tuple[str, bytes]]) -> None:
        """Set every key in one round trip; return only when all are stored."""

    @abstractmethod
    async def ping(self) -> None:
        """Return if the backend answers; raise StoreUnavailable if it does not."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""


SCHEMES = ("memory://", "redis://", "rediss://")


def open_store(url: str) -> OnlineStore:
    """The store a URL names: ``memory://``, ``redis://host:port/db`` or ``rediss://...``."""
    # Imported here because both subclass OnlineStore from this module.
    from feature_store.memory_store import MemoryStore
    from feature_store.redis_store import RedisStore

    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss"):
        return RedisStore(url)
    raise ValueError(
        f"unsupported feature store URL {display_url(url)!r}: use one of {', '.join(SCHEMES)}"
    )
