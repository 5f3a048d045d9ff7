"""The demo model builder: reproducible bytes, the shapes the configs declare, usable outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from models.build import FEATURE_VIEWS, IR_VERSION, OPSET, VIEWS_FILE, build_all
from service.monitor.profile import read_profile
from tests.conftest import MODELS_DIR

MODEL_FILES = [
    Path("fraud_mlp/1/model.onnx"),
    Path("fraud_mlp/2/model.onnx"),
    Path("heavy_mlp/1/model.onnx"),
]
# The drift references the demo model's versions ship with.
REFERENCE_FILES = [Path("fraud_mlp/1/reference.json"), Path("fraud_mlp/2/reference.json")]
BUILT_FILES = MODEL_FILES + REFERENCE_FILES


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    assert sorted(build_all(out)) == sorted(out / f for f in BUILT_FILES)
    return out


def demo_population(rows: int) -> np.ndarray:
    """Rows like the ones the demo feature store serves (another seed than the build's)."""
    views = load_views(VIEWS_FILE)
    return np.concatenate([synthetic_rows(views[n], rows, seed=1)[1] for n in FEATURE_VIEWS], 1)


def probabilities(path: Path, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(["probability"], {"features": features})[0]
    return result[:, 0]


def test_building_twice_gives_the_same_bytes(built: Path, tmp_path: Path) -> None:
    build_all(tmp_path)
    for file in BUILT_FILES:
        assert (tmp_path / file).read_bytes() == (built / file).read_bytes(), file


def test_committed_models_are_what_the_builder_makes(built: Path) -> None:
    for file in BUILT_FILES:
        assert (MODELS_DIR / file).read_bytes() == (built / file).read_bytes(), (
            f"models/{file} is stale: run `python -m models.build`"
        )


@pytest.mark.parametrize("file", MODEL_FILES, ids=str)
def test_models_take_32_features_with_a_dynamic_batch(built: Path, file: Path) -> None:
    model = onnx.load(built / file)
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    [features] = model.graph.input
    [probability] = model.graph.output
    assert features.name == "features"
    assert features.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [(d.dim_param, d.dim_value) for d in features.type.tensor_type.shape.dim] == [
        ("batch", 0),
        ("", 32),
    ]
    assert probability.name == "probability"
    assert [(d.dim_param, d.dim_value) for d in probability.type.tensor_type.shape.dim] == [
        ("batch", 0),
        ("", 1),
    ]


def test_model_files_stay_small(built: Path) -> None:
    assert (built / "fraud_mlp/1/model.onnx").stat().st_size < 1_000_000
    assert (built / "fraud_mlp/2/model.onnx").stat().st_size < 1_000_000
    assert (built / "heavy_mlp/1/model.onnx").stat().st_size < 1_000_000


@pytest.mark.parametrize("file", MODEL_FILES, ids=str)
def test_demo_features_give_unsaturated_probabilities(built: Path, file: Path) -> None:
    p = probabilities(built / file, demo_population(2000))
    assert ((p > 0.001) & (p < 0.999)).mean() > 0.99
    assert p.std() > 0.02


def test_fraud_versions_differ_clearly_but_correlate(built: Path) -> None:
    features = demo_population(2000)
    v1 = probabilities(built / "fraud_mlp/1/model.onnx", features)
    v2 = probabilities(built / "fraud_mlp/2/model.onnx", features)
    assert np.abs(v1 - v2).mean() > 0.03
    assert np.corrcoef(v1, v2)[0, 1] > 0.6


@pytest.mark.parametrize("model", ["fraud_mlp", "heavy_mlp"])
def test_configs_bind_the_views_the_standardisation_was_fitted_on(model: str) -> None:
    config = yaml.safe_load((MODELS_DIR / model / "config.yaml").read_text())
    assert tuple(config["inputs"][0]["features"]["views"]) == FEATURE_VIEWS


@pytest.mark.parametrize("file", REFERENCE_FILES, ids=str)
def test_demo_references_profile_every_feature_and_the_output(file: Path) -> None:
    profile = read_profile(MODELS_DIR / file)
    names = [c.column.name for c in profile.columns]
    views = load_views(VIEWS_FILE)
    assert names == [f for v in FEATURE_VIEWS for f in views[v].feature_names] + ["probability"]
    assert all(c.counts.sum() == profile.rows for c in profile.columns)
