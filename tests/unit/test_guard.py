"""The output guard: config validation, every policy, metrics, and fraud_mlp's real scores."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from service.backends.onnx import OnnxBackend, OnnxOptions
from service.guard import Guard
from service.repository.config import ConfigError, ModelConfig, read_config
from service.repository.loader import check_repository
from tests.conftest import MODELS_DIR

SCORE: dict[str, Any] = {
    "name": "score",
    "datatype": "FP32",
    "dims": [1],
    "valid_range": {"min": 0, "max": 1},
}


def config(
    policy: str = "flag",
    *,
    outputs: list[dict[str, Any]] | None = None,
    fallback: dict[str, Any] | None = None,
    max_batch_size: int = 64,
    window: int = 1000,
) -> ModelConfig:
    guard: dict[str, Any] = {"policy": policy, "flag_rate_window": window}
    if fallback is not None:
        guard["fallback"] = fallback
    return ModelConfig.model_validate(
        {
            "name": "m",
            "backend": "onnxruntime",
            "max_batch_size": max_batch_size,
            "inputs": [{"name": "x", "datatype": "FP32", "dims": [4]}],
            "outputs": outputs or [SCORE],
            "guard": guard,
        }
    )


def scores(*values: float) -> dict[str, np.ndarray]:
    return {"score": np.array(values, dtype=np.float32).reshape(-1, 1)}


def events(model: str, version: str, action: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "mlgate_guard_events_total",
        {"model": model, "version": version, "action": action, "reason": reason},
    )
    return value or 0.0


def flag_rate(model: str, version: str) -> float | None:
    return REGISTRY.get_sample_value("mlgate_guard_flag_rate", {"model": model, "version": version})


# ---- policies -----------------------------------------------------------------------


def test_all_ok_outputs_pass_untouched_without_flags() -> None:
    outputs = scores(0.0, 0.5, 1.0)
    verdict = Guard(config(), "ok-model", "1").check(outputs)
    assert verdict.outputs is outputs
    assert verdict.flags == [[], [], []]
    assert (verdict.action, verdict.rejected, verdict.needs_fallback_rows) == (None, False, None)
    assert verdict.reasons == []


def test_flag_serves_the_outputs_and_names_each_broken_row() -> None:
    guard = Guard(config(), "flag-model", "1")
    outputs = scores(0.5, 1.5, np.nan, -0.1, np.inf)
    verdict = guard.check(outputs)
    assert verdict.outputs is outputs
    assert verdict.action == "flagged"
    assert verdict.flags == [
        [],
        ["score:above_max"],
        ["score:not_finite"],
        ["score:below_min"],
        ["score:not_finite"],
    ]
    assert verdict.reasons == ["score:not_finite", "score:below_min", "score:above_max"]
    assert all("," not in flag for flag in verdict.reasons)
    assert events("flag-model", "1", "flagged", "score:not_finite") == 2
    assert events("flag-model", "1", "flagged", "score:above_max") == 1
    assert flag_rate("flag-model", "1") == pytest.approx(4 / 5)


def test_reject_refuses_with_the_reasons_and_rows() -> None:
    guard = Guard(config("reject"), "reject-model", "3")
    verdict = guard.check(scores(2.0, 0.1, *[-1.0] * 7))
    assert verdict.rejected
    assert verdict.action == "rejected"
    assert verdict.rejection == (
        "model 'reject-model' version 3: prediction breaks its output contract: "
        "score:below_min (rows 2, 3, 4, 5, 6 and 2 more), score:above_max (row 0)"
    )
    assert events("reject-model", "3", "rejected", "score:below_min") == 7


def test_clamp_puts_values_at_the_bounds_and_marks_them() -> None:
    outputs = scores(-0.5, 0.25, 7.0)
    verdict = Guard(config("clamp"), "clamp-model", "1").check(outputs)
    assert not verdict.rejected
    assert verdict.action == "clamped"
    np.testing.assert_array_equal(verdict.outputs["score"], scores(0.0, 0.25, 1.0)["score"])
    assert verdict.outputs["score"].dtype == np.float32
    assert verdict.flags == [["score:below_min"], [], ["score:above_max"]]
    np.testing.assert_array_equal(outputs["score"], scores(-0.5, 0.25, 7.0)["score"])
    assert events("clamp-model", "1", "clamped", "score:above_max") == 1


def test_clamp_rejects_what_no_bound_can_fix() -> None:
    verdict = Guard(config("clamp"), "clamp-nan", "1").check(scores(0.5, 2.0, np.nan))
    assert verdict.rejected
    assert verdict.rejection is not None
    assert verdict.rejection.endswith("; clamping cannot fix score:not_finite")
    assert events("clamp-nan", "1", "rejected", "score:above_max") == 1


def test_clamp_keeps_an_integer_output_inside_fractional_bounds() -> None:
    label: dict[str, Any] = {"name": "label", "datatype": "INT64", "dims": [1]}
    label["valid_range"] = {"min": 0.5, "max": 2.5}
    verdict = Guard(config("clamp", outputs=[label]), "m", "1").check(
        {"label": np.array([[-4], [1], [9]], dtype=np.int64)}
    )
    np.testing.assert_array_equal(verdict.outputs["label"], [[1], [1], [2]])
    assert verdict.outputs["label"].dtype == np.int64


def test_allowed_classes_flag_other_values() -> None:
    label = {"name": "label", "datatype": "INT64", "dims": [2], "allowed": [0, 1]}
    verdict = Guard(config(outputs=[label]), "m", "1").check(
        {"label": np.array([[0, 1], [1, 2], [1, 1]], dtype=np.int64)}
    )
    assert verdict.flags == [[], ["label:not_allowed"], []]


def test_fallback_default_replaces_only_the_broken_rows() -> None:
    outputs = [SCORE, {"name": "label", "datatype": "INT64", "dims": [1], "allowed": [0, 1]}]
    guard = Guard(
        config("fallback", outputs=outputs, fallback={"default": {"score": 0.0, "label": 0}}),
        "fallback-default",
        "2",
    )
    verdict = guard.check(
        {
            "score": np.array([[0.9], [np.nan], [0.2]], dtype=np.float32),
            "label": np.array([[1], [1], [5]], dtype=np.int64),
        }
    )
    assert verdict.action == "fallback"
    assert verdict.needs_fallback_rows is None
    np.testing.assert_array_equal(verdict.outputs["score"], scores(0.9, 0.0, 0.0)["score"])
    np.testing.assert_array_equal(verdict.outputs["label"], [[1], [0], [0]])
    assert verdict.flags == [[], ["score:not_finite"], ["label:not_allowed"]]
    assert events("fallback-default", "2", "fallback", "label:not_allowed") == 1


def test_fallback_version_asks_for_the_broken_rows_and_merges_them() -> None:
    guard = Guard(config("fallback", fallback={"version": 1}), "m", "2")
    assert guard.fallback_version == "1"
    inputs = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    verdict = guard.check(scores(0.3, 1.2, 0.4))
    assert verdict.needs_fallback_rows is not None
    assert verdict.needs_fallback_rows.tolist() == [False, True, False]
    again = guard.fallback_inputs(inputs, verdict)
    np.testing.assert_array_equal(again["x"], inputs["x"][1:2])
    merged = guard.merge_fallback(verdict, scores(0.7))
    np.testing.assert_array_equal(merged["score"], scores(0.3, 0.7, 0.4)["score"])


def test_the_fallback_version_itself_rejects_what_it_breaks() -> None:
    verdict = Guard(config("fallback", fallback={"version": "1"}), "m", "1").check(scores(3.0))
    assert verdict.rejected
    assert verdict.rejection is not None
    assert "this is the fallback version" in verdict.rejection


def test_a_wrong_shape_is_rejected_whatever_the_policy() -> None:
    guard = Guard(config("flag"), "shape-model", "1")
    verdict = guard.check({"score": np.zeros((3, 2), dtype=np.float32)})
    assert verdict.rejected
    assert verdict.rejection == (
        "model 'shape-model' version 1: output 'score' has shape [3, 2], expected ['n', 1] "
        "for 3 rows"
    )
    assert verdict.flags == [["score:bad_shape"]] * 3
    assert events("shape-model", "1", "rejected", "score:bad_shape") == 3


def test_an_unbatched_model_is_one_row() -> None:
    out = {"name": "score", "datatype": "FP32", "dims": [2, 2], "valid_range": {"max": 1}}
    guard = Guard(
        config("fallback", outputs=[out], max_batch_size=0, fallback={"version": 1}), "m", "2"
    )
    verdict = guard.check({"score": np.array([[0, 0], [0, 5]], dtype=np.float32)})
    assert verdict.flags == [["score:above_max"]]
    assert guard.fallback_inputs({"x": np.ones(4)}, verdict)["x"].shape == (4,)
    merged = guard.merge_fallback(verdict, {"score": np.ones((2, 2), dtype=np.float32)})
    np.testing.assert_array_equal(merged["score"], np.ones((2, 2)))


def test_flag_rate_is_over_the_last_window_of_predictions() -> None:
    guard = Guard(config(window=4), "rate-model", "1")
    guard.check(scores(5.0, 5.0))
    assert flag_rate("rate-model", "1") == 1.0
    guard.check(scores(0.5, 0.5))
    assert flag_rate("rate-model", "1") == 0.5
    guard.check(scores(0.5))
    assert flag_rate("rate-model", "1") == 0.25
    guard.check(scores(0.5))
    assert flag_rate("rate-model", "1") == 0.0
    assert guard.flag_rate == 0.0


# ---- configuration ------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(MODELS_DIR / "fraud_mlp", tmp_path / "fraud_mlp")
    return tmp_path


def edit(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_the_guard_section_defaults_to_flag() -> None:
    parsed = read_config(MODELS_DIR / "fraud_mlp" / "config.yaml")
    assert (parsed.guard.policy, parsed.guard.fallback, parsed.guard.flag_rate_window) == (
        "flag",
        None,
        1000,
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c.update(guard={"policy": "drop"}),
            "guard.policy: input should be 'flag', 'reject', 'clamp' or 'fallback'",
        ),
        (
            lambda c: c.update(guard={"policy": "fallback"}),
            "guard: policy fallback needs fallback: {version: ...} or {default: ",
        ),
        (
            lambda c: c.update(guard={"policy": "clamp", "fallback": {"version": 1}}),
            "guard: fallback is only used with policy fallback, not clamp",
        ),
        (
            lambda c: c.update(
                guard={"policy": "fallback", "fallback": {"version": 1, "default": {}}}
            ),
            "guard.fallback: give either version or default, not both nor neither",
        ),
        (
            lambda c: c.update(guard={"policy": "fallback", "fallback": {"version": "v1"}}),
            "guard.fallback.version: 'v1' is not a version",
        ),
        (
            lambda c: c.update(guard={"flag_rate_window": 0}),
            "guard.flag_rate_window: input should be greater than or equal to 1",
        ),
        (
            lambda c: c.update(guard={"policy": "fallback", "fallback": {"default": {"p": 0}}}),
            "guard: fallback.default.p: no such output; outputs: probability; "
            "fallback.default: gives no value for output 'probability'",
        ),
        (
            lambda c: c.update(
                guard={"policy": "fallback", "fallback": {"default": {"probability": 2}}}
            ),
            "guard: fallback.default.probability: 2.0 breaks the output's own contract "
            "(above max 1.0)",
        ),
        (lambda c: c.update(guard={"mode": "flag"}), "guard.mode: unknown field"),
        (lambda c: c["outputs"][0].update(allowed=[]), "outputs[0].allowed: list should have"),
        (
            lambda c: c["outputs"][0].update(datatype="BYTES"),
            "outputs[0].valid_range: a BYTES output has no numeric contract",
        ),
        (
            lambda c: c["outputs"][0].update(datatype="INT64", allowed=[0, 0.5]),
            "outputs[0].allowed: a INT64 output only takes whole numbers",
        ),
    ],
)
def test_guard_config_errors_name_the_file_and_the_field(
    repo: Path, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    path = repo / "fraud_mlp" / "config.yaml"
    edit(path, change)
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    assert f"{path}: {expected}" in str(caught.value)


def test_a_fallback_version_without_a_model_is_a_config_error(repo: Path) -> None:
    path = repo / "fraud_mlp" / "config.yaml"
    edit(path, lambda c: c.update(guard={"policy": "fallback", "fallback": {"version": 7}}))
    assert check_repository(repo) == [
        f"{path}: guard.fallback.version: '7' is not a version; available: 1, 2"
    ]


# ---- on fraud_mlp's real scores -----------------------------------------------------


@pytest.fixture(scope="module")
def feature_rows() -> np.ndarray:
    views = load_views(MODELS_DIR / "feature_views.yaml")
    parts = [synthetic_rows(views[name], 64, seed=11)[1] for name in ("txn_stats", "user_profile")]
    return np.concatenate(parts, axis=1)


@pytest.fixture
async def fraud() -> AsyncIterator[dict[str, OnnxBackend]]:
    executor = ThreadPoolExecutor(1)
    backends = {
        v: OnnxBackend(MODELS_DIR / "fraud_mlp" / v / "model.onnx", OnnxOptions(), executor)
        for v in ("1", "2")
    }
    yield backends
    for backend in backends.values():
        await backend.close()
    executor.shutdown()


def fraud_config(guard: dict[str, Any], high: float) -> ModelConfig:
    data = yaml.safe_load((MODELS_DIR / "fraud_mlp" / "config.yaml").read_text())
    data["outputs"][0]["valid_range"]["max"] = high
    data["guard"] = guard
    return ModelConfig.model_validate(data)


async def test_real_scores_above_a_tight_max_fall_back_to_version_1(
    fraud: dict[str, OnnxBackend], feature_rows: np.ndarray
) -> None:
    inputs = {"features": feature_rows}
    v2 = (await fraud["2"].infer(inputs))["probability"]
    high = float(np.quantile(v2, 0.75))
    guard = Guard(
        fraud_config({"policy": "fallback", "fallback": {"version": 1}}, high), "fraud_mlp", "2"
    )
    verdict = guard.check({"probability": v2})
    above = v2[:, 0] > high
    assert above.sum() == 16
    assert [bool(flags) for flags in verdict.flags] == above.tolist()
    assert verdict.needs_fallback_rows is not None
    v1_rows = await fraud["1"].infer(guard.fallback_inputs(inputs, verdict))
    served = guard.merge_fallback(verdict, v1_rows)["probability"]
    v1 = (await fraud["1"].infer(inputs))["probability"]
    np.testing.assert_array_equal(served, np.where(above[:, None], v1, v2))


async def test_real_scores_clamped_stay_within_the_contract(
    fraud: dict[str, OnnxBackend], feature_rows: np.ndarray
) -> None:
    v1 = (await fraud["1"].infer({"features": feature_rows}))["probability"]
    high = float(np.median(v1))
    verdict = Guard(fraud_config({"policy": "clamp"}, high), "fraud_mlp", "1").check(
        {"probability": v1}
    )
    assert verdict.outputs["probability"].max() <= high
    changed = verdict.outputs["probability"] != v1
    assert changed.sum() == 32
    assert [bool(flags) for flags in verdict.flags] == changed[:, 0].tolist()
