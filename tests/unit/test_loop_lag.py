"""The event-loop lag metric sees a loop held by a synchronous step."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from service.loop_lag import watch_lag


def lag_samples() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("mlgate_event_loop_lag_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("mlgate_event_loop_lag_seconds_sum") or 0.0
    return count, total


async def test_a_loop_held_for_50_ms_shows_about_50_ms_of_lag() -> None:
    watcher = asyncio.create_task(watch_lag(interval_s=0.01))
    try:
        await asyncio.sleep(0.05)
        count, total = lag_samples()
        time.sleep(0.05)  # noqa: ASYNC251 (on purpose: the loop is held, the timer fires late)
        await asyncio.sleep(0.03)
        after_count, after_total = lag_samples()
    finally:
        watcher.cancel()
    assert after_count > count
    assert after_total - total >= 0.04
