"""Open Inference Protocol gRPC messages <-> numpy and the wire-neutral V2 types.

The messages are the ones generated from Triton's `grpc_service.proto` and shipped in
tritonclient (`tritonclient.grpc.service_pb2`); they carry no type hints, so a message is
`Message` (Any) here and what comes out of a decoder is plain Python and numpy.

A tensor travels either typed (`contents.fp32_contents` ...) or raw (`raw_input_contents`,
little-endian bytes, BYTES as a 4-byte length + payload per element), never both in one
request. A request that came raw is answered raw; a typed one typed, unless an output has no
typed field (FP16), in which case every output goes raw as the protocol requires.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from math import prod
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from service.protocol.datatypes import numpy_dtype, v2_datatype
from service.protocol.errors import GatewayError, InvalidInput
from service.protocol.json_codec import tensor_bytes, tensor_from_bytes
from service.protocol.limits import DEFAULT_LIMITS, Limits
from service.protocol.v2 import InferRequest, InferResponse, Parameters

log = logging.getLogger(__name__)

# A generated protobuf message: the modules are untyped.
Message = Any

# V2 datatype -> the InferTensorContents field that carries it and that field's wire dtype.
_CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}


# ---- requests ---------------------------------------------------------------------------


def decode_infer_request(
    msg: Message, deadline: float | None = None, limits: Limits = DEFAULT_LIMITS
) -> InferRequest:
    """A ModelInferRequest as an InferRequest; `deadline` is the client's, on time.monotonic()."""
    tensors = msg.inputs
    if not tensors:
        raise InvalidInput("request must have at least one input")
    request_id = limits.request_id(msg.id, "'id'")
    # Counted from the shapes, before any tensor is built.
    limits.tensor_elements(sum(prod(tensor.shape) for tensor in tensors))
    raw = msg.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; "
            "give one per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}': 'contents' must be empty when raw_input_contents is used"
                )
            inputs[name] = tensor_from_bytes(name, tensor.datatype, shape, raw[i])
        else:
            inputs[name] = tensor_from_contents(name, tensor.datatype, shape, tensor.contents)
    return InferRequest(
        inputs=inputs,
        id=request_id or None,
        parameters=decode_parameters(msg.parameters),
        outputs=[out.name for out in msg.outputs] or None,
        binary_all_outputs=bool(raw),
        deadline=deadline,
    )


def tensor_from_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: Message
) -> np.ndarray:
    """A tensor from the typed field of InferTensorContents that its datatype names."""
    dtype = numpy_dtype(datatype)
    field, wire = _contents_field(name, datatype)
    present = [descriptor.name for descriptor, _ in contents.ListFields()]
    stray = [f for f in present if f != field]
    if stray:
        raise InvalidInput(f"input '{name}': {datatype} data goes in {field}, not {stray[0]}")
    values = getattr(contents, field)
    count = prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} values, got {len(values)}"
        )
    if dtype.kind == "O":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wide = np.fromiter(values, dtype=wire, count=count)
    if wire == dtype:
        return wide.reshape(shape)
    # INT8/16 and UINT8/16 travel in 32-bit fields: a value that does not fit is refused,
    # not wrapped around.
    arr = wide.astype(dtype)
    if not np.array_equal(arr, wide):
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return arr.reshape(shape)


def _contents_field(name: str, datatype: str) -> tuple[str, np.dtype[Any]]:
    try:
        return _CONTENTS[datatype]
    except KeyError:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send raw_input_contents"
        ) from None


def decode_parameters(params: Mapping[str, Message]) -> Parameters:
    """map<string, InferParameter> as plain Python values."""
    decoded: Parameters = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        decoded[key] = None if choice is None else getattr(param, choice)
    return decoded


# ---- responses --------------------------------------------------------------------------


def encode_infer_response(response: InferResponse, raw: bool) -> Message:
    """A ModelInferResponse; `raw` asks for raw_output_contents instead of typed contents."""
    msg = service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    encode_parameters(msg.parameters, response.parameters)
    outputs = [(name, arr, v2_datatype(arr.dtype)) for name, arr in response.outputs.items()]
    raw = raw or any(datatype not in _CONTENTS for _, _, datatype in outputs)
    for name, arr, datatype in outputs:
        tensor = msg.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if raw:
            msg.raw_output_contents.append(tensor_bytes(arr))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                x if isinstance(x, bytes) else str(x).encode() for x in arr.flat
            )
        else:
            # extend() with a list is several times faster than with an ndarray.
            getattr(tensor.contents, _CONTENTS[datatype][0]).extend(arr.ravel().tolist())
    return msg


def encode_parameters(target: Message, params: Parameters) -> None:
    """Plain values into a map<string, InferParameter>."""
    for key, value in params.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)


def stream_error(message: str, request_id: str) -> Message:
    """A ModelStreamInferResponse that reports a failed request; the stream stays open."""
    return service_pb2.ModelStreamInferResponse(
        error_message=message, infer_response=service_pb2.ModelInferResponse(id=request_id)
    )


# ---- errors -----------------------------------------------------------------------------


def grpc_status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """What a gRPC client is told of a failure, in a unary call's status or a stream's message."""
    if isinstance(exc, GatewayError):
        return grpc.StatusCode[exc.grpc_code], exc.message
    log.error("unhandled error in a gRPC call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"
