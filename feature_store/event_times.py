"""Event times of a loaded file, to epoch milliseconds: numbers in epoch seconds, milliseconds,
microseconds or nanoseconds, ISO 8601 text with a zone offset, or Parquet timestamps.

A number's unit is the one declared, or else the one its magnitude makes plausible: the store
takes event times from 2000-01-01 to a day ahead (`event_time_window`), and that window counted
in seconds, milliseconds, microseconds and nanoseconds gives four ranges far apart, so a
plausible number belongs to one of them only. The file's first event time fixes the unit for
the rest of it; a time outside the window is refused with its row, before the store sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.errors import ViewConfigError
from feature_store.store import EVENT_TIME_UNITS as UNITS
from feature_store.store import event_time_window

_WINDOW = "2000-01-01 .. a day from now"
_UTC_MS = pa.timestamp("ms", tz="UTC")


class EventTimes:
    """Reads one file's event-time column, batch after batch, into epoch milliseconds."""

    def __init__(self, path: Path, column: str, unit: str | None, now_ms: int) -> None:
        if unit is not None and unit not in UNITS:
            raise ValueError(f"event time unit {unit!r}: expected one of {', '.join(UNITS)}")
        self.path = path
        self.column = column
        self.unit = unit
        self._window = event_time_window(now_ms)

    def to_ms(self, values: pa.ChunkedArray, first_row: int) -> npt.NDArray[np.int64]:
        """The batch's event times; `first_row` numbers its first row (from 1) in messages."""
        if values.null_count:
            row = first_row + _first(pc.is_null(values))
            raise self._error(row, None, "no event time")
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = self._parse_text(values, first_row)
        if pa.types.is_timestamp(values.type):
            ms: npt.NDArray[np.int64] = pc.cast(
                pc.cast(values, pa.timestamp("ms")), pa.int64()
            ).to_numpy()
            self._check(ms, values, first_row, "ms")
            return ms
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            raise ViewConfigError(
                f"{self.path}: column {self.column!r}: event times must be epoch numbers or "
                f"timestamps, got {values.type}"
            )
        raw = values.to_numpy()
        unit = self.unit = self.unit or self._unit_of(raw[0], values, first_row)
        self._check(raw, values, first_row, unit)
        multiplier, divisor = UNITS[unit]
        converted: npt.NDArray[np.int64] = (
            np.rint(raw * multiplier / divisor).astype(np.int64)
            if raw.dtype.kind == "f"
            else raw.astype(np.int64) * multiplier // divisor
        )
        return converted

    def _parse_text(self, values: pa.ChunkedArray, first_row: int) -> pa.ChunkedArray:
        """Text as numbers where every value is one, else as ISO 8601 times with an offset."""
        for target in (pa.int64(), pa.float64(), _UTC_MS):
            try:
                return pc.cast(values, target)
            except pa.ArrowInvalid:
                continue
        texts = values.to_pylist()
        for i, text in enumerate(texts):
            for target in (pa.float64(), _UTC_MS):
                try:
                    pc.cast(pa.array([text]), target)
                    break
                except pa.ArrowInvalid:
                    continue
            else:
                raise self._error(
                    first_row + i,
                    text,
                    "neither an epoch number nor an ISO 8601 time with a zone offset (Z, +02:00)",
                )
        raise self._error(first_row, texts[0], "numbers and ISO times mixed in one column")

    def _unit_of(self, value: Any, values: pa.ChunkedArray, first_row: int) -> str:
        for unit in UNITS:
            low, high = self._raw_window(unit)
            if low <= value <= high:
                return unit
        raise self._error(
            first_row,
            value,
            f"no plausible epoch time in {', '.join(UNITS)} ({_WINDOW}); "
            "declare the unit to read it as one",
        )

    def _check(
        self, raw: npt.NDArray[Any], values: pa.ChunkedArray, first_row: int, unit: str
    ) -> None:
        low, high = self._raw_window(unit)
        outside = (raw < low) | (raw > high)
        if outside.any():
            i = int(np.argmax(outside))
            raise self._error(
                first_row + i,
                values[i].as_py(),
                f"outside {_WINDOW} read in {unit}",
            )

    def _raw_window(self, unit: str) -> tuple[float, float]:
        multiplier, divisor = UNITS[unit]
        earliest, latest = self._window
        return earliest * divisor / multiplier, latest * divisor / multiplier

    def _error(self, row: int, value: Any, what: str) -> ViewConfigError:
        shown = "" if value is None else f": value {value!r}"
        return ViewConfigError(f"{self.path}: row {row}: column {self.column!r}{shown}: {what}")


def _first(mask: pa.ChunkedArray) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))
