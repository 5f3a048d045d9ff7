"""Realised model quality from label feedback: the `quality` section of config.yaml, the counts
each joined label adds, and the metric read off summed counts.

    quality:
      metric: auc          # accuracy | auc (binary classifiers) | mae (regressors)
      output: probability  # the output the labels are for; default: the first output
      threshold: 0.5       # accuracy on a one-wide score: predicted class = score >= threshold
      window_s: 3600       # the quality gauges' window, over the time labels arrive

The counts are additive (labels, a sum, and for AUC a histogram of scores per class), so every
process's and replica's counts add up to the fleet's, as the rollout windows' do. AUC is
computed from AUC_BINS equal score bins over [0, 1] (scores outside are clipped): pairs that
share a bin count as half right, which moves AUC by at most the share of such pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Metric = Literal["accuracy", "auc", "mae"]
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "auc": True, "mae": False}
AUC_BINS = 50


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Metric
    output: str | None = None
    threshold: float = 0.5
    window_s: float = Field(default=3600.0, ge=1.0, le=7 * 86_400.0)


def one_wide(metric: str) -> bool:
    """Whether the metric needs one value per row (a score or a regression target)."""
    return metric != "accuracy"


def check_labels(config: QualityConfig, scores: np.ndarray, labels: np.ndarray) -> str | None:
    """What is wrong with `labels` for these recorded `scores` (rows x width), if anything."""
    if len(labels) != len(scores):
        return f"{len(labels)} label(s) for a prediction of {len(scores)} row(s)"
    if not np.isfinite(labels).all():
        return "labels must be finite numbers"
    if _classes_are_scores(config, scores) and not np.isin(labels, (0.0, 1.0)).all():
        return f"{config.metric} of a score output takes labels 0 or 1"
    return None


def label_counts(config: QualityConfig, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """What these labels add to the counts: n (labels), s (correct answers, or the sum of
    absolute errors), p<i> and q<i> (positives and negatives whose score fell in bin i)."""
    counts: dict[str, float] = {"n": float(len(labels))}
    if config.metric == "mae":
        counts["s"] = float(np.abs(scores[:, 0].astype(np.float64) - labels).sum())
    elif config.metric == "accuracy":
        counts["s"] = float((_predicted_class(config, scores) == labels).sum())
    else:
        bins = np.clip((scores[:, 0] * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)
        for name, rows in (("p", labels == 1.0), ("q", labels == 0.0)):
            for i, n in zip(*np.unique(bins[rows], return_counts=True), strict=True):
                counts[f"{name}{i}"] = float(n)
    return counts


def _classes_are_scores(config: QualityConfig, scores: np.ndarray) -> bool:
    return config.metric == "auc" or (
        config.metric == "accuracy" and scores.shape[1] == 1 and scores.dtype.kind == "f"
    )


def _predicted_class(config: QualityConfig, scores: np.ndarray) -> np.ndarray:
    if scores.shape[1] > 1:
        classes: np.ndarray = np.argmax(scores, axis=1).astype(np.float64)
        return classes
    if scores.dtype.kind == "f":
        return (scores[:, 0] >= config.threshold).astype(np.float64)
    return scores[:, 0].astype(np.float64)  # class ids


@dataclass
class QualityCounts:
    """Summed counts of one version (or route) over a window."""

    labels: int = 0
    total: float = 0.0
    positives: list[float] = field(default_factory=lambda: [0.0] * AUC_BINS)
    negatives: list[float] = field(default_factory=lambda: [0.0] * AUC_BINS)

    def add(self, name: str, value: float) -> None:
        """Add one count named as `label_counts` names them."""
        if name == "n":
            self.labels += int(value)
        elif name == "s":
            self.total += value
        elif name[:1] in ("p", "q") and name[1:].isdigit() and int(name[1:]) < AUC_BINS:
            (self.positives if name[0] == "p" else self.negatives)[int(name[1:])] += value

    def value(self, metric: str) -> float | None:
        """The metric over these counts; None without the labels to say (AUC needs both
        classes)."""
        if not self.labels:
            return None
        if metric != "auc":
            return self.total / self.labels
        positives, negatives = sum(self.positives), sum(self.negatives)
        if not positives or not negatives:
            return None
        area, below = 0.0, 0.0
        for p, q in zip(self.positives, self.negatives, strict=True):
            area += p * (below + 0.5 * q)
            below += q
        return area / (positives * negatives)


def worse_by(metric: str, candidate: float, baseline: float) -> float:
    """How much worse `candidate` is than `baseline` (negative: better)."""
    return baseline - candidate if HIGHER_IS_BETTER[metric] else candidate - baseline
