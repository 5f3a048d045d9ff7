"""The audit record of one prediction and its msgpack encoding.

Layout (format 1): one msgpack map with short keys

    v      format version (1)             id     request id
    ts     request time, ms since epoch   model, ver, route
    ent    entity ids or nil              feat   {view: [values, status]}
    in     {name: tensor}                 out    {name: tensor}
    flags  [str]                          lat    {stage: µs}
    pair   primary request id or nil (on a feedback record: the labelled prediction's)

and every tensor a triple [dtype, shape, data]: dtype is numpy's `dtype.str` (byte order
included, e.g. "<f4"), data the raw C-order bytes. Object arrays (V2 BYTES) carry
dtype "|O" and a list of their bytes/str elements instead. Floats are never text, so a
replay sees bit for bit the values the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 1

Tensor = list[Any]


@dataclass(slots=True)
class AuditRecord:
    """What one prediction saw and answered; `features` holds the exact values used."""

    request_id: str
    ts_ms: int
    model: str
    version: str
    route: str  # "primary" | "canary" | "shadow" | an A/B arm | "feedback" (true labels)
    entity_ids: list[str] | None
    features: dict[str, tuple[np.ndarray, np.ndarray]]  # view -> (values (n, w), status (n,))
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    flags: list[str]
    latency_us: dict[str, int]  # stage -> µs: features, queue, infer, total
    paired_with: str | None = None  # the primary's request id, on shadow copies


# Not frozen: a frozen dataclass's __init__ costs ~2.5 µs more, on every submit.
@dataclass(slots=True)
class EncodedRecord:
    """An encoded record with the few fields a sink indexes, so no sink decodes it again."""

    payload: bytes
    model: str
    request_id: str
    version: str
    route: str
    flags: tuple[str, ...]
    ts_ms: int

    @classmethod
    def of(cls, record: AuditRecord) -> EncodedRecord:
        return cls(
            payload=encode_record(record),
            model=record.model,
            request_id=record.request_id,
            version=record.version,
            route=record.route,
            flags=tuple(record.flags),
            ts_ms=record.ts_ms,
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> EncodedRecord:
        head = unpack(payload)
        return cls(
            payload=payload,
            model=head["model"],
            request_id=head["id"],
            version=head["ver"],
            route=head["route"],
            flags=tuple(head["flags"]),
            ts_ms=head["ts"],
        )


def nbytes_estimate(record: AuditRecord) -> int:
    """The payload size give or take the msgpack framing; cheap, for refusing early."""
    total = 0
    for a in record.inputs.values():
        total += a.nbytes
    for a in record.outputs.values():
        total += a.nbytes
    for values, status in record.features.values():
        total += values.nbytes + status.nbytes
    return total


def encode_record(r: AuditRecord) -> bytes:
    payload: bytes = msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "id": r.request_id,
            "ts": r.ts_ms,
            "model": r.model,
            "ver": r.version,
            "route": r.route,
            "ent": r.entity_ids,
            "feat": {view: [_tensor(v), _tensor(s)] for view, (v, s) in r.features.items()},
            "in": {k: _tensor(a) for k, a in r.inputs.items()},
            "out": {k: _tensor(a) for k, a in r.outputs.items()},
            "flags": r.flags,
            "lat": r.latency_us,
            "pair": r.paired_with,
        },
        use_bin_type=True,
    )
    return payload


def decode_record(b: bytes) -> AuditRecord:
    d = unpack(b)
    return AuditRecord(
        request_id=d["id"],
        ts_ms=d["ts"],
        model=d["model"],
        version=d["ver"],
        route=d["route"],
        entity_ids=d["ent"],
        features={view: (tensor_array(v), tensor_array(s)) for view, (v, s) in d["feat"].items()},
        inputs={k: tensor_array(t) for k, t in d["in"].items()},
        outputs={k: tensor_array(t) for k, t in d["out"].items()},
        flags=d["flags"],
        latency_us=d["lat"],
        paired_with=d["pair"],
    )


def unpack(b: bytes) -> dict[str, Any]:
    d = msgpack.unpackb(b, raw=False)
    if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION:
        raise ValueError("not an audit record of format 1")
    return d


# dtype.str builds a new string on every call, a third of the encoding time of a small tensor.
_DTYPE_STR: dict[np.dtype[Any], str] = {}


def _tensor(a: np.ndarray) -> Tensor:
    name = _DTYPE_STR.get(a.dtype)
    if name is None:
        name = _dtype_str(a.dtype)
    if name == "|O":
        return [name, a.shape, a.ravel().tolist()]
    # tobytes() is C order whatever the strides, and cheaper than a memoryview for small arrays.
    return [name, a.shape, a.tobytes()]


def _dtype_str(dtype: np.dtype[Any]) -> str:
    if dtype.kind == "V":
        raise ValueError(f"structured dtype {dtype} cannot be audited")
    # String dtypes carry their width, so caching them could grow without bound.
    if dtype.kind not in "US":
        _DTYPE_STR[dtype] = dtype.str
    return dtype.str


def tensor_array(t: Tensor) -> np.ndarray:
    dtype, shape, data = t
    if dtype == "|O":
        out = np.empty(len(data), dtype=object)
        # Element-wise, so that numpy never tries to read a bytes element as a sequence.
        out[:] = data
        return out.reshape(shape)
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
