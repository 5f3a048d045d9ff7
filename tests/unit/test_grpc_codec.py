"""The gRPC codec against tritonclient's own tensor encoding and decoding."""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor

from service.protocol import errors
from service.protocol.datatypes import V2_TO_NUMPY, v2_datatype
from service.protocol.errors import InvalidInput
from service.protocol.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    grpc_status,
    stream_error,
)
from service.protocol.v2 import InferResponse

NUMERIC = [dt for name, dt in V2_TO_NUMPY.items() if name != "BYTES"]
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
numeric_arrays = st.sampled_from(NUMERIC).flatmap(lambda dt: hnp.arrays(dt, shapes))
bytes_arrays = shapes.flatmap(
    lambda shape: hnp.arrays(np.dtype(object), shape, elements=st.binary(max_size=12))
)
arrays = st.one_of(numeric_arrays, bytes_arrays)


def raw_request(*tensors: tuple[str, np.ndarray]) -> Any:
    """A request as tritonclient.grpc builds one: every input in raw_input_contents."""
    msg = service_pb2.ModelInferRequest(model_name="m")
    for name, arr in tensors:
        msg.inputs.add(name=name, datatype=v2_datatype(arr.dtype), shape=arr.shape)
        if arr.dtype.kind == "O":
            msg.raw_input_contents.append(serialize_byte_tensor(arr).item())
        else:
            msg.raw_input_contents.append(arr.tobytes())
    return msg


def typed_request(name: str, arr: np.ndarray, datatype: str | None = None) -> Any:
    msg = service_pb2.ModelInferRequest(model_name="m")
    datatype = datatype or v2_datatype(arr.dtype)
    tensor = msg.inputs.add(name=name, datatype=datatype, shape=arr.shape)
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(arr.ravel().tolist())
    return msg


def over_the_wire(msg: Any) -> Any:
    return type(msg).FromString(msg.SerializeToString())


# ---- round trips ------------------------------------------------------------------------


@given(arrays)
def test_raw_input_decodes_to_the_array_tritonclient_sent(arr: np.ndarray) -> None:
    decoded = decode_infer_request(over_the_wire(raw_request(("x", arr))))
    got = decoded.inputs["x"]
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert decoded.binary_all_outputs


@given(arrays.filter(lambda a: a.dtype != np.float16))
def test_typed_input_decodes_to_the_same_array(arr: np.ndarray) -> None:
    decoded = decode_infer_request(over_the_wire(typed_request("x", arr)))
    got = decoded.inputs["x"]
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert not decoded.binary_all_outputs


@given(arrays)
def test_raw_output_reads_back_with_tritonclient(arr: np.ndarray) -> None:
    response = InferResponse(model_name="m", model_version="1", outputs={"y": arr}, id="r")
    result = InferResult(over_the_wire(encode_infer_response(response, raw=True)))
    got = result.as_numpy("y")
    np.testing.assert_array_equal(got, arr)
    assert result.get_response().id == "r"


@given(arrays.filter(lambda a: a.dtype != np.float16))
def test_typed_output_fills_the_datatype_field(arr: np.ndarray) -> None:
    response = InferResponse(model_name="m", model_version="1", outputs={"y": arr})
    msg = over_the_wire(encode_infer_response(response, raw=False))
    assert not msg.raw_output_contents
    (out,) = msg.outputs
    assert out.datatype == v2_datatype(arr.dtype) and list(out.shape) == list(arr.shape)
    values = getattr(out.contents, TYPED_FIELD[out.datatype])
    np.testing.assert_array_equal(np.array(values, dtype=arr.dtype).reshape(arr.shape), arr)


def test_an_fp16_output_turns_the_whole_response_raw() -> None:
    outputs = {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.float16)}
    response = InferResponse(model_name="m", model_version="1", outputs=outputs)
    msg = encode_infer_response(response, raw=False)
    assert len(msg.raw_output_contents) == 2
    assert not any(out.HasField("contents") for out in msg.outputs)


def test_request_fields_are_carried() -> None:
    msg = raw_request(("x", np.zeros((1, 2), np.float32)))
    msg.id = "req-7"
    msg.outputs.add(name="y")
    msg.parameters["priority"].int64_param = 2
    msg.parameters["flag"].bool_param = True
    msg.parameters["tag"].string_param = "a"
    deadline = time.monotonic() + 1
    decoded = decode_infer_request(msg, deadline)
    assert decoded.id == "req-7" and decoded.outputs == ["y"] and decoded.deadline == deadline
    assert decoded.parameters == {"priority": 2, "flag": True, "tag": "a"}


def test_absent_id_and_outputs_mean_none() -> None:
    decoded = decode_infer_request(raw_request(("x", np.zeros((1, 2), np.float32))))
    assert decoded.id is None and decoded.outputs is None and decoded.deadline is None


def test_response_parameters_keep_their_types() -> None:
    params = {"b": True, "i": 3, "f": 0.5, "s": "x"}
    response = InferResponse(model_name="m", model_version="1", outputs={}, parameters=params)
    msg = encode_infer_response(response, raw=True)
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in msg.parameters.items()}
    assert kinds == {
        "b": "bool_param",
        "i": "int64_param",
        "f": "double_param",
        "s": "string_param",
    }


def test_stream_error_names_the_request() -> None:
    msg = stream_error("boom", "req-3")
    assert msg.error_message == "boom" and msg.infer_response.id == "req-3"


# ---- refusals ---------------------------------------------------------------------------


def fp32(rows: int = 1) -> np.ndarray:
    return np.zeros((rows, 4), np.float32)


def case_raw_short() -> Any:
    msg = raw_request(("x", fp32()))
    msg.raw_input_contents[0] = msg.raw_input_contents[0][:-4]
    return msg


def case_raw_count() -> Any:
    msg = raw_request(("x", fp32()), ("z", fp32()))
    del msg.raw_input_contents[1]
    return msg


def case_raw_and_typed() -> Any:
    msg = raw_request(("x", fp32()))
    msg.inputs[0].contents.fp32_contents.extend([0.0] * 4)
    return msg


def case_typed_count() -> Any:
    msg = typed_request("x", fp32())
    msg.inputs[0].shape[0] = 2
    return msg


def case_wrong_field() -> Any:
    msg = typed_request("x", np.zeros((1, 4), np.float64))
    msg.inputs[0].datatype = "FP32"
    return msg


def case_duplicate() -> Any:
    return raw_request(("x", fp32()), ("x", fp32()))


def case_negative_dim() -> Any:
    msg = raw_request(("x", fp32()))
    msg.inputs[0].shape[0] = -1
    return msg


def case_unnamed() -> Any:
    return raw_request(("", fp32()))


REFUSED = [
    ("no inputs", lambda: service_pb2.ModelInferRequest(model_name="m"), "at least one input"),
    ("raw size mismatch", case_raw_short, "needs 16 bytes, got 12"),
    ("raw count mismatch", case_raw_count, "1 entries for 2 inputs"),
    ("raw and typed", case_raw_and_typed, "'contents' must be empty"),
    ("typed count mismatch", case_typed_count, "needs 8 values, got 4"),
    ("typed field of another type", case_wrong_field, "goes in fp32_contents, not fp64_contents"),
    ("typed out of range", lambda: typed_request("x", np.array([300]), "INT8"), "out of range"),
    ("typed FP16", lambda: _fp16(), "send raw_input_contents"),
    ("unknown datatype", lambda: _datatype("FLOAT"), "unsupported datatype 'FLOAT'"),
    ("duplicate input", case_duplicate, "appears twice"),
    ("negative dimension", case_negative_dim, "negative dimension"),
    ("unnamed input", case_unnamed, "needs a 'name'"),
]


def _fp16() -> Any:
    msg = service_pb2.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP16", shape=[1])
    return msg


def _datatype(datatype: str) -> Any:
    msg = raw_request(("x", fp32()))
    msg.inputs[0].datatype = datatype
    return msg


@pytest.mark.parametrize(("case", "build", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_malformed_requests_are_invalid_input(case: str, build: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request(build())


# ---- status codes -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", errors.GatewayError.__subclasses__())
def test_every_gateway_error_has_a_grpc_status(cls: type[errors.GatewayError]) -> None:
    code, message = grpc_status(cls("detail"))
    assert code == grpc.StatusCode[cls.grpc_code] and message == "detail"


def test_status_codes_the_protocol_names() -> None:
    assert grpc_status(errors.Overloaded("full"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(errors.DeadlineExceeded("late"))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_status(errors.Unavailable("down"))[0] == grpc.StatusCode.UNAVAILABLE


def test_an_unexpected_error_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        code, message = grpc_status(KeyError("secret detail"))
    assert code == grpc.StatusCode.INTERNAL and message == "internal error"
    assert "secret detail" in caplog.text
