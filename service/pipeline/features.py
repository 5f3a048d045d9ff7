"""The features stage: an entity's online features, fetched and assembled into an input tensor.

Owns the online store, the feature views, the coalescing reader, and the one mapping of store
errors to client errors, which the feature push uses too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feature_store.coalescing import CoalescingReader
from feature_store.errors import EntityNotFound, FeatureStoreError, SchemaMismatch, StoreUnavailable
from feature_store.store import EventTimeOutOfRange, OnlineStore, ViewRows
from feature_store.views import FeatureView
from service import metrics
from service.log_limit import Repeated
from service.protocol.datatypes import numpy_dtype
from service.protocol.errors import BackendError, GatewayError, InvalidInput, NotFound, Unavailable
from service.repository.config import InputSpec

log = logging.getLogger(__name__)
# A store outage fails every request; the log gets one line per interval of it.
store_warnings = Repeated(log)

# A request's entities are read this many at a time, with a return to the event loop between
# slices: a large request's key building and row decoding never holds the loop for long, so
# small requests keep being answered while it is served.
FETCH_SLICE = 512


@dataclass(slots=True)
class FeaturePlan:
    """How one model input is assembled from online features, worked out at load."""

    input_name: str
    entity: str
    views: list[FeatureView]
    dtype: np.dtype[Any]
    width: int
    # "view.feature" and, where unambiguous, bare "feature" -> column index.
    columns: dict[str, int]

    @classmethod
    def build(cls, spec: InputSpec, views: Mapping[str, FeatureView]) -> FeaturePlan:
        assert spec.features is not None
        chosen = [views[name] for name in spec.features.views]
        columns: dict[str, int] = {}
        bare_seen: dict[str, int] = {}
        col = 0
        for view in chosen:
            for name in view.feature_names:
                columns[f"{view.name}.{name}"] = col
                bare_seen[name] = bare_seen.get(name, 0) + 1
                columns.setdefault(name, col)
                col += 1
        for name, seen in bare_seen.items():
            if seen > 1:
                del columns[name]
        return cls(
            input_name=spec.name,
            entity=spec.features.entity,
            views=chosen,
            dtype=numpy_dtype(spec.datatype),
            width=col,
            columns=columns,
        )


class Features:
    """Reads for the request path, writes for the feature push; both fail the same way."""

    def __init__(
        self,
        store: OnlineStore,
        views: Mapping[str, FeatureView],
        *,
        coalesce: bool,
        fetch_slice: int = FETCH_SLICE,
    ) -> None:
        self.store = store
        self.views = dict(views)
        self.fetch_slice = fetch_slice
        # Concurrent requests' reads share one store round trip (feature_store/coalescing.py).
        self._reader: OnlineStore | CoalescingReader = (
            CoalescingReader(store) if coalesce else store
        )
        self._latency = metrics.feature_fetch_latency(store.kind)
        store.on_round_trip = metrics.feature_store_round_trips(store.kind).inc

    async def fetch(self, plan: FeaturePlan, entity_ids: list[str]) -> list[ViewRows]:
        started = time.perf_counter()
        try:
            if len(entity_ids) <= self.fetch_slice:
                rows = await self._reader.read(plan.views, entity_ids)
            else:
                rows = await self._read_in_slices(plan, entity_ids)
        except FeatureStoreError as exc:
            raise client_error(exc) from None
        self._latency.observe(time.perf_counter() - started)
        for view_rows in rows:
            for status, count in view_rows.counts().items():
                if count:
                    metrics.feature_rows(view_rows.view.name, status).inc(count)
        return rows

    async def _read_in_slices(self, plan: FeaturePlan, entity_ids: list[str]) -> list[ViewRows]:
        """`read`, `fetch_slice` entities at a time, the views' rows joined in request order."""
        parts: list[list[ViewRows]] = []
        for start in range(0, len(entity_ids), self.fetch_slice):
            chunk = entity_ids[start : start + self.fetch_slice]
            parts.append(await self._reader.read(plan.views, chunk))
        return [
            ViewRows(
                view,
                np.concatenate([part[v].values for part in parts]),
                np.concatenate([part[v].status for part in parts]),
                np.concatenate([part[v].event_time_ms for part in parts]),
            )
            for v, view in enumerate(plan.views)
        ]

    def view(self, name: str) -> FeatureView:
        view = self.views.get(name)
        if view is None:
            raise NotFound(f"unknown feature view '{name}'; available: {', '.join(self.views)}")
        return view

    async def push(
        self,
        view: FeatureView,
        entity_ids: Sequence[str],
        values: np.ndarray,
        event_time_ms: int | None,
    ) -> None:
        try:
            await self.store.write(view, entity_ids, values, event_time_ms)
        except EventTimeOutOfRange as exc:
            raise InvalidInput(str(exc)) from None
        except FeatureStoreError as exc:
            raise client_error(exc) from None

    async def ready(self) -> bool:
        try:
            await self.store.ping()
        except FeatureStoreError:
            return False
        return True

    async def close(self) -> None:
        if isinstance(self._reader, CoalescingReader):
            await self._reader.close()
        await self.store.close()


def client_error(exc: FeatureStoreError) -> GatewayError:
    """What a client is told of a store failure, on every path that touches the store.

    Details of an unreachable or refusing store name internal hosts: they go to the log.
    """
    if isinstance(exc, EntityNotFound):
        return NotFound(str(exc))
    if isinstance(exc, SchemaMismatch):
        return BackendError(str(exc))
    store_warnings.warning(str(exc))
    if isinstance(exc, StoreUnavailable):
        return Unavailable("feature store unavailable; retry later")
    return Unavailable("the feature store refused the request; retry later")


def assemble(plan: FeaturePlan, rows: list[ViewRows], n: int) -> np.ndarray:
    """Concatenate the views' columns into the model's input tensor."""
    if len(rows) == 1:
        return rows[0].values.astype(plan.dtype, copy=False)
    out = np.empty((n, plan.width), dtype=plan.dtype)
    col = 0
    for view_rows in rows:
        width = view_rows.values.shape[1]
        out[:, col : col + width] = view_rows.values
        col += width
    return out


def apply_overrides(plan: FeaturePlan, tensor: np.ndarray, overrides: Mapping[str, Any]) -> None:
    """Request-time feature values: a number for every entity, or a list of one per entity."""
    for name, value in overrides.items():
        col = plan.columns.get(name)
        if col is None:
            raise InvalidInput(
                f"unknown feature '{name}' in 'features'; use 'view.feature' names "
                f"such as '{next(iter(plan.columns))}'"
            )
        try:
            values = np.asarray(value, dtype=tensor.dtype)
        except (TypeError, ValueError):
            raise InvalidInput(f"feature '{name}': override must be a number or list") from None
        if values.ndim > 1 or (values.ndim == 1 and len(values) != tensor.shape[0]):
            raise InvalidInput(
                f"feature '{name}': give one value or one per entity ({tensor.shape[0]})"
            )
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InvalidInput(f"feature '{name}': override contains NaN or infinite values")
        tensor[:, col] = values
