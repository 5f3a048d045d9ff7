"""The packed row: how one (view, entity) row is laid out in the online store, version 1.

    offset  size  type  field
    0       1     u8    layout version (1)
    1       1     u8    flags (0; reserved, ignored by version-1 readers)
    2       2     u16   n_features
    4       4     u32   schema_hash of the view (crc32 of name, dtype, feature names)
    8       8     i64   event_time_ms (Unix epoch, milliseconds)
    16      8*n   n little-endian values of the view dtype (float32: 4*n)

All fields little-endian. Rows of one view have one size, so a batch of rows joined together
is a numpy structured array: encoding and decoding never loop over features in Python.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from feature_store.errors import SchemaMismatch
from feature_store.views import FeatureView

LAYOUT_VERSION = 1
HEADER_SIZE = 16


@lru_cache(maxsize=256)
def _row_dtype_for(value_dtype: str, width: int) -> np.dtype[np.void]:
    return np.dtype(
        [
            ("version", "u1"),
            ("flags", "u1"),
            ("n", "<u2"),
            ("schema", "<u4"),
            ("ts", "<i8"),
            ("values", value_dtype, (width,)),
        ]
    )


def row_dtype(view: FeatureView) -> np.dtype[np.void]:
    """The structured dtype of one packed row of `view`."""
    return _row_dtype_for(view.np_dtype.str, view.width)


@lru_cache(maxsize=256)
def _header_prefix(width: int, schema_hash: int) -> bytes:
    return struct.pack("<BBHI", LAYOUT_VERSION, 0, width, schema_hash)


def row_key(view: FeatureView, entity_id: str) -> str:
    """``fv:{<entity>:<id>}:<view>``: the hash tag puts every view of an entity in one slot."""
    return f"fv:{{{view.entity}:{entity_id}}}:{view.name}"


def encode_rows(
    view: FeatureView,
    values: npt.ArrayLike,
    event_time_ms: int | npt.NDArray[np.integer[Any]],
) -> list[bytes]:
    """Pack each row of a (n, width) array; `event_time_ms` is one time or one per row."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] != view.width:
        raise ValueError(
            f"feature view {view.name!r} takes rows of {view.width} values, got shape {array.shape}"
        )
    # same_kind lets float64 in for a float32 view but refuses floats for an int64 view,
    # where a silent truncation would corrupt the row.
    array = array.astype(view.np_dtype, casting="same_kind", copy=False)
    dtype = row_dtype(view)
    rows = np.empty(array.shape[0], dtype=dtype)
    rows["version"] = LAYOUT_VERSION
    rows["flags"] = 0
    rows["n"] = view.width
    rows["schema"] = view.schema_hash
    rows["ts"] = event_time_ms
    rows["values"] = array
    # A void array's tolist() is one bytes object per row, sliced in C.
    return cast(list[bytes], rows.view(np.dtype((np.void, dtype.itemsize))).tolist())


def _is_current(blob: bytes | None, size: int, view: FeatureView) -> bool:
    return (
        blob is not None
        and len(blob) == size
        and blob.startswith(_header_prefix(view.width, view.schema_hash))
    )


def encode_row(view: FeatureView, values: npt.ArrayLike, event_time_ms: int) -> bytes:
    """Pack one row of `view.width` values."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"encode_row takes one row (1-D values), got shape {array.shape}")
    return encode_rows(view, array[np.newaxis, :], event_time_ms)[0]


def decode_rows(
    view: FeatureView, blobs: Sequence[bytes | None]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Unpack rows of `view`; ``None`` marks a missing row.

    Returns ``(values, present, event_time_ms)``: values (n, width) of the view dtype, with the
    view defaults where a row is missing; present (n,) bool; event_time_ms (n,) int64, 0 where
    missing. Raises SchemaMismatch if any row was written for another layout or schema.
    """
    n = len(blobs)
    dtype = row_dtype(view)
    if all(_is_current(blob, dtype.itemsize, view) for blob in blobs):
        # The common case, a handful of numpy calls: every row there, in this view's layout.
        rows = np.frombuffer(b"".join(cast(list[bytes], blobs)), dtype=dtype)
        return rows["values"].copy(), np.ones(n, dtype=np.bool_), rows["ts"].astype(np.int64)
    present = np.fromiter((blob is not None for blob in blobs), dtype=np.bool_, count=n)
    found: list[bytes] = [blob for blob in blobs if blob is not None]
    values = np.empty((n, view.width), dtype=view.np_dtype)
    event_time_ms = np.zeros(n, dtype=np.int64)
    if len(found) < n:
        values[~present] = view.defaults
    if not found:
        return values, present, event_time_ms

    sizes = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
    if (sizes != dtype.itemsize).any():
        size = int(sizes[sizes != dtype.itemsize][0])
        raise SchemaMismatch(
            f"feature view {view.name!r}: a stored row has {size} bytes, the view's rows "
            f"have {dtype.itemsize} ({view.width} {view.dtype} features); "
            "the view changed since the rows were written: reload them"
        )
    rows = np.frombuffer(b"".join(found), dtype=dtype)
    ok = (
        (rows["version"] == LAYOUT_VERSION)
        & (rows["n"] == view.width)
        & (rows["schema"] == view.schema_hash)
    )
    if not ok.all():
        bad = rows[~ok][0]
        raise SchemaMismatch(
            f"feature view {view.name!r}: {int((~ok).sum())} stored row(s) were written for "
            f"another schema (row: layout {bad['version']}, {bad['n']} features, "
            f"schema {int(bad['schema']):#010x}; view: layout {LAYOUT_VERSION}, "
            f"{view.width} features, schema {view.schema_hash:#010x}); reload the rows"
        )
    if len(found) == n:
        values[:] = rows["values"]
        event_time_ms[:] = rows["ts"]
    else:
        values[present] = rows["values"]
        event_time_ms[present] = rows["ts"]
    return values, present, event_time_ms
