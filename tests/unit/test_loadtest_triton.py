"""The suite's Triton part without a Triton: the repository it serves from, the requests it sends
Triton directly, and the page's table of the three ways to run the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.render import markdown, render
from loadtests.triton import direct_scenario, triton_repository
from loadtests.workloads import SCENARIOS, ModelChoice, Scenario
from service.repository.config import read_config
from tests.conftest import MODELS_DIR
from tests.unit.test_loadtest_render import results_with


def test_repository_serves_fraud_mlp_by_default_from_triton_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    original = (MODELS_DIR / "fraud_mlp" / "config.yaml").read_text()
    root = triton_repository(MODELS_DIR, tmp_path / "models", "127.0.0.1:8101")

    config = read_config(root / "fraud_mlp" / "config.yaml")
    assert config.default_version == "3"
    assert (config.backend_of("3"), config.backend_of("2")) == ("triton", "onnxruntime")
    assert config.triton is not None
    assert config.triton.endpoints == ["127.0.0.1:8101"]
    assert config.triton.model_versions == {"3": "2"}
    assert (
        config.dynamic_batching
        == read_config(MODELS_DIR / "fraud_mlp" / "config.yaml").dynamic_batching
    )
    model = root / "fraud_mlp" / "2" / "model.onnx"
    assert model.read_bytes() == (MODELS_DIR / "fraud_mlp" / "2" / "model.onnx").read_bytes()
    assert read_config(root / "heavy_mlp" / "config.yaml").name == "heavy_mlp"
    assert (MODELS_DIR / "fraud_mlp" / "config.yaml").read_text() == original


@pytest.mark.parametrize(("scenario", "rows"), [("predict-1", 1), ("predict-8-zipf", 8)])
def test_triton_is_sent_directly_as_many_feature_rows_as_the_gateway_sends_it(
    scenario: str, rows: int
) -> None:
    dense = direct_scenario(SCENARIOS[scenario])
    assert dense is not None
    assert (dense.api, dense.rows) == ("v2-dense", rows)
    # Triton's own name and number for the gateway's fraud_mlp version 3.
    assert dense.models == (ModelChoice("fraud_mlp", "2"),)


@pytest.mark.parametrize(
    "scenario",
    [
        SCENARIOS["heavy-1"],
        SCENARIOS["mix"],
        SCENARIOS["v2-dense-1"],
        Scenario("v2", "predict", 1, "uniform", (ModelChoice("fraud_mlp", "2"),), "in-process"),
    ],
    ids=["other model", "V2 mix", "dense", "in-process version"],
)
def test_scenarios_that_do_not_reach_triton_have_no_direct_counterpart(
    scenario: Scenario,
) -> None:
    assert direct_scenario(scenario) is None


def with_triton(results: dict[str, Any]) -> dict[str, Any]:
    baseline = results["runs"][1]
    results["configs"].append(
        {"name": "triton", "description": "on Triton", "command": "mlgate serve"}
        | {"compare_to": "baseline"}
    )
    latency = {k: v * 2 for k, v in baseline["latency_us"].items()}
    results["runs"].append(
        baseline | {"config": "triton", "throughput_rps": 400.0, "latency_us": latency}
    )
    direct = {"scenario": "predict-1", "rows": 1, "command": "mlgate bench run"}
    results["triton"] = {
        "config": "triton",
        "server": "triton_serve.py",
        "repository": {"default_version": "3"},
        "direct": [
            direct | {"concurrency": c, "throughput_rps": 900.0, "latency_us": {"p99": 2_000}}
            for c in (8, 64)
        ],
    }
    return results


def test_triton_table_puts_direct_gateway_and_in_process_figures_side_by_side() -> None:
    text = markdown(with_triton(results_with(p50_us=2_000, p99_us=4_000)), "plot.png")
    assert (
        "| predict-1 | 1 | 8 | 900 | 2.000 | 400 | 8.000 | 5600 | 4.000 | `mlgate bench run` |"
        in text
    )
    # Neither gateway ran at 64: the direct figures stand alone.
    assert "| predict-1 | 1 | 64 | 900 | 2.000 | - | - | - | - | `mlgate bench run` |" in text
    assert "default_version: '3'" in text


def test_a_run_without_the_triton_venv_says_why_the_section_is_empty() -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    results["triton"] = {"config": "triton", "skipped": "no Triton venv"}
    text = markdown(results, "plot.png")
    assert "Not measured in this run: no Triton venv." in text
    assert "directly req/s" not in text


def test_a_run_whose_only_configuration_was_skipped_still_renders(tmp_path: Path) -> None:
    results = results_with(p50_us=2_000, p99_us=4_000)
    results |= {"configs": [], "runs": [], "triton": {"config": "triton", "skipped": "no venv"}}
    render(results, tmp_path / "benchmarks.md")
    assert (tmp_path / "benchmarks.png").read_bytes().startswith(b"\x89PNG")
