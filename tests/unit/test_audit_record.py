"""Audit record encoding: exact round trips, compactness, refusals."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.audit.record import AuditRecord, EncodedRecord, decode_record, encode_record


def make_record(
    i: int = 0,
    *,
    model: str = "fraud_mlp",
    version: str = "1",
    route: str = "primary",
    flags: list[str] | None = None,
    ts_ms: int = 1_700_000_000_000,
    rows: int = 1,
) -> AuditRecord:
    """A fraud_mlp-shaped record: two views of 16 features, one input (rows, 32), one score."""
    rng = np.random.default_rng(i)
    views = {
        name: (rng.random((rows, 16), dtype=np.float32), np.zeros(rows, np.uint8))
        for name in ("txn_stats", "user_profile")
    }
    return AuditRecord(
        request_id=f"req-{i:08d}",
        ts_ms=ts_ms + i,
        model=model,
        version=version,
        route=route,
        entity_ids=[f"user:{i + r}" for r in range(rows)],
        features=views,
        inputs={"input": np.concatenate([v for v, _ in views.values()], axis=1)},
        outputs={"score": rng.random((rows, 1), dtype=np.float32)},
        flags=flags or [],
        latency_us={"features": 180, "queue": 40, "infer": 95, "total": 350},
    )


def assert_same(a: AuditRecord, b: AuditRecord) -> None:
    assert (a.request_id, a.ts_ms, a.model, a.version, a.route) == (
        b.request_id,
        b.ts_ms,
        b.model,
        b.version,
        b.route,
    )
    assert (a.entity_ids, a.flags, a.latency_us, a.paired_with) == (
        b.entity_ids,
        b.flags,
        b.latency_us,
        b.paired_with,
    )
    assert a.features.keys() == b.features.keys()
    for view, (values, status) in a.features.items():
        assert_identical(values, b.features[view][0])
        assert_identical(status, b.features[view][1])
    for mine, theirs in ((a.inputs, b.inputs), (a.outputs, b.outputs)):
        assert mine.keys() == theirs.keys()
        for name, arr in mine.items():
            assert_identical(arr, theirs[name])


def assert_identical(x: np.ndarray, y: np.ndarray) -> None:
    """Same dtype, shape and bytes: NaNs and signed zeros included."""
    assert x.dtype == y.dtype
    assert x.shape == y.shape
    if x.dtype.kind == "O":
        assert x.tolist() == y.tolist()
    else:
        assert np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes()


numeric_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="="),
    hnp.complex_number_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness=">"),
    hnp.unicode_string_dtypes(min_len=1, max_len=4),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
tensors = numeric_dtypes.flatmap(lambda dt: hnp.arrays(dt, shapes))


@settings(max_examples=60, deadline=None)
@given(
    inputs=st.dictionaries(st.text(min_size=1, max_size=8), tensors, max_size=3),
    outputs=st.dictionaries(st.text(min_size=1, max_size=8), tensors, max_size=3),
    values=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=4)),
    entity_ids=st.none() | st.lists(st.text(max_size=10), max_size=3),
    flags=st.lists(st.text(max_size=10), max_size=3),
    paired_with=st.none() | st.text(max_size=10),
)
def test_encode_decode_round_trip_is_exact_for_any_dtype_and_shape(
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    values: np.ndarray,
    entity_ids: list[str] | None,
    flags: list[str],
    paired_with: str | None,
) -> None:
    status = np.arange(values.shape[0], dtype=np.uint8)
    r = AuditRecord(
        request_id="r",
        ts_ms=2**41,
        model="m",
        version="v",
        route="shadow",
        entity_ids=entity_ids,
        features={"view": (values, status)},
        inputs=inputs,
        outputs=outputs,
        flags=flags,
        latency_us={"total": 2**40},
        paired_with=paired_with,
    )
    assert_same(decode_record(encode_record(r)), r)


@given(st.lists(st.binary(max_size=8) | st.text(max_size=8), max_size=6))
def test_object_tensors_keep_their_bytes_and_str_elements(elements: list[bytes | str]) -> None:
    arr = np.empty(len(elements), dtype=object)
    arr[:] = elements
    r = make_record()
    r.inputs["raw"] = arr.reshape(len(elements), 1)
    back = decode_record(encode_record(r))
    assert back.inputs["raw"].shape == (len(elements), 1)
    assert back.inputs["raw"].ravel().tolist() == elements


def test_non_contiguous_tensors_are_written_in_c_order() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    r = make_record()
    r.outputs = {"t": base.T, "s": base[::2, 1::3]}
    back = decode_record(encode_record(r))
    np.testing.assert_array_equal(back.outputs["t"], base.T)
    np.testing.assert_array_equal(back.outputs["s"], base[::2, 1::3])


def test_tensors_are_raw_bytes_not_json_floats() -> None:
    r = make_record()
    size = len(encode_record(r))
    tensor_bytes = r.inputs["input"].nbytes * 2 + r.outputs["score"].nbytes + 2
    # Bytes for every float, plus names and a few hundred bytes of fields; JSON text of the
    # same floats would take ~3x the tensor bytes alone.
    assert tensor_bytes < size < tensor_bytes + 400


def test_encoded_record_carries_the_index_fields_of_its_payload() -> None:
    r = make_record(7, version="3", route="canary", flags=["out_of_range:score"])
    e = EncodedRecord.of(r)
    assert e == EncodedRecord.from_payload(e.payload)
    assert (e.model, e.request_id, e.version, e.route, e.flags, e.ts_ms) == (
        "fraud_mlp",
        "req-00000007",
        "3",
        "canary",
        ("out_of_range:score",),
        r.ts_ms,
    )


def test_structured_arrays_are_refused() -> None:
    r = make_record()
    r.outputs = {"s": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])}
    with pytest.raises(ValueError, match="structured"):
        encode_record(r)


def test_decoding_something_else_fails_loudly() -> None:
    with pytest.raises(ValueError, match="format 1"):
        decode_record(msgpack.packb({"v": 99}))
    with pytest.raises(ValueError, match="format 1"):
        decode_record(msgpack.packb([1, 2, 3]))
