"""The async online-store interface and the result of a lookup, with a status per row.

Backends only move bytes (`_fetch`, `_store`); everything about rows — key layout, packing,
freshness, defaults — lives here, so the memory and Redis stores cannot drift apart.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import numpy.typing as npt

from feature_store.codec import decode_rows, encode_rows, row_key
from feature_store.errors import (
    EntityNotFound,
    FeatureStoreError,
    PartlyUnavailable,
    SchemaMismatch,
    StoreUnavailable,
)
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


@dataclass(slots=True, frozen=True)
class Lookup:
    """One caller's read, as `OnlineStore.read` takes it: the views, the entities, the time."""

    views: Sequence[FeatureView]
    entity_ids: Sequence[str]
    now_ms: int | None = None


def epoch_ms() -> int:
    """Now, in milliseconds since the Unix epoch: the unit of every event time."""
    return time.time_ns() // 1_000_000


# Event times a write accepts: from 2000-01-01 to a day past now (clocks drift; a row stamped
# later than that is a unit mistake, seconds or microseconds for milliseconds). A read counts
# a row stamped later than a day ahead of its clock as stale: it cannot be trusted as fresh.
EARLIEST_EVENT_TIME_MS = 946_684_800_000
MAX_AHEAD_MS = 86_400_000


# Column names that hold event times by convention, looked for when a file loaded names none:
# the push API's field, then the usual spellings.
EVENT_TIME_COLUMNS = ("event_time_ms", "event_time", "event_timestamp")
# Units of epoch numbers -> (multiplier, divisor) from a number in that unit to milliseconds.
EVENT_TIME_UNITS: dict[str, tuple[int, int]] = {
    "s": (1000, 1),
    "ms": (1, 1),
    "us": (1, 1000),
    "ns": (1, 1_000_000),
}


class EventTimeOutOfRange(ValueError):
    """A write's event time lies outside the plausible window."""


def event_time_window(now_ms: int) -> tuple[int, int]:
    """The first and last event time, in ms, a write accepts at `now_ms`."""
    return EARLIEST_EVENT_TIME_MS, now_ms + MAX_AHEAD_MS


def check_event_times(event_time_ms: int | npt.NDArray[np.integer[Any]], now_ms: int) -> None:
    """Raise EventTimeOutOfRange unless every event time lies in the window at `now_ms`."""
    times = np.asarray(event_time_ms)
    if times.size == 0:
        return
    # Compared as Python ints: an int past int64 (from JSON) is out of range, not an overflow.
    low, high = int(times.min()), int(times.max())
    _, latest = event_time_window(now_ms)
    if low < EARLIEST_EVENT_TIME_MS or high > latest:
        bad = low if low < EARLIEST_EVENT_TIME_MS else high
        raise EventTimeOutOfRange(
            f"event_time_ms {bad} is outside the window {EARLIEST_EVENT_TIME_MS} "
            f"(2000-01-01) .. {latest} (a day from now), in milliseconds since the epoch"
        )


def display_url(url: str) -> str:
    """`url` without its password (in the user part or as `?password=`), fit for messages and
    logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        parts = parts._replace(netloc=user + netloc)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        hidden = [(name, "***" if name == "password" else value) for name, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
    return parts.geturl()


class OnlineStore(ABC):
    """Reads and writes packed feature rows; one round trip per server (per cluster node) that
    a `read`, `read_many` or `write` touches, the servers asked concurrently."""

    kind: ClassVar[str]
    # Called once per round trip to a server by reads and writes (not by `ping`), so the gateway
    # can count them whatever the kind of store; None counts nothing.
    on_round_trip: Callable[[], object] | None = None

    def _round_trip(self) -> None:
        """For backends: one round trip to one server is about to go out."""
        if self.on_round_trip is not None:
            self.on_round_trip()

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
            _rows_of(view, entity_ids, blobs[i * n : (i + 1) * n], now)
            for i, view in enumerate(views)
        ]

    async def read_many(
        self, lookups: Sequence[Lookup]
    ) -> list[list[ViewRows] | FeatureStoreError]:
        """Every lookup's rows, fetched in one round trip for all of them together.

        Each lookup gets what `read` would have given it: its rows, or its own error
        (EntityNotFound, SchemaMismatch) as a value, so that one lookup's missing entity fails
        no other. A failed round trip (StoreUnavailable) raises: it fails every lookup; where
        only some servers failed (PartlyUnavailable, a cluster node down), only the lookups
        with a key on them get StoreUnavailable, as a value.
        Lookups of the same views (one model's feature plan) are decoded together, a few numpy
        calls per view for the whole lot.
        """
        if len(lookups) == 1:  # `read` itself: grouping and slicing would only cost time
            lookup = lookups[0]
            try:
                return [await self.read(lookup.views, lookup.entity_ids, lookup.now_ms)]
            except (EntityNotFound, SchemaMismatch) as exc:
                return [exc]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, lookup in enumerate(lookups):
            groups.setdefault(tuple(map(id, lookup.views)), []).append(index)
        keys: list[str] = []
        spans: list[tuple[list[int], list[str], int]] = []  # members, their ids, first key
        for members in groups.values():
            ids = [entity_id for i in members for entity_id in lookups[i].entity_ids]
            spans.append((members, ids, len(keys)))
            for view in lookups[members[0]].views:
                keys.extend(row_key(view, entity_id) for entity_id in ids)
        unreached: PartlyUnavailable | None = None
        try:
            blobs = await self._fetch(keys) if keys else []
        except PartlyUnavailable as exc:
            blobs, unreached = exc.blobs, exc
        now = epoch_ms()
        results: list[list[ViewRows] | FeatureStoreError] = [[] for _ in lookups]
        for members, ids, first in spans:
            group = [lookups[i] for i in members]
            try:
                got = _rows_of_group(group, ids, blobs, first, now)
            except SchemaMismatch:
                # Rare: rows left over from an older view. Only lookups that read them fail.
                got = _rows_of_each(group, blobs, first, now)
            for i, rows in zip(members, got, strict=True):
                results[i] = rows
        if unreached is not None:
            _fail_unreached(lookups, spans, len(keys), unreached, results)
        return results

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
        now = epoch_ms()
        if event_time_ms is not None:
            check_event_times(event_time_ms, now)
        blobs = encode_rows(view, array, now if event_time_ms is None else event_time_ms)
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


def _rows_of(
    view: FeatureView, entity_ids: Sequence[str], blobs: Sequence[bytes | None], now: int
) -> ViewRows:
    values, present, event_time_ms = decode_rows(view, blobs)
    if view.on_missing == "error" and not present.all():
        raise _not_found(view, entity_ids, present)
    status = _status(view, values, present, event_time_ms, now)
    return ViewRows(view=view, values=values, status=status, event_time_ms=event_time_ms)


def _rows_of_group(
    group: Sequence[Lookup],
    entity_ids: Sequence[str],
    blobs: Sequence[bytes | None],
    first: int,
    now: int,
) -> list[list[ViewRows] | FeatureStoreError]:
    """The rows of lookups of the same views, decoded and checked together, then sliced.

    `entity_ids` are the group's lookups' ids one after another; the blobs of view ``v`` start
    at ``first + v * len(entity_ids)``. Raises SchemaMismatch if any row has another schema.
    """
    n = len(entity_ids)
    sizes = [len(lookup.entity_ids) for lookup in group]
    bounds = [0, *itertools.accumulate(sizes)]
    nows = [now if lookup.now_ms is None else lookup.now_ms for lookup in group]
    # One clock for the common case; else each row is judged at its own lookup's time.
    row_now: int | npt.NDArray[np.int64] = (
        nows[0] if nows.count(nows[0]) == len(nows) else np.repeat(np.array(nows), sizes)
    )
    results: list[list[ViewRows] | FeatureStoreError] = [[] for _ in group]
    for v, view in enumerate(group[0].views):
        start = first + v * n
        values, present, event_time_ms = decode_rows(view, blobs[start : start + n])
        status = _status(view, values, present, event_time_ms, row_now)
        check_missing = view.on_missing == "error" and not present.all()
        for j, rows in enumerate(results):
            if not isinstance(rows, list):
                continue  # failed on an earlier view, as `read` would have
            a, b = bounds[j], bounds[j + 1]
            if check_missing and not present[a:b].all():
                results[j] = _not_found(view, group[j].entity_ids, present[a:b])
                continue
            # Slices, not copies: callers' rows never overlap, so a caller that writes into
            # its own (request-time overrides) changes no other caller's.
            rows.append(ViewRows(view, values[a:b], status[a:b], event_time_ms[a:b]))
    return results


def _rows_of_each(
    group: Sequence[Lookup], blobs: Sequence[bytes | None], first: int, now: int
) -> list[list[ViewRows] | FeatureStoreError]:
    """`_rows_of_group`, one lookup at a time: each lookup gets its own errors."""
    n = sum(len(lookup.entity_ids) for lookup in group)
    results: list[list[ViewRows] | FeatureStoreError] = []
    offset = 0
    for lookup in group:
        m = len(lookup.entity_ids)
        lookup_now = now if lookup.now_ms is None else lookup.now_ms
        try:
            results.append(
                [
                    _rows_of(
                        view,
                        lookup.entity_ids,
                        blobs[first + v * n + offset : first + v * n + offset + m],
                        lookup_now,
                    )
                    for v, view in enumerate(lookup.views)
                ]
            )
        except (EntityNotFound, SchemaMismatch) as exc:
            results.append(exc)
        offset += m
    return results


def _fail_unreached(
    lookups: Sequence[Lookup],
    spans: list[tuple[list[int], list[str], int]],
    n_keys: int,
    error: PartlyUnavailable,
    results: list[list[ViewRows] | FeatureStoreError],
) -> None:
    """StoreUnavailable for each lookup with a key no server answered for (its rows were
    decoded as missing); the other lookups keep their rows."""
    unreached = np.zeros(n_keys, dtype=np.bool_)
    unreached[error.unreached] = True
    for members, ids, first in spans:
        n = len(ids)
        views = len(lookups[members[0]].views)
        # (views, entities of the group) -> per entity, whether any of its views was unreached
        per_entity = np.logical_or.reduce(unreached[first : first + views * n].reshape(views, n))
        offset = 0
        for i in members:
            m = len(lookups[i].entity_ids)
            if per_entity[offset : offset + m].any():
                results[i] = StoreUnavailable(str(error))
            offset += m


def _not_found(
    view: FeatureView, entity_ids: Sequence[str], present: npt.NDArray[np.bool_]
) -> EntityNotFound:
    missing = np.flatnonzero(~present)
    return EntityNotFound(
        view.name, view.entity, entity_ids[int(missing[0])], also_missing=len(missing) - 1
    )


def _status(
    view: FeatureView,
    values: npt.NDArray[Any],
    present: npt.NDArray[np.bool_],
    event_time_ms: npt.NDArray[np.int64],
    now: int | npt.NDArray[np.int64],
) -> npt.NDArray[np.uint8]:
    """Each row's status at `now`; stale rows of an ``on_stale: default`` view get the
    defaults in `values`, in place."""
    all_present = bool(present.all())
    if all_present:
        status = np.zeros(len(present), dtype=np.uint8)  # FRESH
    else:
        status = np.where(present, Status.FRESH, Status.MISSING).astype(np.uint8)
    if view.ttl_s is not None:
        # In float64: an int64 difference with a row stamped near ±2**63 would wrap into "fresh".
        age_ms = np.subtract(now, event_time_ms, dtype=np.float64)
        stale = (age_ms > view.ttl_s * 1000.0) | (age_ms < -MAX_AHEAD_MS)
        if not all_present:
            stale &= present
        if view.on_stale == "default":
            values[stale] = view.defaults
            status[stale] = Status.DEFAULTED
        else:
            status[stale] = Status.STALE
    return status
