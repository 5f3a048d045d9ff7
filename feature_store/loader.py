"""Bulk loading: CSV or Parquet files streamed into a view.

Files are read in batches, so memory stays flat in the file size, and each batch is one
pipelined write. A file is checked against its view before any row is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from feature_store.errors import ViewConfigError
from feature_store.store import OnlineStore, epoch_ms
from feature_store.views import FeatureView

SUFFIXES = (".csv", ".parquet")
_ARROW_TYPES = {"float32": pa.float32(), "int64": pa.int64()}


async def load_file(
    store: OnlineStore,
    view: FeatureView,
    path: Path,
    *,
    entity_column: str | None = None,
    event_time_column: str | None = None,
    batch_rows: int = 10_000,
    progress: bool = True,
) -> int:
    """Load every row of a CSV or Parquet file into `view`; return the number of rows loaded.

    The file needs a column per feature of the view (other columns are ignored) and the entity
    id column (default: the view's entity name). The event time column, if named, holds epoch
    milliseconds or timestamps; without one every row gets the time the load started. A null
    feature value is stored as that feature's default.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    entity_column = entity_column or view.entity
    columns = [entity_column, *view.feature_names]
    if event_time_column is not None:
        columns.append(event_time_column)
    loaded_at = epoch_ms()
    loaded = 0
    with (
        _open(path, view, columns, batch_rows) as (batches, total),
        tqdm(total=total, unit="rows", desc=view.name, disable=not progress) as bar,
    ):
        for table in _rebatch(batches, batch_rows):
            entity_ids = _entity_ids(table.column(entity_column), path, entity_column)
            event_time_ms: int | npt.NDArray[np.int64] = loaded_at
            if event_time_column is not None:
                times = table.column(event_time_column)
                event_time_ms = _event_times(times, path, event_time_column)
            await store.write(view, entity_ids, _values(table, view, path), event_time_ms)
            loaded += table.num_rows
            bar.update(table.num_rows)
    return loaded


@contextmanager
def _open(
    path: Path, view: FeatureView, columns: list[str], batch_rows: int
) -> Iterator[tuple[Iterator[pa.RecordBatch], int | None]]:
    """Record batches of `columns` of the file, and its row count when the format knows it."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Pinned types keep leading zeros in ids, and stop a float column whose first block
        # happens to hold only integers from failing at its first decimal point later on.
        types = dict.fromkeys(view.feature_names, _ARROW_TYPES[view.dtype])
        types[columns[0]] = pa.string()
        options = pacsv.ConvertOptions(column_types=types)
        with pacsv.open_csv(path, convert_options=options) as reader:
            _require(path, view, columns, reader.schema.names)
            yield iter(reader), None
    elif suffix == ".parquet":
        with pq.ParquetFile(path) as parquet:
            _require(path, view, columns, parquet.schema_arrow.names)
            batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
            yield batches, parquet.metadata.num_rows
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}: use {' or '.join(SUFFIXES)}")


def _require(path: Path, view: FeatureView, columns: list[str], present: list[str]) -> None:
    missing = [name for name in columns if name not in present]
    if missing:
        raise ViewConfigError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} "
            f"needed to load feature view {view.name!r}"
        )


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches of whatever size the reader chose into tables of `size` rows."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - pending_rows, batch.num_rows)
            pending.append(batch.slice(0, take))
            pending_rows += take
            batch = batch.slice(take)
            if pending_rows == size:
                yield pa.Table.from_batches(pending)
                pending, pending_rows = [], 0
    if pending_rows:
        yield pa.Table.from_batches(pending)


def _entity_ids(column: pa.ChunkedArray, path: Path, name: str) -> list[str]:
    if column.null_count:
        raise ViewConfigError(f"{path}: column {name!r}: {column.null_count} null entity id(s)")
    ids: list[str] = pc.cast(column, pa.string()).to_pylist()
    return ids


def _values(table: pa.Table, view: FeatureView, path: Path) -> npt.NDArray[Any]:
    values = np.empty((table.num_rows, view.width), dtype=view.np_dtype)
    arrow_type = _ARROW_TYPES[view.dtype]
    for j, feature in enumerate(view.features):
        try:
            column = pc.cast(table.column(feature.name), arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ViewConfigError(
                f"{path}: column {feature.name!r}: not {view.dtype} as view {view.name!r} "
                f"declares: {exc}"
            ) from None
        filled = pc.fill_null(column, pa.scalar(feature.default, arrow_type))
        values[:, j] = filled.to_numpy()
    return values


def _event_times(column: pa.ChunkedArray, path: Path, name: str) -> npt.NDArray[np.int64]:
    if column.null_count:
        raise ViewConfigError(f"{path}: column {name!r}: {column.null_count} null event time(s)")
    if pa.types.is_timestamp(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64())
    elif not pa.types.is_integer(column.type):
        raise ViewConfigError(
            f"{path}: column {name!r}: event times must be epoch milliseconds or timestamps, "
            f"got {column.type}"
        )
    times: npt.NDArray[np.int64] = column.to_numpy().astype(np.int64, copy=False)
    return times
