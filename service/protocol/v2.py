"""Wire-neutral V2 inference request and response: what both fronts decode into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# V2 parameter values are strings, numbers or booleans.
Parameters = dict[str, Any]


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request; tensors are numpy arrays with the batch as first dim."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    # None means every output the model declares.
    outputs: list[str] | None = None
    # Outputs the client wants as raw bytes (the binary tensor extension / raw_output_contents).
    binary_outputs: frozenset[str] = frozenset()
    binary_all_outputs: bool = False
    # time.monotonic() by which the answer is due (client deadline or `timeout` parameter).
    deadline: float | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
