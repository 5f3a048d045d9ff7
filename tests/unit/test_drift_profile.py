"""Reference profiles: their bins, how rows fall into them, and how the repository loads them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from feature_store.views import load_views
from loadtests import drift_cost
from service.monitor.bins import Binner
from service.monitor.profile import (
    REFERENCE_FILE,
    Column,
    ProfileError,
    build_profile,
    read_profile,
    write_profile,
)
from service.pipeline.served import BatchingChoice, Registry
from service.repository.config import ConfigError, read_config
from service.repository.loader import Repository, check_repository
from tests.conftest import MODELS_DIR

COLUMNS = [Column("amount", "input", "x", 0), Column("level", "input", "x", 1)]
REFERENCE = {
    "amount": np.random.default_rng(0).exponential(10.0, 5000),
    "level": np.random.default_rng(1).integers(0, 4, 5000).astype(np.float64),
}
PROFILE = build_profile("m", "1", COLUMNS, REFERENCE)
# Values on an edge, where "at or below" and "below" part.
ON_EDGES: list[float] = np.asarray(PROFILE.columns[0].edges).tolist()


def row_by_row(profile_column: Any, value: float) -> int:
    """The bin of one value, the slow and obvious way."""
    if np.isnan(value):
        return int(profile_column.bins - 1)
    if profile_column.categories is not None:
        found = np.flatnonzero(profile_column.categories == value)
        return int(found[0]) if len(found) else int(profile_column.bins - 2)
    return int(np.sum(profile_column.edges <= value))


def test_numeric_column_gets_quantile_bins_and_few_values_make_a_categorical_one() -> None:
    profile = build_profile("m", "1", COLUMNS, REFERENCE)
    amount, level = profile.columns
    assert amount.edges is not None and len(amount.edges) == 21
    # Equal-frequency bins: every inner bin holds about a twentieth of the reference.
    assert np.all(np.abs(amount.counts[1:-2] - 250) <= 2)
    assert level.categories is not None and level.categories.tolist() == [0, 1, 2, 3]
    assert level.counts.sum() == 5000 and level.counts[-2:].tolist() == [0, 0]


@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.just(2)),
        elements=st.one_of(
            st.floats(-50, 200, allow_nan=False),
            st.sampled_from([np.nan, 0.0, 3.0, 7.0, *ON_EDGES]),
        ),
    )
)
def test_batch_counts_equal_row_by_row_binning(rows: np.ndarray) -> None:
    """Small batches (compared with every edge at once) and large ones (searchsorted)."""
    profile = PROFILE
    binner = Binner(profile.columns)
    counted = binner.split(binner.counts(rows))
    for i, column in enumerate(profile.columns):
        expected = np.zeros(column.bins, dtype=np.int64)
        for value in rows[:, i]:
            expected[row_by_row(column, value)] += 1
        assert counted[i].tolist() == expected.tolist()


def test_profile_round_trips_and_an_edited_one_is_refused_naming_the_file(tmp_path: Path) -> None:
    profile = build_profile("m", "1", COLUMNS, REFERENCE)
    path = tmp_path / REFERENCE_FILE
    write_profile(profile, path)
    assert read_profile(path).hash == profile.hash
    doc = json.loads(path.read_text())
    doc["columns"][0]["counts"][1] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=rf"^{path}: hash .* does not match its content"):
        read_profile(path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(MODELS_DIR / "fraud_mlp", tmp_path / "fraud_mlp")
    return tmp_path


def test_monitoring_section_errors_name_the_file_and_the_field(repo: Path) -> None:
    path = repo / "fraud_mlp" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["monitoring"] = {"alpha": 2, "statistic": "chi2", "window": 60}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    lines = str(caught.value).splitlines()
    assert f"{path}: monitoring.window: unknown field" in lines
    assert any(line.startswith(f"{path}: monitoring.alpha: ") for line in lines)
    assert any(line.startswith(f"{path}: monitoring.statistic: ") for line in lines)


def test_a_profile_naming_a_tensor_the_model_lacks_is_a_repository_problem(repo: Path) -> None:
    path = repo / "fraud_mlp" / "2" / REFERENCE_FILE
    profile = build_profile("fraud_mlp", "2", [Column("x", "input", "nope", 0)], {"x": [1.0]})
    write_profile(profile, path)
    assert check_repository(repo) == [f"{path}: column 'x': no tensor 'nope'"]


async def test_a_version_without_a_profile_is_not_monitored_and_start_up_says_so(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (repo / "fraud_mlp" / "1" / REFERENCE_FILE).unlink()
    with caplog.at_level(logging.INFO, "service.repository.loader"):
        repository = await Repository.load(repo)
    try:
        versions = repository.models["fraud_mlp"].versions
        assert versions["1"].reference is None and versions["2"].reference is not None
    finally:
        await repository.close()
    said = [r.getMessage() for r in caplog.records if "monitored" in r.getMessage()]
    assert said == [
        f"model fraud_mlp: no {REFERENCE_FILE} for version(s) 1: not monitored for drift"
    ]


@pytest.mark.parametrize("monitoring", [True, False])
async def test_monitoring_switch_decides_whether_profiled_versions_count(
    repo: Path, monitoring: bool
) -> None:
    repository = await Repository.load(repo)
    try:
        views = load_views(MODELS_DIR / "feature_views.yaml")
        registry = Registry(views, BatchingChoice(monitoring=monitoring))
        model = repository.models["fraud_mlp"]
        registry.add_model(model.name, model.config, model.versions)
        assert [d.version for d in registry.drifts()] == (["1", "2"] if monitoring else [])
        await registry.close()
    finally:
        await repository.close()


def test_counting_cost_benchmark_prints_a_line_per_batch_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    drift_cost.main(["--seconds", "0.01"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rows/batch  µs/batch  ns/row/column"
    assert [int(line.split()[0]) for line in lines[1:]] == list(drift_cost.BATCH_SIZES)
