"""The event loop's lag, measured by a timer that should fire every `interval_s`: how late it
fires is how long any request ready at that moment waited for the loop."""

from __future__ import annotations

import asyncio
import time

from service.metrics import EVENT_LOOP_LAG

INTERVAL_S = 0.1


async def watch_lag(interval_s: float = INTERVAL_S) -> None:
    """Observe the loop's lag into `mlgate_event_loop_lag_seconds` until cancelled."""
    while True:
        due = time.perf_counter() + interval_s
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, time.perf_counter() - due))
