"""The model repository: config.yaml validation, graph checks, versions, lookups."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from feature_store.views import declared_views
from service.repository.checks import check_feature_bindings
from service.repository.config import ConfigError, ModelConfig, read_config
from service.repository.loader import Repository, check_repository
from tests.conftest import MODELS_DIR


@dataclass
class View:
    width: int
    entity: str = "user_id"
    np_dtype: np.dtype[Any] = field(default_factory=lambda: np.dtype(np.float32))


VIEWS = {"txn_stats": View(16), "user_profile": View(16)}
FEATURES = np.random.default_rng(0).random((4, 32), dtype=np.float32) * 100


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository holding a copy of fraud_mlp (the small model keeps the checks fast)."""
    shutil.copytree(MODELS_DIR / "fraud_mlp", tmp_path / "fraud_mlp")
    return tmp_path


@pytest.fixture
def config_path(repo: Path) -> Path:
    return repo / "fraud_mlp" / "config.yaml"


def edit(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
async def loaded() -> AsyncIterator[Repository]:
    repository = await Repository.load(MODELS_DIR, VIEWS)
    yield repository
    await repository.close()


async def test_loads_every_model_of_the_repository(loaded: Repository) -> None:
    assert sorted(loaded.models) == ["fraud_mlp", "heavy_mlp"]
    assert list(loaded.models["fraud_mlp"].versions) == ["1", "2"]
    assert loaded.models["fraud_mlp"].default_version == "2"
    assert loaded.models["heavy_mlp"].default_version == "1"
    version = loaded.models["fraud_mlp"].versions["1"]
    assert version.path == MODELS_DIR / "fraud_mlp" / "1" / "model.onnx"
    assert version.config.max_batch_size == 64
    assert version.config.inputs[0].features is not None
    assert version.config.outputs[0].valid_range is not None


async def test_fraud_versions_answer_differently(loaded: Repository) -> None:
    versions = loaded.models["fraud_mlp"].versions
    v1 = await versions["1"].backend.infer({"features": FEATURES})
    v2 = await versions["2"].backend.infer({"features": FEATURES})
    assert v1["probability"].shape == (4, 1)
    assert np.abs(v1["probability"] - v2["probability"]).max() > 0.01


async def test_default_version_is_the_highest_without_a_setting(
    repo: Path, config_path: Path
) -> None:
    edit(config_path, lambda c: c.pop("default_version"))
    shutil.copytree(repo / "fraud_mlp" / "1", repo / "fraud_mlp" / "10")
    repository = await Repository.load(repo)
    try:
        assert list(repository.models["fraud_mlp"].versions) == ["1", "2", "10"]
        assert repository.models["fraud_mlp"].default_version == "10"
    finally:
        await repository.close()


async def test_only_model_dirs_with_config_and_versions_with_model_files_count(
    repo: Path,
) -> None:
    (repo / "notes").mkdir()
    (repo / "feature_views.yaml").write_text("views: []\n")
    (repo / "fraud_mlp" / "3").mkdir()
    (repo / "fraud_mlp" / "latest").mkdir()
    executor = ThreadPoolExecutor(1)
    repository = await Repository.load(repo, executor=executor)
    try:
        assert list(repository.models) == ["fraud_mlp"]
        assert list(repository.models["fraud_mlp"].versions) == ["1", "2"]
    finally:
        await repository.close()
        # A caller's executor is the caller's to shut down.
        assert executor.submit(int).result() == 0
        executor.shutdown()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c["inputs"][0].update(datatype="FLOAT32"),
            "inputs[0].datatype: unsupported datatype 'FLOAT32'",
        ),
        (lambda c: c["inputs"][0].update(dtype="FP32"), "inputs[0].dtype: unknown field"),
        (lambda c: c.update(backend="tensorflow"), "backend: input should be 'onnxruntime'"),
        (lambda c: c.update(max_batch_size=-1), "max_batch_size: input should be greater"),
        (lambda c: c["outputs"][0].pop("datatype"), "outputs[0].datatype: field required"),
        (lambda c: c["inputs"][0].update(dims=[0]), "inputs[0].dims: 0 is not a size"),
        (
            lambda c: c["outputs"][0].update(valid_range={"min": 1.0, "max": 0.0}),
            "outputs[0].valid_range: min 1.0 is above max 0.0",
        ),
        (
            lambda c: c["inputs"][0]["features"].update(views=[]),
            "inputs[0].features.views: list should have at least 1 item",
        ),
        (
            lambda c: c["inputs"][0]["features"].update(views=["txn_stats", "txn_stats"]),
            "inputs[0].features.views: view 'txn_stats' listed twice",
        ),
        (
            lambda c: c["inputs"][0].update(dims=[]),
            "inputs[0].features: a feature-bound input needs dims",
        ),
        (
            lambda c: c.update(max_batch_size=0, dynamic_batching={}),
            "dynamic_batching: needs max_batch_size > 0",
        ),
        (
            lambda c: c.update(dynamic_batching={"preferred_batch_sizes": [128]}),
            "dynamic_batching: preferred_batch_sizes: 128 exceeds max_batch_size 64",
        ),
        (
            lambda c: c["onnxruntime"].update(providers=["OpenVINOExecutionProvider"]),
            "onnxruntime.providers[0]: input should be",
        ),
        (lambda c: c.update(default_version="v2"), "default_version: 'v2' is not a version"),
        (lambda c: c.update(outputs=c["outputs"] * 2), "outputs: duplicate name 'probability'"),
    ],
)
def test_config_errors_name_the_file_and_the_field(
    config_path: Path, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    edit(config_path, change)
    with pytest.raises(ConfigError) as caught:
        read_config(config_path)
    assert f"{config_path}: {expected}" in str(caught.value)


def test_invalid_yaml_names_the_file(config_path: Path) -> None:
    config_path.write_text("name: [fraud_mlp\n")
    with pytest.raises(ConfigError, match=rf"^{config_path}: invalid YAML: .*line"):
        read_config(config_path)


def test_integer_default_version_reads_as_the_version_name(config_path: Path) -> None:
    edit(config_path, lambda c: c.update(default_version=1))
    assert read_config(config_path).default_version == "1"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda c: c["inputs"][0].update(dims=[31]),
            "{v2}: input 'features' has shape [-1, 32], but {config} inputs[0].dims is [31] "
            "(dims exclude the batch dimension)",
        ),
        (
            lambda c: (c.update(max_batch_size=0), c.pop("dynamic_batching", None)),
            "{v2}: input 'features' has shape [-1, 32], but {config} inputs[0].dims is [32]",
        ),
        (
            lambda c: c["outputs"][0].update(name="prob"),
            "{v2}: output 'probability' not declared in {config} outputs (declared: prob)",
        ),
        (
            lambda c: c["outputs"][0].update(name="prob"),
            "{v2}: no output 'prob' as {config} outputs[0].name declares "
            "(the graph has: probability)",
        ),
        (
            lambda c: c["inputs"][0].update(datatype="FP64"),
            "{v2}: input 'features' is FP32, but {config} inputs[0].datatype is FP64",
        ),
        (
            lambda c: c.update(name="fraud"),
            "{config}: name: 'fraud' differs from its directory 'fraud_mlp'",
        ),
        (
            lambda c: c.update(default_version="3"),
            "{config}: default_version: '3' has no model.onnx; available: 1, 2",
        ),
    ],
)
def test_model_problems_name_the_model_file_the_config_and_the_field(
    repo: Path, config_path: Path, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    edit(config_path, change)
    problems = check_repository(repo)
    v2 = repo / "fraud_mlp" / "2" / "model.onnx"
    assert expected.format(v2=v2, config=config_path) in problems


def test_unreadable_model_file_is_named(repo: Path) -> None:
    broken = repo / "fraud_mlp" / "1" / "model.onnx"
    broken.write_bytes(b"not a protobuf")
    problems = check_repository(repo)
    assert len(problems) == 1
    assert problems[0].startswith(f"{broken}: onnxruntime cannot load it")


def test_missing_versions_are_reported(repo: Path, config_path: Path) -> None:
    shutil.rmtree(repo / "fraud_mlp" / "1")
    shutil.rmtree(repo / "fraud_mlp" / "2")
    assert check_repository(repo) == [
        f"{config_path}: no versions; expected <version>/model.onnx beside it, "
        "the version named by digits"
    ]


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        (
            {"txn_stats": View(16)},
            "inputs[0].features.views[1]: unknown feature view 'user_profile'; known: txn_stats",
        ),
        (
            {"txn_stats": View(16), "user_profile": View(15)},
            "inputs[0].dims: the last dimension is 32, but the views of inputs[0].features.views "
            "give 31 columns (txn_stats 16 + user_profile 15)",
        ),
        (
            {"txn_stats": View(16), "user_profile": View(16, entity="merchant_id")},
            "inputs[0].features.views[1]: view 'user_profile' is keyed by 'merchant_id', "
            "not by inputs[0].features.entity 'user_id'",
        ),
        (
            {"txn_stats": View(16, np_dtype=np.dtype(np.int64)), "user_profile": View(16)},
            "inputs[0].features.views[0]: view 'txn_stats' holds int64, "
            "but inputs[0].datatype is FP32",
        ),
    ],
)
def test_feature_binding_errors_name_the_file_and_the_field(
    config_path: Path, views: dict[str, View], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_feature_bindings(read_config(config_path), views, config_path)
    assert str(caught.value) == f"{config_path}: {expected}"


def test_the_committed_repository_fits_the_committed_feature_views() -> None:
    assert check_repository(MODELS_DIR, declared_views(MODELS_DIR / "feature_views.yaml")) == []


def test_without_a_views_file_bindings_to_views_are_problems(repo: Path) -> None:
    problems = check_repository(repo, declared_views(repo / "nope.yaml"))
    config = repo / "fraud_mlp" / "config.yaml"
    unknown = "unknown feature view 'txn_stats'; known: none"
    assert f"{config}: inputs[0].features.views[0]: {unknown}" in problems


async def test_load_reports_the_problems_of_every_model_at_once(
    repo: Path, config_path: Path
) -> None:
    shutil.copytree(repo / "fraud_mlp", repo / "other")
    edit(repo / "other" / "config.yaml", lambda c: c.update(name="other", max_batch_size=-1))
    with pytest.raises(ConfigError) as caught:
        await Repository.load(repo, {})
    lines = str(caught.value).splitlines()
    assert any(
        line.startswith(f"{repo / 'other' / 'config.yaml'}: max_batch_size") for line in lines
    )
    assert any(line.startswith(f"{config_path}: inputs[0].features.views[0]") for line in lines)


def test_model_config_defaults_follow_triton() -> None:
    config = ModelConfig.model_validate(
        {
            "name": "m",
            "backend": "onnxruntime",
            "inputs": [{"name": "x", "datatype": "FP32", "dims": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "dims": [-1]}],
        }
    )
    assert config.max_batch_size == 0
    assert config.dynamic_batching is None
    assert config.onnxruntime.providers == ["CPUExecutionProvider"]
    assert config.onnxruntime.intra_op_threads == 1
