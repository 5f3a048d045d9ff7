"""One log line per interval for a warning that repeats: an outage must not flood the log.

The first occurrence is logged at once; later ones within `interval_s` are counted, and the
next line says how many were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Repeated:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def warning(self, message: str) -> None:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            self._log.warning(
                "%s (and %d more like it in the last %.0f s)",
                message,
                self._held,
                self._interval_s,
            )
        else:
            self._log.warning("%s", message)
        self._next = now + self._interval_s
        self._held = 0
