"""The packed row layout: round trips, the pinned wire format, and schema checks."""

from __future__ import annotations

import struct
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feature_store.codec import HEADER_SIZE, decode_rows, encode_row, encode_rows, row_key
from feature_store.errors import SchemaMismatch
from feature_store.views import FeatureSpec, FeatureView

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def make_view(
    width: int, dtype: str = "float32", name: str = "v", prefix: str = "f"
) -> FeatureView:
    features = [FeatureSpec(name=f"{prefix}{i}", default=i) for i in range(width)]
    return FeatureView.model_validate(
        {"name": name, "entity": "user_id", "dtype": dtype, "features": features}
    )


@st.composite
def views_and_rows(draw: st.DrawFn) -> tuple[FeatureView, npt.NDArray[Any], npt.NDArray[np.int64]]:
    dtype = draw(st.sampled_from(["float32", "int64"]))
    view = make_view(draw(st.integers(1, 40)), dtype)
    n = draw(st.integers(0, 12))
    elements = st.floats(width=32) if dtype == "float32" else INT64
    values = draw(hnp.arrays(view.np_dtype, (n, view.width), elements=elements))
    times = draw(hnp.arrays(np.int64, (n,), elements=INT64))
    return view, values, times


def same_bits(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    # Bitwise, so NaN payloads and -0.0 count too.
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@given(views_and_rows())
def test_rows_round_trip_bit_exact(
    case: tuple[FeatureView, npt.NDArray[Any], npt.NDArray[np.int64]],
) -> None:
    view, values, times = case
    decoded, present, decoded_times = decode_rows(view, encode_rows(view, values, times))
    assert same_bits(decoded, values)
    assert present.all() and len(present) == len(values)
    assert np.array_equal(decoded_times, times)


@given(views_and_rows(), st.data())
def test_missing_rows_decode_to_defaults_in_place(
    case: tuple[FeatureView, npt.NDArray[Any], npt.NDArray[np.int64]], data: st.DataObject
) -> None:
    view, values, times = case
    mask = data.draw(hnp.arrays(np.bool_, (len(values),)))
    encoded = encode_rows(view, values, times)
    blobs = [blob if keep else None for blob, keep in zip(encoded, mask, strict=True)]
    decoded, present, decoded_times = decode_rows(view, blobs)
    assert np.array_equal(present, mask)
    assert same_bits(decoded[mask], values[mask])
    assert same_bits(decoded[~mask], np.tile(view.defaults, (int((~mask).sum()), 1)))
    assert np.array_equal(decoded_times[mask], times[mask])
    assert not decoded_times[~mask].any()
    assert decoded.flags.writeable


def test_row_bytes_are_the_documented_layout() -> None:
    view = make_view(3)
    blob = encode_row(view, np.array([1.5, -2.0, 3.25]), event_time_ms=1_700_000_000_123)
    header = struct.pack("<BBHIq", 1, 0, 3, view.schema_hash, 1_700_000_000_123)
    assert len(header) == HEADER_SIZE
    assert blob == header + struct.pack("<3f", 1.5, -2.0, 3.25)


def test_int64_view_packs_int64_values() -> None:
    view = make_view(2, "int64")
    blob = encode_row(view, np.array([2**40, -7]), event_time_ms=5)
    assert blob[HEADER_SIZE:] == struct.pack("<2q", 2**40, -7)


def test_each_row_gets_its_own_event_time() -> None:
    view = make_view(1)
    blobs = encode_rows(view, np.zeros((3, 1)), np.array([10, 20, 30]))
    assert [struct.unpack_from("<q", blob, 8)[0] for blob in blobs] == [10, 20, 30]


def test_encoding_rejects_rows_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="rows of 3 values"):
        encode_rows(make_view(3), np.zeros((2, 4)), 0)


def test_encoding_floats_into_an_int64_view_is_refused_not_truncated() -> None:
    with pytest.raises(TypeError):
        encode_rows(make_view(2, "int64"), np.array([[1.5, 2.0]]), 0)


def test_rows_of_another_view_with_the_same_width_are_a_schema_mismatch() -> None:
    written = make_view(4, name="txn_stats", prefix="old_")
    reader = make_view(4, name="txn_stats", prefix="new_")
    blobs = [None, encode_row(written, np.ones(4), 0)]
    with pytest.raises(SchemaMismatch, match=r"'txn_stats'.*1 stored row\(s\)"):
        decode_rows(reader, blobs)


def test_rows_of_another_width_are_a_schema_mismatch() -> None:
    blob = encode_row(make_view(4), np.ones(4), 0)
    with pytest.raises(SchemaMismatch, match="'v': a stored row has 32 bytes"):
        decode_rows(make_view(5), [blob])


def test_rows_of_another_layout_version_are_a_schema_mismatch() -> None:
    view = make_view(2)
    blob = bytearray(encode_row(view, np.ones(2), 0))
    blob[0] = 2
    with pytest.raises(SchemaMismatch, match="layout 2"):
        decode_rows(view, [encode_row(view, np.ones(2), 0), bytes(blob)])


def test_row_key_puts_the_entity_in_a_hash_tag() -> None:
    view = make_view(1, name="txn_stats")
    assert row_key(view, "u42") == "fv:{user_id:u42}:txn_stats"
