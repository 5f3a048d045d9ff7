"""Bulk loading: CSV or Parquet files streamed into a view.

Files are read in batches, so memory stays flat in the file size, and each batch is one
pipelined write. A file is checked against its view before any row is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
from feature_store.event_times import EventTimes
from feature_store.store import EVENT_TIME_COLUMNS, OnlineStore, epoch_ms
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
    event_time_unit: str | None = None,
    batch_rows: int = 10_000,
    progress: bool = True,
) -> int:
    """Load every row of a CSV or Parquet file into `view`; return the number of rows loaded.

    The file needs a column per feature of the view (other columns are ignored) and the entity
    id column (default: the view's entity name). Event times come from `event_time_column`, else
    from the first of EVENT_TIME_COLUMNS the file has (feature_store.event_times: epoch
    numbers in `event_time_unit` or a unit their magnitude tells, or timestamps); without one
    every row gets the time the load started. A null feature value is stored as that feature's
    default. A bad value is refused with its row, counted from 1 after a CSV's header.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    entity_column = entity_column or view.entity
    columns = [entity_column, *view.feature_names]
    loaded_at = epoch_ms()
    loaded = 0
    with _open(path, view, columns, event_time_column, batch_rows) as (batches, total, found):
        _require(path, view, [*columns, *filter(None, [event_time_column])], found)
        time_column = event_time_column or next(
            (name for name in EVENT_TIME_COLUMNS if name in found), None
        )
        times = (
            None
            if time_column is None
            else EventTimes(path, time_column, event_time_unit, loaded_at)
        )
        with tqdm(total=total, unit="rows", desc=view.name, disable=not progress) as bar:
            for table in _rebatch(batches(time_column), batch_rows):
                first_row = loaded + 1
                entity_ids = _entity_ids(table.column(entity_column), path, entity_column)
                values = _values(table, view, path, first_row)
                event_time_ms: int | npt.NDArray[np.int64] = loaded_at
                if times is not None:
                    event_time_ms = times.to_ms(table.column(times.column), first_row)
                await store.write(view, entity_ids, values, event_time_ms)
                loaded += table.num_rows
                bar.update(table.num_rows)
    return loaded


Batches = Callable[[str | None], Iterator[pa.RecordBatch]]


@contextmanager
def _open(
    path: Path,
    view: FeatureView,
    columns: list[str],
    event_time_column: str | None,
    batch_rows: int,
) -> Iterator[tuple[Batches, int | None, list[str]]]:
    """The file's batches of `columns` and an event time column, its row count when the format
    knows it, and the names of its columns."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # Every column read as text and converted here, so that a bad value is reported with
        # its row (Arrow's CSV conversion names no row), and no type guessed from a first block
        # fails at the first different value later on.
        times = [event_time_column] if event_time_column else list(EVENT_TIME_COLUMNS)
        text = dict.fromkeys([*columns, *times], pa.string())
        options = pacsv.ConvertOptions(column_types=text, strings_can_be_null=True)
        with pacsv.open_csv(path, convert_options=options) as reader:

            def csv_batches(time_column: str | None) -> Iterator[pa.RecordBatch]:
                wanted = columns if time_column is None else [*columns, time_column]
                try:
                    for batch in reader:
                        yield batch.select(wanted)
                except pa.ArrowInvalid as exc:
                    raise ViewConfigError(f"{path}: {exc}") from None

            yield csv_batches, None, reader.schema.names
    elif suffix == ".parquet":
        with pq.ParquetFile(path) as parquet:

            def parquet_batches(time_column: str | None) -> Iterator[pa.RecordBatch]:
                wanted = columns if time_column is None else [*columns, time_column]
                batches: Iterator[pa.RecordBatch] = parquet.iter_batches(
                    batch_size=batch_rows, columns=wanted
                )
                return batches

            yield parquet_batches, parquet.metadata.num_rows, parquet.schema_arrow.names
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


def _values(table: pa.Table, view: FeatureView, path: Path, first_row: int) -> npt.NDArray[Any]:
    values = np.empty((table.num_rows, view.width), dtype=view.np_dtype)
    arrow_type = _ARROW_TYPES[view.dtype]
    for j, feature in enumerate(view.features):
        column = table.column(feature.name)
        try:
            typed = pc.cast(column, arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            i, value = _first_uncastable(column, arrow_type)
            raise ViewConfigError(
                f"{path}: row {first_row + i}: column {feature.name!r}: value {value!r}: "
                f"not {view.dtype} as view {view.name!r} declares"
            ) from None
        filled = pc.fill_null(typed, pa.scalar(feature.default, arrow_type))
        values[:, j] = filled.to_numpy()
    return values


def _first_uncastable(column: pa.ChunkedArray, arrow_type: pa.DataType) -> tuple[int, Any]:
    """The index and value of the first value of `column` that will not cast to the type;
    one at a time, so only on the way to an error."""
    for i, value in enumerate(column.to_pylist()):
        try:
            pc.cast(pa.array([value], column.type), arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return i, value
    raise AssertionError("the column cast as a whole failed, but every value casts")
