"""Rows into bins, vectorised over a batch; no Python loop ever runs per row.

A batch's monitored columns are gathered into one (rows x columns) matrix. A numeric column's
bin is the number of its edges at or below the value: for a few rows, one comparison of every
value with every edge of its column at once (edges padded with NaN, which no value reaches),
a fixed handful of numpy calls; for more rows, np.searchsorted per column, whose cost grows
with log(edges) instead of edges. Categorical columns compare with their values; one
np.bincount over the flat bin numbers counts the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

# Up to this many rows, comparing with every edge at once beats a searchsorted per column
# (measured with loadtests.drift_cost: about equal at 16 rows and 33 columns of 21 edges).
COMPARE_ROWS = 16


class Where(Protocol):
    @property
    def tensor(self) -> str: ...

    @property
    def index(self) -> int: ...


class Binned(Protocol):
    """A column's bins (service.monitor.profile's ColumnProfile)."""

    @property
    def column(self) -> Where: ...

    @property
    def edges(self) -> np.ndarray | None: ...

    @property
    def categories(self) -> np.ndarray | None: ...

    @property
    def bins(self) -> int: ...


def _padded(rows: Sequence[np.ndarray]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class Binner:
    """Counts rows into the bins of a profile's columns; counts are one flat int64 array,
    column after column (`offsets` says where each starts)."""

    def __init__(self, columns: Sequence[Binned]) -> None:
        sizes = np.array([c.bins for c in columns], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.total = int(sizes.sum())
        numeric = [i for i, c in enumerate(columns) if c.edges is not None]
        categorical = [i for i, c in enumerate(columns) if c.categories is not None]
        self._numeric = np.array(numeric, dtype=np.intp)
        self._edge_list = [np.asarray(columns[i].edges) for i in numeric]
        self._edges = _padded(self._edge_list)
        self._categorical = np.array(categorical, dtype=np.intp)
        self._categories = _padded([columns[i].categories for i in categorical])  # type: ignore[misc]
        # Per column (as a column vector, to broadcast over rows): where its bins start, and
        # the bin of NaN, and of a value among no category.
        self._numeric_offsets = self.offsets[numeric, None]
        self._numeric_nan = (sizes - 1)[numeric, None]
        self._categorical_offsets = self.offsets[categorical, None]
        self._categorical_nan = (sizes - 1)[categorical, None]
        self._categorical_past = (sizes - 2)[categorical, None]
        # Where each tensor's columns go in the gathered matrix.
        gather: dict[str, tuple[list[int], list[int]]] = {}
        for position, c in enumerate(columns):
            indices, positions = gather.setdefault(c.column.tensor, ([], []))
            indices.append(c.column.index)
            positions.append(position)
        self._gather = [
            (tensor, np.array(ix, dtype=np.intp), np.array(pos, dtype=np.intp))
            for tensor, (ix, pos) in gather.items()
        ]
        self.columns = len(columns)

    def matrix(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The monitored columns of a batch's inputs and outputs, as float64 (rows x columns),
        each column contiguous in memory (column-major), as counting reads them."""
        rows = len(next(iter(tensors.values())))
        out = np.empty((self.columns, rows))
        for tensor, indices, positions in self._gather:
            out[positions] = tensors[tensor].reshape(rows, -1)[:, indices].T
        return out.T

    def counts(self, matrix: np.ndarray) -> np.ndarray:
        """The rows of `matrix` (rows x columns, as `matrix` makes it) counted into every
        column's bins."""
        by_column = matrix.T
        parts = []
        if len(self._numeric):
            values = by_column[self._numeric]
            found = np.where(np.isnan(values), self._numeric_nan, self._numeric_bins(values))
            parts.append((found + self._numeric_offsets).ravel())
        if len(self._categorical):
            values = by_column[self._categorical]
            equal = values[:, :, None] == self._categories[:, None, :]
            found = np.where(equal.any(axis=2), equal.argmax(axis=2), self._categorical_past)
            found = np.where(np.isnan(values), self._categorical_nan, found)
            parts.append((found + self._categorical_offsets).ravel())
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.bincount(flat, minlength=self.total)

    def _numeric_bins(self, values: np.ndarray) -> np.ndarray:
        """Per value (columns x rows), the edges of its column at or below it (NaN: masked
        by the caller)."""
        if values.shape[1] <= COMPARE_ROWS:
            found: np.ndarray = (values[:, :, None] >= self._edges[:, None, :]).sum(axis=2)
            return found
        return np.stack(
            [
                np.searchsorted(e, v, side="right")
                for e, v in zip(self._edge_list, values, strict=True)
            ]
        )

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Flat counts, one array per column."""
        return np.split(flat, self.offsets[1:])
