"""Synthetic entities for the demo views: deterministic values for ids u0, u1, ..., written in
chunks. The server seeds its embedded store with them (`--demo-entities`); a module of its own so
that serving does not import the file loader's pyarrow.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from feature_store.store import OnlineStore, epoch_ms
from feature_store.views import FeatureView


def synthetic_rows(
    view: FeatureView, n: int, seed: int, *, start: int = 0
) -> tuple[list[str], npt.NDArray[Any]]:
    """Entity ids ``u{start}..u{start+n-1}`` and plausible non-negative values for them.

    Entity ``u{i}`` gets the same values whatever `start` and `n` cover it, so data seeded in
    chunks of any size is identical, and one entity's expected values can be recomputed alone.
    """
    ids = [f"u{i}" for i in range(start, start + n)]
    bits = np.random.PCG64([seed, view.schema_hash])
    # Generator.random draws exactly one 64-bit output per value, so skipping `start` rows is
    # one jump of the bit generator.
    bits.advance(start * view.width)
    uniform = np.random.Generator(bits).random((n, view.width))
    # Per-feature magnitudes 1..1000 and a square to skew towards zero, like counts and amounts.
    scales = np.array([10.0 ** (zlib.crc32(name.encode()) % 4) for name in view.feature_names])
    values = uniform**2 * scales
    if view.dtype == "int64":
        return ids, np.floor(values).astype(np.int64)
    return ids, values.astype(np.float32)


async def seed_synthetic(
    store: OnlineStore,
    views: Iterable[FeatureView],
    n: int,
    seed: int = 0,
    batch_rows: int = 10_000,
) -> None:
    """Write `n` synthetic entities to every view, one pipelined write per view and chunk."""
    views = list(views)
    event_time_ms = epoch_ms()
    for start in range(0, n, batch_rows):
        count = min(batch_rows, n - start)
        writes = []
        for view in views:
            ids, values = synthetic_rows(view, count, seed, start=start)
            writes.append(store.write(view, ids, values, event_time_ms))
        # The views' writes go out together: on Redis they overlap on separate connections.
        await asyncio.gather(*writes)
