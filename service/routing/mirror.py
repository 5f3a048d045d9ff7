"""Shadow copies: mirrored after the primary answer is ready, never waited for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from service import metrics

log = logging.getLogger(__name__)

J = TypeVar("J")


class Mirror(Generic[J]):
    """Shadow copies: a bounded queue and a few workers of their own.

    `submit` never waits: with the queue full the copy is dropped and counted, so a slow shadow
    version costs its own traffic, never the primary's.
    """

    def __init__(self, run: Callable[[J], Awaitable[None]], size: int, workers: int) -> None:
        self._run = run
        self._queue: asyncio.Queue[J] = asyncio.Queue(size)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, job: J, model: str, version: str) -> bool:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            metrics.shadow_dropped(model, version).inc()
            return False
        metrics.SHADOW_QUEUE_DEPTH.set(self._queue.qsize())
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            metrics.SHADOW_QUEUE_DEPTH.set(self._queue.qsize())
            try:
                await self._run(job)
            except Exception:
                # The run records its own failures; anything else must not end the worker.
                log.exception("shadow copy failed")

    async def close(self) -> None:
        """Stop; copies still queued are dropped (nobody waits for their answers)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
