"""Rows for a profile or a report: a Parquet or CSV file of named columns, or the audit log.

A file names its columns as the model's config does (service.monitor.profile.model_columns);
outputs it lacks are computed by the version's ONNX model from the inputs it has. The audit
log gives each record's inputs (the feature-built input as the model saw it) and outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.audit.reader import tail
from service.monitor.profile import Column, column_values
from service.protocol.datatypes import numpy_dtype
from service.repository.config import ModelConfig

SUFFIXES = (".csv", ".parquet")


class SourceError(Exception):
    """The rows cannot be read as asked; the message says why, in one line."""


def read_file(path: Path) -> dict[str, np.ndarray]:
    """Every numeric column of a CSV or Parquet file, as float64."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pacsv.read_csv(path)
        elif suffix == ".parquet":
            table = pq.read_table(path)
        else:
            raise SourceError(
                f"{path}: unsupported file type {suffix!r}: use {' or '.join(SUFFIXES)}"
            )
    except OSError as exc:
        raise SourceError(f"{path}: {exc}") from None
    found = {}
    for name in table.column_names:
        column = table.column(name)
        try:
            found[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        except (TypeError, ValueError):
            continue  # ids, timestamps as text: not a feature
    return found


def file_values(
    path: Path, columns: list[Column], config: ModelConfig, model_file: Path | None
) -> dict[str, np.ndarray]:
    """Each column's values from the file; outputs it lacks are scored by `model_file`."""
    data = read_file(path)
    # Values as the model sees them: a CSV's decimal text of an FP32 value, read as float64,
    # is not the FP32 value the gateway would count.
    dtypes = {s.name: numpy_dtype(s.datatype) for s in [*config.inputs, *config.outputs]}
    for c in columns:
        if c.name in data:
            data[c.name] = data[c.name].astype(dtypes[c.tensor]).astype(np.float64)
    inputs = [c for c in columns if c.kind == "input"]
    missing = [c.name for c in inputs if c.name not in data]
    if missing:
        raise SourceError(f"{path}: missing input column(s) {', '.join(map(repr, missing))}")
    lacking = [c for c in columns if c.kind == "output" and c.name not in data]
    if lacking:
        if model_file is None or not model_file.is_file():
            names = ", ".join(repr(c.name) for c in lacking)
            raise SourceError(f"{path}: missing output column(s) {names}, and no model to score")
        outputs = _score(model_file, config, _tensors(inputs, data))
        data |= column_values(lacking, outputs)
    return {c.name: data[c.name] for c in columns}


def _tensors(columns: list[Column], data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The input tensors the columns make up, one row per file row."""
    widths: dict[str, int] = {}
    for c in columns:
        widths[c.tensor] = max(widths.get(c.tensor, 0), c.index + 1)
    rows = len(next(iter(data.values())))
    tensors = {name: np.zeros((rows, width)) for name, width in widths.items()}
    for c in columns:
        tensors[c.tensor][:, c.index] = data[c.name]
    return tensors


def _score(
    model_file: Path, config: ModelConfig, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feed = {
        spec.name: inputs[spec.name].astype(numpy_dtype(spec.datatype))
        for spec in config.inputs
        if spec.name in inputs
    }
    names = [o.name for o in config.outputs]
    return dict(zip(names, session.run(names, feed), strict=True))


async def audit_values(
    url: str,
    model: str,
    version: str,
    columns: list[Column],
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[str, np.ndarray]:
    """Each column's values over the version's audit records in [since_ms, until_ms)."""
    parts: dict[str, list[np.ndarray]] = {c.name: [] for c in columns}
    async for r in tail(url, model=model, follow=False, version=version, last=None):
        if (since_ms is not None and r.ts_ms < since_ms) or (
            until_ms is not None and r.ts_ms >= until_ms
        ):
            continue
        tensors = {**r.inputs, **r.outputs}
        if not all(c.tensor in tensors for c in columns):
            continue  # a record without a monitored tensor (a V2 request that named outputs)
        for name, values in column_values(columns, tensors).items():
            parts[name].append(values)
    return {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
