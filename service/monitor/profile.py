"""Reference profiles: the bins of every monitored column and the reference's counts in them.

A profile lives beside its version, `<model>/<version>/reference.json`, and is loaded with it.
Each column is a model input feature or an output, named as the model's config names it (a
feature-built input by its views' feature names), and is one of:

    numeric      edges e0 < e1 < ... < em (the reference's quantiles, e0 its minimum and em its
                 maximum, to 7 significant digits so the last bits of a machine's arithmetic
                 never change a profile): bin 0 below e0, bin i in [e(i-1), e(i)), bin m+1
                 from em up, bin m+2 NaN
    categorical  up to TOP_K values: bin i the i-th value, then "other", then NaN

The hash is SHA-256 over the canonical JSON of everything else: metrics and the admin route
name a profile by it, and counts shared through Redis are kept apart by it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from feature_store.views import FeatureView
from service.monitor.bins import Binner

if TYPE_CHECKING:
    from service.repository.config import ModelConfig

REFERENCE_FILE = "reference.json"
FORMAT = 1
# Quantile bins of a numeric column (fewer where quantiles coincide).
QUANTILE_BINS = 20
# A column with at most this many distinct values is categorical; its most frequent TOP_K
# values get a bin each.
CATEGORICAL_MAX_DISTINCT = 12
TOP_K = 10

Kind = Literal["input", "output"]


class ProfileError(Exception):
    """A profile that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class Column:
    """Where a monitored column is found: a column of an input or output tensor."""

    name: str
    kind: Kind
    tensor: str
    index: int


@dataclass(frozen=True, slots=True)
class ColumnProfile:
    column: Column
    edges: np.ndarray | None  # numeric
    categories: np.ndarray | None  # categorical
    counts: np.ndarray  # int64, one per bin

    @property
    def bins(self) -> int:
        return len(self.counts)

    @property
    def labels(self) -> list[str]:
        """A short name per bin, for reports."""
        if self.categories is not None:
            return [f"{c:g}" for c in self.categories] + ["other", "NaN"]
        assert self.edges is not None
        pairs = zip(self.edges[:-1], self.edges[1:], strict=True)
        inner = [f"[{a:.4g}, {b:.4g})" for a, b in pairs]
        return [f"< {self.edges[0]:.4g}", *inner, f">= {self.edges[-1]:.4g}", "NaN"]


@dataclass(frozen=True, slots=True)
class Profile:
    model: str
    version: str
    rows: int
    columns: list[ColumnProfile]
    hash: str

    def document(self) -> dict[str, Any]:
        return _document(self.model, self.version, self.rows, self.columns) | {"hash": self.hash}


def model_columns(config: ModelConfig, views: Mapping[str, FeatureView]) -> list[Column]:
    """Every monitored column of a model, by name. A feature-built input's columns take their
    features' names (`view.feature` where two views share a name), a one-column tensor its own
    name, others `name[i]`. Tensors of a variable size or of bytes are left out."""
    columns: list[Column] = []
    for spec in config.inputs:
        if spec.features is not None:
            names = [(v, f) for v in spec.features.views for f in views[v].feature_names]
            bare = [f for _, f in names]
            columns += [
                Column(f if bare.count(f) == 1 else f"{v}.{f}", "input", spec.name, i)
                for i, (v, f) in enumerate(names)
            ]
        elif spec.datatype != "BYTES":
            columns += _tensor_columns(spec.name, row_dims(config, spec.dims), "input")
    for out in config.outputs:
        if out.datatype != "BYTES":
            columns += _tensor_columns(out.name, row_dims(config, out.dims), "output")
    return columns


def row_dims(config: ModelConfig, dims: list[int]) -> list[int]:
    """A row's dims: without the batch dimension, which dims carry when the model does not
    batch (Triton's max_batch_size 0)."""
    return dims if config.max_batch_size > 0 else dims[1:]


def tensor_widths(config: ModelConfig) -> dict[str, int]:
    """Columns per row of each input and output of a fixed size."""
    return {
        spec.name: math.prod(row_dims(config, spec.dims))
        for spec in [*config.inputs, *config.outputs]
        if all(d > 0 for d in row_dims(config, spec.dims))
    }


def _tensor_columns(name: str, dims: list[int], kind: Kind) -> list[Column]:
    if any(d < 0 for d in dims):
        return []
    width = math.prod(dims)
    if width == 1:
        return [Column(name, kind, name, 0)]
    return [Column(f"{name}[{i}]", kind, name, i) for i in range(width)]


def build_profile(
    model: str, version: str, columns: list[Column], values: Mapping[str, np.ndarray]
) -> Profile:
    """The profile of reference rows: `values[column.name]` holds each column's values."""
    profiles = []
    rows = 0
    for column in columns:
        data = np.asarray(values[column.name], dtype=np.float64).ravel()
        rows = len(data)
        profiles.append(_column_profile(column, data))
    return _finish(model, version, rows, profiles)


def _column_profile(column: Column, data: np.ndarray) -> ColumnProfile:
    finite = data[~np.isnan(data)]
    distinct, freq = np.unique(finite, return_counts=True)
    if len(distinct) <= CATEGORICAL_MAX_DISTINCT:
        top = np.sort(distinct[np.argsort(-freq, kind="stable")[:TOP_K]])
        return _counted(column, None, top, data)
    quantiles = np.quantile(finite, np.linspace(0.0, 1.0, QUANTILE_BINS + 1))
    edges = np.unique([float(f"{q:.7g}") for q in quantiles])
    return _counted(column, edges, None, data)


def column_values(
    columns: list[Column], tensors: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each column's values (float64) out of the batch of tensors holding them."""
    found = {}
    for c in columns:
        tensor = np.asarray(tensors[c.tensor])
        found[c.name] = tensor.reshape(len(tensor), -1)[:, c.index].astype(np.float64)
    return found


def _counted(
    column: Column, edges: np.ndarray | None, categories: np.ndarray | None, data: np.ndarray
) -> ColumnProfile:
    bins = len(edges if edges is not None else categories) + 2  # type: ignore[arg-type]
    shaped = ColumnProfile(column, edges, categories, np.zeros(bins, dtype=np.int64))
    return ColumnProfile(column, edges, categories, Binner([shaped]).counts(data[:, None]))


def _document(model: str, version: str, rows: int, columns: list[ColumnProfile]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": model,
        "version": version,
        "rows": rows,
        "columns": [
            {
                "name": c.column.name,
                "kind": c.column.kind,
                "tensor": c.column.tensor,
                "index": c.column.index,
                **(
                    {"edges": c.edges.tolist()}
                    if c.edges is not None
                    else {"categories": c.categories.tolist() if c.categories is not None else []}
                ),
                "counts": c.counts.tolist(),
            }
            for c in columns
        ],
    }


def _content_hash(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _finish(model: str, version: str, rows: int, columns: list[ColumnProfile]) -> Profile:
    return Profile(
        model, version, rows, columns, _content_hash(_document(model, version, rows, columns))
    )


def write_profile(profile: Profile, path: Path) -> None:
    """One line per column: a diff of two profiles shows which columns changed."""
    doc = profile.document()
    columns = doc.pop("columns")
    head = json.dumps(doc, indent=1)[:-2]
    lines = ",\n  ".join(json.dumps(c, separators=(", ", ": ")) for c in columns)
    path.write_text(f'{head},\n "columns": [\n  {lines}\n ]\n}}\n')


def read_profile(path: Path) -> Profile:
    """The profile at `path`; ProfileError names the file and the problem."""
    try:
        doc = json.loads(path.read_text())
        columns = [_read_column(c) for c in doc["columns"]]
        profile = _finish(str(doc["model"]), str(doc["version"]), int(doc["rows"]), columns)
        stated = doc.get("hash")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ProfileError(f"{path}: not a reference profile: {reason}") from None
    if doc.get("format") != FORMAT:
        raise ProfileError(f"{path}: format {doc.get('format')!r}; expected {FORMAT}")
    if stated != profile.hash:
        raise ProfileError(
            f"{path}: hash {stated!r} does not match its content ({profile.hash}); "
            "rebuild it with `mlgate monitor reference`"
        )
    return profile


def _read_column(doc: dict[str, Any]) -> ColumnProfile:
    kind = doc["kind"]
    if kind not in ("input", "output"):
        raise ValueError(f"column {doc['name']!r}: kind {kind!r}")
    column = Column(str(doc["name"]), kind, str(doc["tensor"]), int(doc["index"]))
    counts = np.asarray(doc["counts"], dtype=np.int64)
    if "edges" in doc:
        edges = np.asarray(doc["edges"], dtype=np.float64)
        if len(edges) < 1 or np.any(np.diff(edges) <= 0) or len(counts) != len(edges) + 2:
            raise ValueError(f"column {column.name!r}: edges and counts do not fit")
        return ColumnProfile(column, edges, None, counts)
    categories = np.asarray(doc["categories"], dtype=np.float64)
    if len(counts) != len(categories) + 2 or np.any(np.diff(categories) <= 0):
        raise ValueError(f"column {column.name!r}: categories and counts do not fit")
    return ColumnProfile(column, None, categories, counts)


def profile_errors(profile: Profile, tensors: Mapping[str, int], path: Path) -> list[str]:
    """Where `profile` does not fit the model: `tensors` maps each input and output name to
    its width (columns per row)."""
    errors = []
    for c in profile.columns:
        width = tensors.get(c.column.tensor)
        if width is None:
            errors.append(f"{path}: column {c.column.name!r}: no tensor {c.column.tensor!r}")
        elif c.column.index >= width:
            errors.append(
                f"{path}: column {c.column.name!r}: index {c.column.index} beyond "
                f"{c.column.tensor!r}'s {width} columns"
            )
    return errors
