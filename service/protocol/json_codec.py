"""V2 JSON (with Triton's binary tensor extension) <-> numpy.

The binary extension is what tritonclient.http sends by default: the body is a JSON
header of `Inference-Header-Content-Length` bytes followed by the raw tensors, each
input naming its byte count in `parameters.binary_data_size`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from math import prod
from typing import Any

import numpy as np
import orjson

from service.protocol.datatypes import numpy_dtype, v2_datatype
from service.protocol.errors import InvalidInput
from service.protocol.limits import DEFAULT_LIMITS, Limits
from service.protocol.v2 import InferRequest, InferResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
_NUMERIC_KINDS = frozenset("biuf")


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def decode_infer_request(
    body: bytes, header_length: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> InferRequest:
    """Decode a V2 infer body; `header_length` is the binary extension's JSON size."""
    if header_length is None:
        doc, binary = loads(body), memoryview(b"")
    else:
        if not 0 <= header_length <= len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        doc, binary = loads(body[:header_length]), memoryview(body)[header_length:]
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")
    request_id = limits.request_id(doc.get("id"), "'id'")
    elements = 0

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInput(f"inputs[{i}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        shape = _shape(name, raw.get("shape"))
        # Counted from the shapes, before any tensor is built.
        elements += prod(shape)
        limits.tensor_elements(elements)
        datatype = raw.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}' needs a 'datatype'")
        params = raw.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} exceeds the binary body "
                    f"({len(binary) - offset} bytes left)"
                )
            inputs[name] = tensor_from_bytes(name, datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            if "data" not in raw:
                raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs[name] = tensor_from_json(name, datatype, shape, raw["data"])
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data were not claimed")

    outputs, binary_outputs = _requested_outputs(doc.get("outputs"))
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return InferRequest(
        inputs=inputs,
        id=request_id or None,
        parameters=parameters,
        outputs=outputs,
        binary_outputs=binary_outputs,
        binary_all_outputs=bool(parameters.get("binary_data_output", False)),
    )


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _requested_outputs(raw: Any) -> tuple[list[str] | None, frozenset[str]]:
    if raw is None:
        return None, frozenset()
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for i, out in enumerate(raw):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput(f"outputs[{i}] needs a 'name'")
        names.append(out["name"])
        params = out.get("parameters") or {}
        if isinstance(params, dict) and params.get("binary_data"):
            binary.add(out["name"])
    return names, frozenset(binary)


def tensor_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Row-major `data` (flat or nested) into an array of `shape` and `datatype`."""
    dtype = numpy_dtype(datatype)
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list")
    try:
        if dtype.kind == "O":
            arr = np.array(data, dtype=object)
            if not all(isinstance(x, str | bytes) for x in arr.flat):
                raise InvalidInput(f"input '{name}': BYTES data must be strings")
        else:
            # Looking at the values without a dtype first keeps strings like "1.5" or "NaN"
            # from being parsed into numbers, and floats from being truncated to integers.
            raw = np.array(data)
            kind = raw.dtype.kind if raw.size else dtype.kind
            # Object arrays come from nulls or from integers past 64 bits: only those pass.
            numbers = (
                all(isinstance(x, int) for x in raw.flat) if kind == "O" else kind in _NUMERIC_KINDS
            )
            if not numbers:
                raise InvalidInput(f"input '{name}': {datatype} data must be numbers")
            if datatype == "BOOL" and kind != "b":
                raise InvalidInput(f"input '{name}': BOOL data must be true/false")
            # numpy reads a mix of int64 and uint64 values as float64: fine if all integral.
            if dtype.kind in "iu" and kind == "f" and not (raw == np.trunc(raw)).all():
                raise InvalidInput(f"input '{name}': {datatype} data must be integers")
            # Integers convert from the Python values themselves: exact beyond 2**53, and
            # out-of-range values raise instead of wrapping.
            arr = np.array(data, dtype=dtype) if dtype.kind in "iu" else raw.astype(dtype)
    except OverflowError:
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}") from None
    except TypeError:
        raise InvalidInput(f"input '{name}': {datatype} data must be numbers") from None
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': data is not a rectangular array ({exc})") from None
    if arr.size != prod(shape):
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {prod(shape)} values, got {arr.size}"
        )
    return arr.reshape(shape)


def tensor_from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], raw: memoryview | bytes
) -> np.ndarray:
    """Raw little-endian tensor bytes (BYTES: 4-byte length + payload per element)."""
    dtype = numpy_dtype(datatype)
    count = prod(shape)
    if dtype.kind == "O":
        items = _split_bytes_elements(name, raw)
        if len(items) != count:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} needs {count} elements, got {len(items)}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _split_bytes_elements(name: str, raw: memoryview | bytes) -> list[bytes]:
    items: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise InvalidInput(f"input '{name}': truncated BYTES element length")
        (length,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + length > len(view):
            raise InvalidInput(f"input '{name}': BYTES element overruns the data")
        items.append(bytes(view[pos : pos + length]))
        pos += length
    return items


def bytes_elements(arr: np.ndarray) -> bytes:
    """Serialize a BYTES tensor as 4-byte little-endian length + payload per element."""
    parts: list[bytes] = []
    for item in arr.flat:
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def tensor_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.kind in ("O", "U", "S"):
        return bytes_elements(arr)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _json_data(arr: np.ndarray) -> Any:
    if arr.dtype.kind in ("O", "U", "S"):
        return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.flat]
    # orjson serializes contiguous numeric numpy arrays natively, no per-element Python.
    return np.ascontiguousarray(arr).reshape(-1)


def encode_infer_response(
    response: InferResponse,
    binary_outputs: frozenset[str] = frozenset(),
    binary_all: bool = False,
) -> tuple[bytes, int | None]:
    """Encode a response; returns (body, json header length if any tensor went binary)."""
    blobs: list[bytes] = []
    outputs: list[dict[str, Any]] = []
    for name, arr in response.outputs.items():
        out: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        if binary_all or name in binary_outputs:
            blob = tensor_bytes(arr)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = _json_data(arr)
        outputs.append(out)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def dumps(doc: Mapping[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
