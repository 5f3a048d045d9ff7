"""Drift statistics of binned counts, and their thresholds at a window's size.

PSI (population stability index) is the symmetric KL divergence of the two histograms, with
half a count added to every bin so that an empty bin stays finite; the binned KS statistic is
the largest gap between the two cumulative histograms (bins in their order: below-range,
the quantile bins, above-range, NaN).

A fixed PSI cut-off (0.1, 0.2) is wrong at every window size but one: PSI's spread under no
drift shrinks like 1/n. So a threshold is the (1 - level) quantile of the statistic's null
distribution at the window's own size, simulated: reference counts drawn from the
reference's proportions at its size, window counts drawn from them at the window's size (two
samples, as the reference is itself a sample), the statistic of each pair. With M draws, the
threshold is the (r+1)-th largest draw for r + 1 = floor(level * (M + 1)): by exchangeability
a window from the reference's own population exceeds it with probability at most
(r + 1) / (M + 1) <= level, however small M is; more draws only make the threshold less noisy.
The level is the family-wise alpha divided by the number of columns tested (Bonferroni).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

STATISTICS = ("psi", "ks")
# Draws strictly beyond a threshold, plus one: the quantile is the EXCEEDANCES-th largest draw.
EXCEEDANCES = 16
MAX_DRAWS = 60_000
# Draws are simulated a chunk at a time (about a millisecond each), which keeps their memory
# small; the simulating thread hands the GIL back between chunks, so the event loop never
# waits on a whole simulation.
_CHUNK = 256
# Window sizes up to here are simulated exactly. Above, thresholds are simulated at sizes of a
# geometric grid 25% apart and interpolated between the two around the window's size: linearly
# in 1/n for PSI and in 1/sqrt(n) for KS, the scales at which their null quantiles shrink.
EXACT_UP_TO = 200
GRID_STEP = 1.25


def psi(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """PSI of histograms (counts in the last axis; leading axes broadcast)."""
    p = _smoothed(reference)
    q = _smoothed(current)
    found: np.ndarray = np.sum((q - p) * np.log(q / p), axis=-1)
    return found


def ks(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The largest gap between the cumulative histograms."""
    p = np.cumsum(reference, axis=-1) / np.sum(reference, axis=-1, keepdims=True)
    q = np.cumsum(current, axis=-1) / np.sum(current, axis=-1, keepdims=True)
    found: np.ndarray = np.max(np.abs(q - p), axis=-1)
    return found


def _smoothed(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.shape[-1]
    smoothed: np.ndarray = (counts + 0.5) / (np.sum(counts, axis=-1, keepdims=True) + 0.5 * k)
    return smoothed


def statistics(reference: np.ndarray, current: np.ndarray) -> dict[str, float]:
    return {"psi": float(psi(reference, current)), "ks": float(ks(reference, current))}


def simulated_sizes(n: int) -> tuple[int, int]:
    """The simulated window sizes around `n` (the same twice when `n` is one)."""
    if n <= EXACT_UP_TO:
        return n, n
    steps = math.floor(math.log(n / EXACT_UP_TO) / math.log(GRID_STEP) + 1e-9)
    below = math.floor(EXACT_UP_TO * GRID_STEP**steps)
    above = math.floor(EXACT_UP_TO * GRID_STEP ** (steps + 1))
    return (n, n) if below == n else (below, above)


def _interpolated(
    n: int, below: tuple[int, float], above: tuple[int, float], power: float
) -> float:
    (n0, t0), (n1, t1) = below, above
    if n0 == n1:
        return t0
    x, x0, x1 = n**-power, n0**-power, n1**-power
    return float(t0 + (t1 - t0) * (x - x0) / (x1 - x0))


def draws_for(level: float) -> int:
    """Simulated draws for a threshold at `level`: enough for EXCEEDANCES draws beyond it."""
    return min(MAX_DRAWS, math.ceil(EXCEEDANCES / level))


def null_thresholds(
    reference: np.ndarray, n: int, level: float, rng: np.random.Generator
) -> dict[str, float]:
    """Each statistic's threshold for a window of `n` rows against `reference` (counts)."""
    draws = draws_for(level)
    beyond = math.floor(level * (draws + 1)) - 1
    if beyond < 0:
        raise ValueError(f"{draws} draws cannot resolve a level of {level:g}")
    size = int(reference.sum())
    proportions = reference / size
    found: dict[str, list[np.ndarray]] = {s: [] for s in STATISTICS}
    for start in range(0, draws, _CHUNK):
        m = min(_CHUNK, draws - start)
        ref = rng.multinomial(size, proportions, size=m)
        cur = rng.multinomial(n, proportions, size=m)
        found["psi"].append(psi(ref, cur))
        found["ks"].append(ks(ref, cur))
        time.sleep(0)
    return {
        s: float(np.partition(np.concatenate(v), draws - 1 - beyond)[draws - 1 - beyond])
        for s, v in found.items()
    }


# The power of n at which each statistic's null quantiles shrink.
_SCALE = {"psi": 1.0, "ks": 0.5}


@dataclass
class Thresholds:
    """Thresholds for one profile's columns, simulated once per (window size, level) and per
    distinct reference histogram: quantile bins give most numeric columns the same one."""

    references: list[np.ndarray]
    seed: int
    _cache: dict[tuple[int, float], list[dict[str, float]]] = field(default_factory=dict)

    def at(self, n: int, level: float) -> list[dict[str, float]]:
        """Per column, each statistic's threshold for a window of `n` rows."""
        below, above = simulated_sizes(n)
        low, high = self._simulated(below, level), self._simulated(above, level)
        return [
            {s: _interpolated(n, (below, lo[s]), (above, hi[s]), _SCALE[s]) for s in STATISTICS}
            for lo, hi in zip(low, high, strict=True)
        ]

    def _simulated(self, n: int, level: float) -> list[dict[str, float]]:
        found = self._cache.get((n, level))
        if found is None:
            rng = np.random.default_rng([self.seed, n])
            distinct: dict[bytes, dict[str, float]] = {}
            for ref in self.references:
                if ref.tobytes() not in distinct:
                    distinct[ref.tobytes()] = null_thresholds(ref, n, level, rng)
            found = [distinct[ref.tobytes()] for ref in self.references]
            self._cache[(n, level)] = found
        return found
