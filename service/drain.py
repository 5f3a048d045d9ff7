"""Graceful drain: SIGTERM takes a process out of load balancing before it stops.

uvicorn stops accepting connections the moment SIGTERM arrives, while load balancers still send
traffic until their readiness probes notice; those requests would meet a closed port. A drain
turns readiness false at once (HTTP /v2/health/ready answers 503, grpc.health.v1 says
NOT_SERVING), keeps serving for `delay_s`, and only then hands the signal to uvicorn's own
handler, whose shutdown stops accepting, finishes in-flight requests and runs the lifespan's
shutdown (batches, then the audit queue, flushed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

Listener = Callable[[], Coroutine[None, None, None]]


class Drain:
    """One process's drain: its flag, what to tell when it begins, and its SIGTERM hook."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.draining = False
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def on_begin(self, listener: Listener) -> None:
        """`listener` runs on the event loop when the drain begins (the gRPC health status)."""
        self._listeners.append(listener)

    @contextmanager
    def on_sigterm(self) -> Iterator[None]:
        """While the context lasts, SIGTERM begins the drain and the SIGTERM handler in place
        (uvicorn's, which starts its shutdown) runs `delay_s` later. Only the main thread can
        handle signals; elsewhere (an in-process test client) nothing is hooked."""
        stop = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread() or not callable(stop):
            yield
            return
        loop = asyncio.get_running_loop()

        def begin(sig: int, frame: FrameType | None) -> None:
            if self.draining:
                # A second SIGTERM (one to the process group, and the supervisor's forwarded
                # copy) must not cut the delay short.
                return
            # Set here, in the handler, so the very next readiness probe sees it.
            self.draining = True
            loop.call_soon_threadsafe(self._begun, lambda: stop(sig, None))

        signal.signal(signal.SIGTERM, begin)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, stop)

    def _begun(self, stop: Callable[[], None]) -> None:
        log.info("SIGTERM: draining; not ready, still serving for %.1fs", self.delay_s)
        for listener in self._listeners:
            task = asyncio.get_running_loop().create_task(listener())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        asyncio.get_running_loop().call_later(self.delay_s, stop)
