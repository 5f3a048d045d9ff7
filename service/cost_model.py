"""Run time of a batch as fixed + per_row * rows, fitted from the runs seen so far."""

from __future__ import annotations

# Weight of the newest run: the last ~5 runs dominate, so the fit follows a change of load (or
# of machine) within a handful of them. The batcher's arrival averages share it.
ALPHA = 0.2


class CostModel:
    """Batch execution time as fixed + per_row * rows, by exponentially weighted least squares."""

    __slots__ = ("_n", "_nn", "_nt", "_t", "fixed", "largest", "per_row")

    def __init__(self) -> None:
        self._n = self._t = self._nn = self._nt = 0.0
        self.fixed = 0.0
        self.per_row = 0.0
        self.largest = 0  # the most rows of any run seen: the fit says nothing beyond

    def observe(self, rows: int, seconds: float) -> None:
        weight = ALPHA if self._n else 1.0
        self._n += weight * (rows - self._n)
        self._t += weight * (seconds - self._t)
        self._nn += weight * (rows * rows - self._nn)
        self._nt += weight * (rows * seconds - self._nt)
        self.largest = max(self.largest, rows)
        variance = self._nn - self._n * self._n
        # Batches of (nearly) one size cannot separate the two costs: all of it counts as fixed.
        slope = (self._nt - self._n * self._t) / variance if variance > 1e-6 * self._nn else 0.0
        # Clamped so that both costs stay non-negative; that also keeps seconds(rows) at or below
        # the mean batch time for any rows up to the mean batch size.
        self.per_row = min(max(slope, 0.0), self._t / self._n)
        self.fixed = self._t - self.per_row * self._n

    def seconds(self, rows: int) -> float:
        return self.fixed + self.per_row * rows

    @property
    def known(self) -> bool:
        return self._n > 0
