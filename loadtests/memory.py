"""A process's resident memory, sampled in a background thread while a load runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

DEFAULT_INTERVAL_S = 0.1


def rss_bytes(pid: int) -> int | None:
    """The resident set size of `pid` (Linux's /proc), or None when it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # in kB
    return None  # a zombie has no VmRSS line


class RssSampler:
    """Samples `pid`'s RSS every `interval_s` between entering and leaving the block:
    `samples` is a list of (seconds since entering, bytes). A process that cannot be read
    leaves no samples, not an error: memory is a figure of the report, not its condition."""

    def __init__(self, pid: int, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError("the sampling interval must be positive")
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._start = 0.0

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._take()  # the state at the end, however the interval fell

    def elapsed_s(self) -> float:
        """Seconds since the block was entered, on the samples' clock."""
        return time.monotonic() - self._start

    def _sample(self) -> None:
        # A deadline schedule, not sleep(interval) after each read: samples stay evenly spaced.
        tick = 0
        while True:
            self._take()
            tick += 1
            if self._stop.wait(max(0.0, self._start + tick * self.interval_s - time.monotonic())):
                return

    def _take(self) -> None:
        value = rss_bytes(self.pid)
        if value is not None:
            self.samples.append((round(self.elapsed_s(), 3), value))
