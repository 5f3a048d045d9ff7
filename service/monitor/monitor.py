"""The process's drift loop: hands closed sub-windows on, judges windows, sets the gauges.

Off the request path: a task wakes every TICK_S, hands every version's ended sub-windows to
the counts store in one round trip, and once a sub-window has ended and a grace period has
passed (for other processes to hand theirs on), reads the windows ending with it in one more
round trip and judges them in a thread (a new window size simulates thresholds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service import metrics
from service.log_limit import Repeated
from service.monitor.counts import Closed, Counts
from service.monitor.drift import Judgement, VersionDrift

log = logging.getLogger(__name__)
# A Redis outage fails every tick: one line per interval of it.
failures = Repeated(log)

TICK_S = 0.25
# After a sub-window ends, how long its counts may take to arrive from every process: at least
# two ticks, at most MAX_GRACE_S. Counts a process hands on later (it was stalled that long)
# land in Redis but miss the window already judged.
GRACE_FRACTION = 0.25
MAX_GRACE_S = 2.0


class DriftMonitor:
    def __init__(self, versions: Callable[[], list[VersionDrift]], counts: Counts) -> None:
        self._versions = versions
        self._counts = counts
        self._task: asyncio.Task[None] | None = None
        # (model, version, hash) of the profiles whose info gauge is set.
        self._published: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="drift-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._counts.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick(time.time())
            except Exception as exc:
                # The sub-windows this round took are lost: drift is judged on the rest.
                failures.warning(f"drift monitor: {type(exc).__name__}: {exc}")

    async def tick(self, now: float) -> None:
        versions = self._versions()
        self._publish_profiles(versions)
        await self._counts.add(
            [
                Closed(v.key, sub, counts, v.config.sub_windows, v.config.sub_window_s)
                for v in versions
                for sub, counts in v.closed(now).items()
            ]
        )
        due = [(v, through) for v in versions if (through := _due(v, now)) is not None]
        if not due:
            return
        merged = await self._counts.windows(
            [(v.key, v.window(through), v.binner.total) for v, through in due]
        )
        for (v, through), counts in zip(due, merged, strict=True):
            judgement = await asyncio.to_thread(v.judge, counts, through)
            if judgement is not None:
                _publish(v, judgement)

    def _publish_profiles(self, versions: list[VersionDrift]) -> None:
        current = {(v.model, v.version, v.profile.hash) for v in versions}
        for gone in self._published - current:
            # Zero first: in multiprocess mode a removed child's last value stays in its file.
            metrics.DRIFT_REFERENCE_INFO.labels(*gone).set(0)
            metrics.DRIFT_REFERENCE_INFO.remove(*gone)
        for new in current - self._published:
            metrics.DRIFT_REFERENCE_INFO.labels(*new).set(1)
        self._published = current


def _due(v: VersionDrift, now: float) -> int | None:
    """The last sub-window of the window to judge now, if one is due."""
    grace = max(2 * TICK_S, min(MAX_GRACE_S, GRACE_FRACTION * v.config.sub_window_s))
    through = v.sub_window(now - grace) - 1
    if v.judged_through is not None and through <= v.judged_through:
        return None
    return through


def _publish(v: VersionDrift, judgement: Judgement) -> None:
    metrics.DRIFT_WINDOW_ROWS.labels(v.model, v.version).set(judgement.rows)
    for c in judgement.columns:
        labels = (v.model, v.version, c.column.name, c.column.kind)
        metrics.DRIFT_SCORE.labels(*labels).set(c.score)
        metrics.DRIFT_THRESHOLD.labels(*labels).set(c.threshold)
        metrics.DRIFT_ALARM.labels(*labels).set(1 if c.alarm else 0)
