"""Rows into bins, vectorised over a batch and over every column at once.

A batch's monitored columns are gathered into one (rows x columns) matrix; numeric columns
find their bin by comparing against every edge at once (edges padded with NaN, which no value
reaches), categorical columns by equality with their values; one np.bincount over the flat
bin numbers counts the batch. The numpy calls per batch are fixed, whatever its rows and
columns: no Python loop runs per row or per column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np


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
        self._edges = _padded([columns[i].edges for i in numeric])  # type: ignore[misc]
        self._categorical = np.array(categorical, dtype=np.intp)
        self._categories = _padded([columns[i].categories for i in categorical])  # type: ignore[misc]
        # Per column: the bin of a value past every edge or among no category, and of NaN.
        self._nan_bin = sizes - 1
        self._past_bin = sizes - 2
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
        """The monitored columns of a batch's inputs and outputs, as float64 (rows x columns)."""
        rows = len(next(iter(tensors.values())))
        out = np.empty((rows, self.columns))
        for tensor, indices, positions in self._gather:
            out[:, positions] = tensors[tensor].reshape(rows, -1)[:, indices]
        return out

    def counts(self, matrix: np.ndarray) -> np.ndarray:
        """The batch's rows counted into every column's bins."""
        bins = np.empty(matrix.shape, dtype=np.int64)
        if len(self._numeric):
            values = matrix[:, self._numeric]
            found = (values[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
            bins[:, self._numeric] = np.where(np.isnan(values), self._nan_bin[self._numeric], found)
        if len(self._categorical):
            values = matrix[:, self._categorical]
            equal = values[:, :, None] == self._categories[None, :, :]
            past = self._past_bin[self._categorical]
            found = np.where(equal.any(axis=2), equal.argmax(axis=2), past)
            bins[:, self._categorical] = np.where(
                np.isnan(values), self._nan_bin[self._categorical], found
            )
        bins += self.offsets
        return np.bincount(bins.ravel(), minlength=self.total)

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """Flat counts, one array per column."""
        return np.split(flat, self.offsets[1:])
