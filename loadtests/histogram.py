"""Latency histogram: HDR at microsecond resolution, mergeable across processes."""

from __future__ import annotations

from array import array

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

# Recording straight into HdrHistogram costs ~2.5 us of pure Python per value, a visible
# share of the generator's own ceiling; appending to a typed array and folding unique values
# in bulk costs a tenth of that.
_FLUSH_AT = 65_536


class LatencyHistogram:
    """Microsecond latencies; values outside [1 us, 60 s] are clamped, never dropped."""

    def __init__(self, hdr: HdrHistogram | None = None) -> None:
        self._hdr = hdr or HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        self._pending = array("q")

    def record_us(self, value_us: int) -> None:
        self._pending.append(value_us)
        if len(self._pending) >= _FLUSH_AT:
            self._flush()

    def record_count_us(self, value_us: int, count: int) -> None:
        """`count` values of `value_us` at once (a distribution another tool measured)."""
        self._hdr.record_value(min(max(value_us, LOWEST_US), HIGHEST_US), count)

    def _flush(self) -> None:
        if not self._pending:
            return
        values = np.clip(np.frombuffer(self._pending, dtype=np.int64), LOWEST_US, HIGHEST_US)
        uniques, counts = np.unique(values, return_counts=True)
        for value, count in zip(uniques.tolist(), counts.tolist(), strict=True):
            self._hdr.record_value(value, count)
        self._pending = array("q")

    @property
    def count(self) -> int:
        self._flush()
        return int(self._hdr.get_total_count())

    def percentile_us(self, percentile: float) -> int:
        self._flush()
        return int(self._hdr.get_value_at_percentile(percentile))

    @property
    def max_us(self) -> int:
        self._flush()
        return int(self._hdr.get_max_value()) if self.count else 0

    @property
    def mean_us(self) -> float:
        self._flush()
        return float(self._hdr.get_mean_value()) if self.count else 0.0

    def summary_us(self) -> dict[str, float]:
        """p50/p90/p99/p99.9/max/mean, the figures every report shows."""
        out: dict[str, float] = {
            _percentile_key(p): float(self.percentile_us(p)) for p in PERCENTILES
        }
        out["max"] = float(self.max_us)
        out["mean"] = round(self.mean_us, 1)
        return out

    def merge(self, other: LatencyHistogram) -> None:
        self._flush()
        other._flush()
        self._hdr.add(other._hdr)

    def encode(self) -> str:
        """The standard compressed, base64 HDR encoding (readable by any HdrHistogram port)."""
        self._flush()
        return str(self._hdr.encode().decode("ascii"))

    @classmethod
    def decode(cls, encoded: str) -> LatencyHistogram:
        hdr = HdrHistogram.decode(encoded.encode("ascii"))
        return cls(hdr)


def _percentile_key(percentile: float) -> str:
    return "p" + f"{percentile:g}".replace(".", "")
