"""Event times at the store: writes bounded to a plausible window, and freshness arithmetic
that a row stamped near ±2**63 cannot wrap into "fresh"."""

from __future__ import annotations

import numpy as np
import pytest

from feature_store.codec import encode_rows, row_key
from feature_store.memory_store import MemoryStore
from feature_store.store import (
    EARLIEST_EVENT_TIME_MS,
    MAX_AHEAD_MS,
    EventTimeOutOfRange,
    Status,
    epoch_ms,
)
from feature_store.views import FeatureView


def make_view() -> FeatureView:
    return FeatureView.model_validate(
        {
            "name": "stats",
            "entity": "user",
            "dtype": "float32",
            "ttl_s": 60,
            "features": [{"name": "a"}, {"name": "b"}],
        }
    )


@pytest.mark.parametrize(
    "event_time_ms",
    [-(2**63), -1, 0, EARLIEST_EVENT_TIME_MS - 1, 2**62, 2**63 - 1, 2**63, 2**70],
)
async def test_write_refuses_event_time_outside_the_window(event_time_ms: int) -> None:
    store = MemoryStore()
    with pytest.raises(EventTimeOutOfRange, match="event_time_ms"):
        await store.write(make_view(), ["u1"], np.ones((1, 2)), event_time_ms)


async def test_write_refuses_an_array_with_one_event_time_outside_the_window() -> None:
    now = epoch_ms()
    times = np.array([now, now + 2 * MAX_AHEAD_MS], dtype=np.int64)
    with pytest.raises(EventTimeOutOfRange):
        await MemoryStore().write(make_view(), ["u1", "u2"], np.ones((2, 2)), times)


@pytest.mark.parametrize("stamped", [-(2**63), -(2**62), 2**62, 2**63 - 1])
async def test_row_stamped_near_the_int64_limits_reads_as_stale_not_fresh(stamped: int) -> None:
    # Rows already stored (written before the window existed) are read, never trusted as fresh.
    view = make_view()
    store = MemoryStore()
    await store._store([(row_key(view, "u1"), encode_rows(view, np.ones((1, 2)), stamped)[0])])
    [rows] = await store.read([view], ["u1"])
    assert rows.status.tolist() == [Status.STALE]


async def test_row_inside_its_ttl_reads_as_fresh() -> None:
    view = make_view()
    store = MemoryStore()
    await store.write(view, ["u1"], np.ones((1, 2)), epoch_ms() - 1000)
    [rows] = await store.read([view], ["u1"])
    assert rows.status.tolist() == [Status.FRESH]
