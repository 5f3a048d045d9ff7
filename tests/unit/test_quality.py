"""Realised quality: the counts labels add, the metrics read off them, the quality section's
validation, and the rollback it drives."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from service.monitor.quality import AUC_BINS, QualityConfig, QualityCounts, label_counts
from service.repository.config import ConfigError, read_config
from service.routing.config import ModelPolicy, RoutingConfig, initial_policy
from service.routing.rollout import SlotStats, Tally, breach, slot_stats
from tests.conftest import MODELS_DIR

AUC = QualityConfig(metric="auc")
ACCURACY = QualityConfig(metric="accuracy", threshold=0.3)
MAE = QualityConfig(metric="mae")


def counted(config: QualityConfig, scores: np.ndarray, labels: np.ndarray) -> QualityCounts:
    counts = QualityCounts()
    for name, value in label_counts(config, scores, labels).items():
        counts.add(name, value)
    return counts


def test_auc_from_binned_counts_is_the_pairwise_auc_when_no_pair_shares_a_bin() -> None:
    rng = np.random.default_rng(1)
    # One score per bin: no ties, so binning loses nothing.
    scores = (rng.permutation(AUC_BINS) + 0.5) / AUC_BINS
    labels = (rng.random(AUC_BINS) < scores).astype(np.float64)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    pairwise = (positives[:, None] > negatives[None, :]).mean()

    auc = counted(AUC, scores.reshape(-1, 1), labels).value("auc")

    assert auc == pytest.approx(pairwise, abs=1e-12)


def test_counts_of_two_halves_add_up_to_the_counts_of_the_whole() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random((200, 1)).astype(np.float32)
    labels = (rng.random(200) < 0.4).astype(np.float64)
    whole = counted(AUC, scores, labels)
    halves = QualityCounts()
    for part in (slice(0, 77), slice(77, 200)):
        for name, value in label_counts(AUC, scores[part], labels[part]).items():
            halves.add(name, value)
    assert halves == whole


def test_accuracy_thresholds_a_score_and_takes_the_argmax_of_class_scores() -> None:
    score = np.array([[0.2], [0.35], [0.9]], dtype=np.float32)
    assert counted(ACCURACY, score, np.array([0.0, 1.0, 0.0])).value("accuracy") == 2 / 3
    classes = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    assert counted(ACCURACY, classes, np.array([1.0, 2.0])).value("accuracy") == 0.5
    ids = np.array([[3], [1]], dtype=np.int64)
    assert counted(ACCURACY, ids, np.array([3.0, 2.0])).value("accuracy") == 0.5


def test_mae_is_the_mean_absolute_error() -> None:
    scores = np.array([[1.0], [2.5], [-1.0]], dtype=np.float32)
    assert counted(MAE, scores, np.array([2.0, 2.0, 1.0])).value("mae") == pytest.approx(3.5 / 3)


def test_auc_needs_both_classes() -> None:
    assert counted(AUC, np.array([[0.3], [0.6]]), np.array([1.0, 1.0])).value("auc") is None


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    shutil.copytree(MODELS_DIR / "fraud_mlp", tmp_path / "fraud_mlp")
    return tmp_path / "fraud_mlp" / "config.yaml"


WIDE = {"name": "p", "datatype": "FP32", "dims": [3]}


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"quality": {"metric": "f1"}}, "quality.metric: input should be"),
        ({"quality": {"metric": "auc", "output": "score"}}, "quality.output: no output 'score'"),
        (
            {
                "quality": {"metric": "mae"},
                "outputs": [{"name": "p", "datatype": "FP32", "dims": [3]}],
            },
            "quality.metric mae needs one value per row: output 'p' has dims [3]",
        ),
        (
            {"routing": {"rollback": {"max_quality_drop": 0.1}}},
            "routing.rollback.max_quality_drop needs a quality section",
        ),
        ({"quality": {"metric": "auc", "window_s": 0}}, "quality.window_s: input should be"),
    ],
)
def test_quality_section_errors_name_the_file_and_the_field(
    config_path: Path, sections: dict[str, Any], expected: str
) -> None:
    config = yaml.safe_load(config_path.read_text()) | sections
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        read_config(config_path)
    assert f"{config_path}: {expected}" in str(caught.value)


# ---- rollback on quality -------------------------------------------------------------------


def judged(max_quality_drop: float = 0.1) -> ModelPolicy:
    rollback = {"window_s": 600, "min_labels": 10, "max_quality_drop": max_quality_drop}
    routing = RoutingConfig.model_validate(
        {"canary": {"version": "1", "weight": 0.2}, "rollback": rollback}
    )
    return initial_policy(routing, "2", ["1", "2"])


def labelled(
    p: ModelPolicy, canary_right: int, stable_right: int, n: int = 10
) -> dict[str, SlotStats]:
    """`n` accuracy labels of each route, of which so many were right, through a Tally."""
    tally = Tally()
    scores = np.ones((n, 1), dtype=np.float32)
    canary = p.canary_slot()
    assert canary is not None
    for slot, right in ((canary, canary_right), (p.primary_slot(), stable_right)):
        labels = (np.arange(n) < right).astype(np.float64)
        counts = label_counts(QualityConfig(metric="accuracy"), scores, labels)
        tally.labels("fraud", 600.0, slot, counts, now=5.0)
    merged: dict[str, float] = {}
    for fields in tally.take().values():
        for name, value in fields.items():
            merged[name] = merged.get(name, 0.0) + value
    return slot_stats(merged)


def test_a_canary_worse_than_stable_by_more_than_the_margin_is_rolled_back() -> None:
    p, quality = judged(0.1), QualityConfig(metric="accuracy")
    assert breach(p, labelled(p, canary_right=8, stable_right=9), quality) is None
    found = breach(p, labelled(p, canary_right=7, stable_right=9), quality)
    assert found is not None and found.reason == "quality"
    assert "accuracy 0.7000 against the stable version's 0.9000" in found.detail


def test_quality_is_not_judged_below_min_labels_or_without_a_quality_section() -> None:
    p = judged(0.1)
    quality = QualityConfig(metric="accuracy")
    assert breach(p, labelled(p, canary_right=0, stable_right=9, n=9), quality) is None
    assert breach(p, labelled(p, canary_right=0, stable_right=10), None) is None


def test_for_mae_a_higher_error_is_the_worse() -> None:
    p = judged(0.5)
    window = {p.primary_slot(): SlotStats(), p.canary_slot() or "": SlotStats()}
    for slot, error in ((p.primary_slot(), 1.0), (p.canary_slot() or "", 1.6)):
        window[slot].quality.add("n", 10)
        window[slot].quality.add("s", 10 * error)
    found = breach(p, window, MAE)
    assert found is not None and found.reason == "quality"
    window[p.canary_slot() or ""].quality.add("s", -2.0)  # mean error 1.4: within the margin
    assert breach(p, window, MAE) is None
