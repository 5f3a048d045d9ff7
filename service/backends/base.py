"""What the gateway needs from a model runtime: async inference over a whole batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSignature:
    """One input or output as the runtime sees it; -1 marks a dynamic dimension."""

    name: str
    datatype: str  # a V2 datatype name, e.g. "FP32"
    shape: tuple[int, ...]


class Backend(ABC):
    """One loaded model version. Implementations keep inference off the event loop, except runs
    shorter than a hand-off to a thread and back (see OnnxOptions.inline_below_us)."""

    @abstractmethod
    async def infer(
        self,
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run one batch; answers the requested outputs (all of them when `outputs` is None).

        `deadline` is the batch's latest useful answer time, on the time.monotonic() clock;
        remote runtimes give up then (DeadlineExceeded), in-process ones may ignore it. Answers
        may be read-only views of the runtime's buffers: copy before writing to them.

        Raises service.protocol.errors.InvalidInput for tensors the model refuses and
        BackendError when the runtime fails on well-formed ones.
        """

    @abstractmethod
    def signature(self) -> tuple[list[TensorSignature], list[TensorSignature]]:
        """The model's (inputs, outputs) with full shapes, batch dimension included."""

    @abstractmethod
    async def warmup(self) -> None:
        """Run once so the first request does not pay for lazy allocation and kernel selection."""

    @abstractmethod
    async def close(self) -> None:
        """Release the runtime's resources; the backend is unusable afterwards."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where inference runs: "cpu", "cuda" or "tensorrt"."""

    @property
    def ready(self) -> bool:
        """Whether inference can succeed now; only a runtime in another process can say no."""
        return True
