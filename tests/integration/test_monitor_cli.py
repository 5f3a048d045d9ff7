"""`mlgate monitor reference` from files, and what it says when it cannot build one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from service.cli import build_parser
from service.monitor.profile import REFERENCE_FILE, read_profile
from tests.conftest import MODELS_DIR
from tests.integration.drift_support import population

ROWS = 2000


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(MODELS_DIR / "feature_views.yaml", root)
    shutil.copytree(MODELS_DIR / "fraud_mlp", root / "fraud_mlp")
    (root / "fraud_mlp" / "2" / REFERENCE_FILE).unlink()
    return root


def reference(repo: Path, *args: str) -> int:
    command = ["monitor", "reference", "--model", "fraud_mlp", "--version", "2"]
    parsed = build_parser().parse_args([*command, "--models", str(repo), *args])
    code: int = parsed.func(parsed)
    return code


def table(with_output: bool) -> pa.Table:
    names, rows = population()
    columns = {n: rows[:ROWS, i] for i, n in enumerate(names)}
    if with_output:
        import onnxruntime as ort

        session = ort.InferenceSession(MODELS_DIR / "fraud_mlp" / "2" / "model.onnx")
        columns["probability"] = session.run(None, {"features": rows[:ROWS]})[0][:, 0]
    return pa.table(columns | {"user_id": [f"u{i}" for i in range(ROWS)]})


def test_csv_without_outputs_and_parquet_with_them_give_the_same_profile(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CSV's outputs are scored by the version's model: the same as the Parquet's."""
    pacsv.write_csv(table(with_output=False), tmp_path / "rows.csv")
    pq.write_table(table(with_output=True), tmp_path / "rows.parquet")
    path = repo / "fraud_mlp" / "2" / REFERENCE_FILE
    assert reference(repo, "--data", str(tmp_path / "rows.csv")) == 0
    from_csv = read_profile(path)
    assert reference(repo, "--data", str(tmp_path / "rows.parquet")) == 0
    from_parquet = read_profile(path)
    assert from_csv.hash == from_parquet.hash
    assert from_csv.rows == ROWS and len(from_csv.columns) == 33
    assert f"{path}: 33 columns over {ROWS} rows, hash {from_csv.hash}" in capsys.readouterr().out


def test_a_file_lacking_a_feature_exits_1_naming_it(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rows.parquet"
    pq.write_table(table(with_output=False).drop_columns(["kyc_level"]), data)
    assert reference(repo, "--data", str(data)) == 1
    err = capsys.readouterr().err
    assert err == f"monitor reference: {data}: missing input column(s) 'kyc_level'\n"
    assert not (repo / "fraud_mlp" / "2" / REFERENCE_FILE).exists()
