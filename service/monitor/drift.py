"""One monitored version: its rows counted into sub-windows, and its windows judged.

Counts are kept per sub-window of wall-clock time, numbered `floor(time / sub_window_s)`, so
every process and replica numbers them alike and their counts add up (service.monitor.counts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from service.monitor.bins import Binner
from service.monitor.config import MonitoringConfig
from service.monitor.profile import Column, Profile
from service.monitor.stats import Thresholds, statistics

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ColumnJudgement:
    column: Column
    score: float  # the deciding statistic
    threshold: float
    psi: float
    ks: float

    @property
    def alarm(self) -> bool:
        return self.score > self.threshold

    @property
    def ratio(self) -> float:
        return self.score / self.threshold if self.threshold > 0 else float("inf")


@dataclass(frozen=True, slots=True)
class Judgement:
    """One judged window."""

    rows: int
    # Wall-clock end of the window (seconds since the epoch).
    until: float
    level: float  # per column, after the correction for the number of columns
    columns: list[ColumnJudgement]
    counts: list[np.ndarray]

    def ranked(self) -> list[ColumnJudgement]:
        """Columns, the most drifting first (score over threshold)."""
        return sorted(self.columns, key=lambda c: c.ratio, reverse=True)


class VersionDrift:
    """A version's counts of the sub-windows not yet handed on, and its last judgement."""

    def __init__(
        self, model: str, version: str, profile: Profile, config: MonitoringConfig
    ) -> None:
        self.model = model
        self.version = version
        self.profile = profile
        self.config = config
        self.binner = Binner(profile.columns)
        self.references = [c.counts for c in profile.columns]
        self.thresholds = Thresholds(self.references, seed=int(profile.hash[:8], 16))
        self._open: dict[int, np.ndarray] = {}
        self.judgement: Judgement | None = None
        self.judged_through: int | None = None  # the last sub-window of the last judged window

    @property
    def key(self) -> str:
        """Names this version's counts wherever they are merged: a new profile starts afresh."""
        return f"{self.model}/{self.version}/{self.profile.hash}"

    def sub_window(self, now: float) -> int:
        return int(now // self.config.sub_window_s)

    def count(self, tensors: Mapping[str, np.ndarray], now: float | None = None) -> None:
        """Add a batch's rows (its inputs and outputs by name) to the current sub-window."""
        counts = self.binner.counts(self.binner.matrix(tensors))
        epoch = self.sub_window(time.time() if now is None else now)
        found = self._open.get(epoch)
        if found is None:
            self._open[epoch] = counts
        else:
            found += counts

    def count_soon(self, inputs: Tensors, outputs: Tensors) -> None:
        """Count a scored batch once the event loop has handed out its answers: a timer due now
        runs after the callbacks already queued, which resume the batch's requests."""
        tensors = {**inputs, **outputs}
        asyncio.get_running_loop().call_later(0, self.count, tensors)

    def closed(self, now: float) -> dict[int, np.ndarray]:
        """Take the counts of the sub-windows that have ended by `now`."""
        current = self.sub_window(now)
        done = [epoch for epoch in self._open if epoch < current]
        return {epoch: self._open.pop(epoch) for epoch in done}

    def window(self, through: int) -> list[int]:
        """The sub-windows of the window that ends with sub-window `through`."""
        return list(range(through - self.config.sub_windows + 1, through + 1))

    def judge(self, counts: np.ndarray, through: int) -> Judgement | None:
        """Judge a window's merged counts; None (the last judgement stands) when it holds
        fewer than min_rows rows. May simulate thresholds for a new size: run it off the
        event loop."""
        per_column = self.binner.split(counts)
        rows = int(per_column[0].sum()) if per_column else 0
        self.judged_through = through
        if rows < self.config.min_rows:
            return None
        level = self.config.alpha / len(per_column)
        thresholds = self.thresholds.at(rows, level)
        statistic = self.config.statistic
        columns = []
        for c, reference, current, limit in zip(
            self.profile.columns, self.references, per_column, thresholds, strict=True
        ):
            found = statistics(reference, current)
            score = found[statistic]
            columns.append(
                ColumnJudgement(c.column, score, limit[statistic], found["psi"], found["ks"])
            )
        until = (through + 1) * self.config.sub_window_s
        self.judgement = Judgement(rows, until, level, columns, per_column)
        return self.judgement

    def describe(self) -> dict[str, object]:
        """The last judgement for the admin route, the most drifting columns first."""
        found = self.judgement
        doc: dict[str, object] = {
            "version": self.version,
            "monitored": True,
            "reference": {"hash": self.profile.hash, "rows": self.profile.rows},
            "statistic": self.config.statistic,
            "alpha": self.config.alpha,
            "window_s": self.config.window_s,
        }
        if found is None:
            return doc | {"window": None, "features": []}
        return doc | {
            "window": {"rows": found.rows, "until": found.until, "level": found.level},
            "features": [
                {
                    "feature": c.column.name,
                    "kind": c.column.kind,
                    "score": c.score,
                    "threshold": c.threshold,
                    "alarm": c.alarm,
                    "psi": c.psi,
                    "ks": c.ks,
                }
                for c in found.ranked()
            ],
        }
