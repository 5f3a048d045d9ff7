"""The V2 JSON codec and Triton's binary tensor extension."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.protocol.datatypes import V2_TO_NUMPY, v2_datatype
from service.protocol.errors import InvalidInput
from service.protocol.json_codec import (
    HEADER_LENGTH,
    bytes_elements,
    decode_infer_request,
    encode_infer_response,
    tensor_bytes,
    tensor_from_bytes,
)
from service.protocol.v2 import InferResponse

NUMERIC = [name for name, dt in V2_TO_NUMPY.items() if dt.kind in "biuf" and name != "FP16"]


def arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    dtype = V2_TO_NUMPY[datatype]
    elements = None
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, width=dtype.itemsize * 8)
    return hnp.arrays(
        dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=elements
    )


@given(st.sampled_from(NUMERIC).flatmap(lambda d: st.tuples(st.just(d), arrays(d))))
def test_json_tensors_round_trip(case: tuple[str, np.ndarray]) -> None:
    datatype, arr = case
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": datatype, "shape": list(arr.shape), "data": arr.tolist()}
            ]
        }
    )
    got = decode_infer_request(body).inputs["x"]
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


@given(st.sampled_from(NUMERIC).flatmap(lambda d: st.tuples(st.just(d), arrays(d))))
def test_binary_tensors_round_trip(case: tuple[str, np.ndarray]) -> None:
    datatype, arr = case
    raw = tensor_bytes(arr)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    got = decode_infer_request(header + raw, len(header)).inputs["x"]
    np.testing.assert_array_equal(got, arr)


@given(st.lists(st.text(max_size=8), min_size=1, max_size=6))
def test_bytes_elements_round_trip(items: list[str]) -> None:
    arr = np.array(items, dtype=object)
    raw = bytes_elements(arr)
    got = tensor_from_bytes("x", "BYTES", (len(items),), raw)
    assert [b.decode() for b in got] == items


def test_bytes_layout_is_length_prefixed() -> None:
    raw = bytes_elements(np.array(["ab", "c"], dtype=object))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


def test_nested_and_flat_data_decode_alike() -> None:
    flat = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[2,2],"data":[1,2,3,4]}]}'
    nested = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[2,2],"data":[[1,2],[3,4]]}]}'
    np.testing.assert_array_equal(
        decode_infer_request(flat).inputs["x"], decode_infer_request(nested).inputs["x"]
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "JSON object"),
        (b'{"inputs":[{"datatype":"FP32","shape":[1],"data":[1]}]}', "needs a 'name'"),
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[-1],"data":[1]}]}', "non-negative"),
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[[1],[2,3]]}]}', "rect"),
        (b'{"inputs":[{"name":"x","datatype":"BOOL","shape":[1],"data":[1]}]}', "true/false"),
        (b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":[1]}]}', "strings"),
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}', "neither 'data'"),
        (b'{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"data":[1.5]}]}', "integers"),
        (b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[300]}]}', "out of range"),
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1, null]}]}', "numbers"),
        (b'{"inputs":[{"name":"x","datatype":"INT64","shape":[2],"data":[1, null]}]}', "numbers"),
    ],
)
def test_malformed_requests_are_invalid_input(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request(body)


def test_binary_size_past_the_body_is_invalid() -> None:
    header = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],'
        b'"parameters":{"binary_data_size":8}}]}'
    )
    with pytest.raises(InvalidInput, match="exceeds the binary body"):
        decode_infer_request(header + b"\0" * 4, len(header))
    with pytest.raises(InvalidInput, match=HEADER_LENGTH):
        decode_infer_request(header, len(header) + 1)


def test_requested_binary_outputs_go_after_the_json_header() -> None:
    y = np.arange(4, dtype=np.float32).reshape(2, 2)
    z = np.array([1, 2], dtype=np.int64)
    body, size = encode_infer_response(
        InferResponse("m", "1", {"y": y, "z": z}, id="7"), frozenset({"y"})
    )
    assert size is not None
    doc = orjson.loads(body[:size])
    assert doc["id"] == "7"
    assert doc["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 2],
        "parameters": {"binary_data_size": 16},
    }
    assert doc["outputs"][1]["data"] == [1, 2]
    np.testing.assert_array_equal(np.frombuffer(body[size:], np.float32).reshape(2, 2), y)


def test_json_response_without_binary_has_no_header_length() -> None:
    body, size = encode_infer_response(InferResponse("m", "1", {"y": np.ones((1, 1), np.float32)}))
    assert size is None
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0]
    assert v2_datatype(np.dtype(np.float32)) == "FP32"
