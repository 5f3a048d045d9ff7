"""The CPU budget per request of the real app, built in-process over the memory store: every
stage named, each holding time where the request does work, and what no stage holds small."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.budget import REST, STAGES, measure_budget
from loadtests.cli import main
from tests.conftest import MODELS_DIR


@pytest.fixture(scope="module")
def budget() -> dict[str, Any]:
    return measure_budget(MODELS_DIR, MODELS_DIR / "feature_views.yaml", "memory://", 500, 400)


def test_every_stage_of_both_workloads_is_named_and_they_add_up_to_the_total(
    budget: dict[str, Any],
) -> None:
    assert [w["workload"] for w in budget["workloads"]] == ["entity predict", "V2 infer"]
    for workload in budget["workloads"]:
        stages = workload["stages_us"]
        assert list(stages) == list(STAGES)
        assert sum(stages.values()) == pytest.approx(workload["total_us"], rel=0.01)
        # Time outside every stage (the loop between calls, background tasks) stays small:
        # the stages' clocks cover the request's work.
        assert abs(stages[REST]) < 0.25 * workload["total_us"]
        for stage in ("http front", "route", "validate", "score", "guard", "record"):
            assert stages[stage] > 0, stage
        assert workload["unclocked_total_us"] > 0


def test_features_and_drift_counting_are_charged_to_entity_predict(
    budget: dict[str, Any],
) -> None:
    predict, infer = (w["stages_us"] for w in budget["workloads"])
    # Entity predict reads the store and assembles the rows; V2 infer brings them in the body.
    assert predict["features"] > 10 * max(infer["features"], 0.1)
    assert predict["drift counting"] > 0


def test_the_budget_command_prints_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "budget", "--requests", "100", "--entities", "100"]
    argv += ["--models", str(MODELS_DIR), "--views", str(MODELS_DIR / "feature_views.yaml")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for stage in (*STAGES, "total", "unclocked"):
        assert f"\n{stage} " in f"\n{out}", stage
