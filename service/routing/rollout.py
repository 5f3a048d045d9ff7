"""Rollout statistics: windows of every process's traffic figures per route, and the
thresholds a canary is rolled back by.

Each process tallies its requests into buckets of a sliding window and ships them to the
policy store; any process sums the window's buckets into per-route figures (`slot_stats`)
and judges the canary against its `rollback` thresholds (`breach`).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.monitor.quality import QualityConfig, QualityCounts, worse_by
from service.routing.config import SHADOW, ModelPolicy, RollbackConfig

# A window is this many buckets: counters older than the window fall out a bucket at a time.
WINDOW_BUCKETS = 10
# Latency buckets of the rollout windows, 25% apart from 50 µs: p99 within 25% is plenty for a
# ratio to a threshold, and 60 counters a route stay cheap to ship between processes.
_LATENCY_BASE_S = 50e-6
_LATENCY_STEP = 1.25
_LATENCY_BOUNDS = tuple(_LATENCY_BASE_S * _LATENCY_STEP**i for i in range(60))


def latency_bucket(seconds: float) -> int:
    return min(bisect.bisect_left(_LATENCY_BOUNDS, seconds), len(_LATENCY_BOUNDS) - 1)


def _bucket(window_s: float, now: float) -> tuple[int, int]:
    """(bucket width in ms, index of the bucket holding `now`) for a window of `window_s`."""
    width_ms = max(1, round(window_s * 1000 / WINDOW_BUCKETS))
    return width_ms, int(now * 1000) // width_ms


def window_keys(model: str, window_s: float, now: float) -> list[str]:
    """The counter keys of the window ending now, oldest first (the last one still filling)."""
    width_ms, current = _bucket(window_s, now)
    return [f"{model}|{width_ms}|{i}" for i in range(current - WINDOW_BUCKETS + 1, current + 1)]


class Tally:
    """This process's counts since they were last shipped to the policy store.

    {window key: {field: count}}; fields are `<slot>:<figure>`, figures n (requests), err,
    flag, l<i> (latency bucket i), cmp and dis (rows compared and disagreeing), diff (the sum
    of their absolute differences), and q<count> for the counts of joined labels
    (service.monitor.quality).
    """

    def __init__(self) -> None:
        self._pending: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        # (model, window) -> key of the current bucket, with the time it stops being current.
        self._current: dict[tuple[str, float], tuple[str, float]] = {}

    def _fields(self, model: str, window_s: float, now: float) -> defaultdict[str, float]:
        current = self._current.get((model, window_s))
        if current is None or now >= current[1]:
            width_ms, index = _bucket(window_s, now)
            current = (f"{model}|{width_ms}|{index}", (index + 1) * width_ms / 1000)
            self._current[(model, window_s)] = current
        return self._pending[current[0]]

    def request(
        self,
        model: str,
        window_s: float,
        slot: str,
        *,
        error: bool,
        flagged: bool,
        seconds: float,
        now: float,
    ) -> None:
        fields = self._fields(model, window_s, now)
        fields[f"{slot}:n"] += 1
        if error:
            fields[f"{slot}:err"] += 1
        if flagged:
            fields[f"{slot}:flag"] += 1
        if not error:
            fields[f"{slot}:l{latency_bucket(seconds)}"] += 1

    def comparison(
        self,
        model: str,
        window_s: float,
        slot: str,
        *,
        rows: int,
        disagreed: int,
        diff: float,
        now: float,
    ) -> None:
        fields = self._fields(model, window_s, now)
        fields[f"{slot}:cmp"] += rows
        fields[f"{slot}:dis"] += disagreed
        fields[f"{slot}:diff"] += diff

    def labels(
        self, model: str, window_s: float, slot: str, counts: Mapping[str, float], now: float
    ) -> None:
        fields = self._fields(model, window_s, now)
        for name, value in counts.items():
            fields[f"{slot}:q{name}"] += value

    def take(self) -> dict[str, dict[str, float]]:
        pending = {key: dict(fields) for key, fields in self._pending.items() if fields}
        self._pending.clear()
        return pending


@dataclass
class SlotStats:
    """One route's figures over a window, every process's traffic summed."""

    requests: int = 0
    errors: int = 0
    flagged: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(_LATENCY_BOUNDS))
    compared: int = 0
    disagreed: int = 0
    diff_sum: float = 0.0
    quality: QualityCounts = field(default_factory=QualityCounts)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.requests if self.requests else 0.0

    @property
    def disagreement(self) -> float:
        return self.disagreed / self.compared if self.compared else 0.0

    def p99_s(self) -> float | None:
        """The upper bound of the latency bucket holding the 99th percentile (None: no data)."""
        total = sum(self.latency)
        if not total:
            return None
        rank = math.ceil(0.99 * total)
        seen = 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= rank:
                return _LATENCY_BOUNDS[i]
        return _LATENCY_BOUNDS[-1]

    def summary(self) -> dict[str, Any]:
        p99 = self.p99_s()
        figures: dict[str, Any] = {
            "requests": self.requests,
            "error_rate": round(self.error_rate, 6),
            "flag_rate": round(self.flag_rate, 6),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }
        if self.compared:
            figures |= {
                "rows_compared": self.compared,
                "agreement_rate": round(1.0 - self.disagreement, 6),
                "mean_abs_diff": self.diff_sum / self.compared,
            }
        return figures


def slot_stats(counts: Mapping[str, float]) -> dict[str, SlotStats]:
    """Summed window counters, by slot."""
    slots: dict[str, SlotStats] = {}
    for name, value in counts.items():
        slot, _, figure = name.rpartition(":")
        stats = slots.get(slot)
        if stats is None:
            stats = slots[slot] = SlotStats()
        if figure == "n":
            stats.requests += int(value)
        elif figure == "err":
            stats.errors += int(value)
        elif figure == "flag":
            stats.flagged += int(value)
        elif figure == "cmp":
            stats.compared += int(value)
        elif figure == "dis":
            stats.disagreed += int(value)
        elif figure == "diff":
            stats.diff_sum += value
        elif figure.startswith("q"):
            stats.quality.add(figure[1:], value)
        elif figure.startswith("l") and figure[1:].isdigit():
            i = int(figure[1:])
            if i < len(stats.latency):
                stats.latency[i] += int(value)
    return slots


@dataclass(frozen=True)
class Breach:
    reason: str
    detail: str


def breach(
    policy: ModelPolicy, window: Mapping[str, SlotStats], quality: QualityConfig | None = None
) -> Breach | None:
    """The first rollback threshold the canary crosses in `window`, if any; its realised
    quality is judged when the model has a `quality` section."""
    routing = policy.routing
    limits, canary = routing.rollback, routing.canary
    if limits is None or canary is None or canary.weight == 0:
        return None
    slot = policy.canary_slot()
    stats = window.get(slot) if slot is not None else None
    if stats is not None and stats.requests >= limits.min_requests:
        seen = f"over {stats.requests} canary requests"
        if limits.max_error_rate is not None and stats.error_rate > limits.max_error_rate:
            return Breach(
                "error_rate",
                f"error rate {stats.error_rate:.4f} > {limits.max_error_rate:g} {seen}",
            )
        if limits.max_flag_rate is not None and stats.flag_rate > limits.max_flag_rate:
            return Breach(
                "flag_rate", f"flag rate {stats.flag_rate:.4f} > {limits.max_flag_rate:g} {seen}"
            )
        stable = window.get(policy.primary_slot())
        if limits.max_p99_ratio is not None and stable is not None:
            ratio = _p99_ratio(stats, stable, limits.min_requests)
            if ratio is not None and ratio > limits.max_p99_ratio:
                return Breach(
                    "p99_ratio",
                    f"p99 {ratio:.2f}x the stable version's > {limits.max_p99_ratio:g} {seen}",
                )
    if limits.max_quality_drop is not None and quality is not None and slot is not None:
        found = _quality_breach(
            quality.metric, window.get(slot), window.get(policy.primary_slot()), limits
        )
        if found is not None:
            return found
    shadow = window.get(f"{SHADOW}/{canary.version}")
    if (
        limits.max_disagreement is not None
        and shadow is not None
        and shadow.requests >= limits.min_requests
        and shadow.disagreement > limits.max_disagreement
    ):
        return Breach(
            "disagreement",
            f"shadow disagreement {shadow.disagreement:.4f} > {limits.max_disagreement:g} "
            f"over {shadow.compared} rows",
        )
    return None


def _quality_breach(
    metric: str, canary: SlotStats | None, stable: SlotStats | None, limits: RollbackConfig
) -> Breach | None:
    """The canary's realised quality against the stable version's, both over labels joined
    in the window, each with at least min_labels of them."""
    assert limits.max_quality_drop is not None
    if canary is None or stable is None:
        return None
    ours, theirs = canary.quality, stable.quality
    if min(ours.labels, theirs.labels) < limits.min_labels:
        return None
    mine, base = ours.value(metric), theirs.value(metric)
    if mine is None or base is None:
        return None
    drop = worse_by(metric, mine, base)
    if drop <= limits.max_quality_drop:
        return None
    return Breach(
        "quality",
        f"{metric} {mine:.4f} against the stable version's {base:.4f}: worse by {drop:.4f} > "
        f"{limits.max_quality_drop:g} over {ours.labels} canary labels",
    )


def _p99_ratio(canary: SlotStats, stable: SlotStats, min_requests: int) -> float | None:
    if stable.requests < min_requests:
        return None
    ours, theirs = canary.p99_s(), stable.p99_s()
    if ours is None or theirs is None:
        return None
    return ours / theirs
