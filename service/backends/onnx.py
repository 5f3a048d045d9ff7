"""The onnxruntime backend: one InferenceSession per model version, run in a thread pool."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
from pydantic import BaseModel, ConfigDict, Field

from service.backends.base import Backend, TensorSignature
from service.cost_model import CostModel
from service.protocol.datatypes import ONNX_TO_V2, V2_TO_NUMPY
from service.protocol.errors import BackendError, InvalidInput, Unavailable

logger = logging.getLogger(__name__)

CPU: Final = "CPUExecutionProvider"
Provider = Literal["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
_DEVICES = {
    CPU: "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}
# onnxruntime prefixes every message with its status code, e.g.
# "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "; clients need only what follows.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


class OnnxOptions(BaseModel):
    """The `onnxruntime` section of a model's config.yaml."""

    model_config = ConfigDict(extra="forbid")

    # In order of preference; those this onnxruntime build lacks are skipped with a warning.
    providers: list[Provider] = Field(default=[CPU], min_length=1)
    # One thread per session by default: concurrent batches of several versions already share the
    # cores through the executor, and per-session pools would oversubscribe them. 0 lets
    # onnxruntime take one thread per core.
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    # On the CPU, a batch whose measured run time is below this runs on the event loop: handing
    # it to a thread and back costs more than the run itself (each hand-off waits for the GIL,
    # up to Python's 5 ms switch interval while the loop is busy), and those waits were the
    # slow 1% of requests. 0: every batch in the thread pool.
    inline_below_us: int = Field(default=200, ge=0)


def _rows(inputs: dict[str, np.ndarray[Any, Any]]) -> int:
    """The batch's rows (its first input's first dimension); 0 for a scalar or no input."""
    first = next(iter(inputs.values()), None)
    return first.shape[0] if first is not None and first.ndim else 0


def _ort_message(exc: BaseException) -> str:
    """onnxruntime's message without its status prefix, on one line."""
    return " ".join(_ORT_PREFIX.sub("", str(exc)).split())


class OnnxBackend(Backend):
    def __init__(self, path: Path, options: OnnxOptions, executor: ThreadPoolExecutor) -> None:
        """Loads the model; BackendError (naming `path`) when onnxruntime cannot."""
        self.path = path
        self._executor = executor
        self._session: Any = _create_session(path, options)
        self._inputs = [self._tensor("input", arg) for arg in self._session.get_inputs()]
        self._outputs = [self._tensor("output", arg) for arg in self._session.get_outputs()]
        # Built once: session.run(None, ...) would rebuild the name list on every call.
        self._output_names = [spec.name for spec in self._outputs]
        self._device = _DEVICES.get(self._session.get_providers()[0], "cpu")
        self._inline_below_s = options.inline_below_us / 1e6 if self._device == "cpu" else 0.0
        self._cost = CostModel()

    def _tensor(self, kind: str, arg: Any) -> TensorSignature:
        datatype = ONNX_TO_V2.get(arg.type)
        if datatype is None:
            raise BackendError(
                f"{self.path}: {kind} '{arg.name}' has type {arg.type}, "
                "which the V2 protocol cannot carry"
            )
        # Symbolic ("batch") and unknown (None) dimensions are both dynamic.
        shape = tuple(dim if isinstance(dim, int) else -1 for dim in arg.shape)
        return TensorSignature(arg.name, datatype, shape)

    @property
    def device(self) -> str:
        return self._device

    def signature(self) -> tuple[list[TensorSignature], list[TensorSignature]]:
        return list(self._inputs), list(self._outputs)

    async def infer(
        self,
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        *,
        # A batch cannot be taken back from onnxruntime once it runs; the batcher has already
        # dropped the requests whose deadline passed before it did.
        deadline: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        if outputs is None:
            names: Sequence[str] = self._output_names
        else:
            unknown = [name for name in outputs if name not in self._output_names]
            if unknown:
                raise InvalidInput(
                    f"unknown output '{unknown[0]}'; available: {', '.join(self._output_names)}"
                )
            names = outputs
        rows = _rows(inputs)
        if self.runs_inline(rows):
            results, seconds = self._run(names, inputs)
        else:
            loop = asyncio.get_running_loop()
            # onnxruntime releases the GIL while it computes, so the event loop keeps serving.
            results, seconds = await loop.run_in_executor(self._executor, self._run, names, inputs)
        self._cost.observe(rows, seconds)
        return dict(zip(names, results, strict=True))

    def runs_inline(self, rows: int) -> bool:
        """Whether a batch of `rows` runs on the event loop: only sizes already measured (the
        fit says nothing beyond them) and only when expected to take under inline_below_us."""
        cost = self._cost
        return rows <= cost.largest and cost.seconds(rows) < self._inline_below_s

    def _run(
        self, names: Sequence[str], feed: dict[str, np.ndarray[Any, Any]]
    ) -> tuple[list[np.ndarray[Any, Any]], float]:
        """The outputs and the seconds onnxruntime took (hand-offs to a thread excluded)."""
        started = time.perf_counter()
        session = self._session
        if session is None:
            raise Unavailable("the model version has been unloaded")
        try:
            results: list[np.ndarray[Any, Any]] = session.run(names, feed)
        # ValueError: onnxruntime's Python layer refuses a feed that lacks a required input.
        except (InvalidArgument, ValueError) as exc:
            raise InvalidInput(f"the model refused its input: {_ort_message(exc)}") from None
        except Exception as exc:
            logger.error("%s: inference failed: %s", self.path, exc)
            raise BackendError(f"inference failed: {_ort_message(exc)}") from None
        return results, time.perf_counter() - started

    async def warmup(self) -> None:
        feed = {
            spec.name: np.zeros(
                tuple(1 if dim < 0 else dim for dim in spec.shape), V2_TO_NUMPY[spec.datatype]
            )
            for spec in self._inputs
        }
        await self.infer(feed)

    async def close(self) -> None:
        # A batch already running keeps its own reference and finishes; the session goes with it.
        self._session = None


def _create_session(path: Path, options: OnnxOptions) -> Any:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    available = set(ort.get_available_providers())
    providers: list[str] = [p for p in options.providers if p in available]
    missing = [p for p in options.providers if p not in available]
    if missing:
        logger.warning(
            "%s: execution providers %s are not available in this onnxruntime (available: %s)%s",
            path,
            ", ".join(missing),
            ", ".join(sorted(available)),
            "" if providers else "; falling back to CPUExecutionProvider",
        )
    providers = providers or [CPU]
    if providers != [CPU]:
        _preload_gpu_libraries()
    try:
        return _load_session(path, session_options, providers)
    except BackendError as exc:
        if providers == [CPU]:
            raise
        # A GPU provider can be present yet fail to start (driver, CUDA or cuDNN mismatch).
        logger.warning("%s; falling back to CPUExecutionProvider", exc)
    return _load_session(path, session_options, [CPU])


@cache
def _preload_gpu_libraries() -> None:
    """onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* wheels only when asked to (or after
    `import torch`): once per process, before the first GPU session. A no-op in the CPU
    package."""
    ort.preload_dlls()


def _load_session(path: Path, session_options: Any, providers: Sequence[str]) -> Any:
    try:
        session = ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as exc:
        raise BackendError(
            f"{path}: onnxruntime cannot load it with {', '.join(providers)}: {_ort_message(exc)}"
        ) from None
    # onnxruntime drops a provider that fails to start (TensorRT or cuDNN libraries missing, say)
    # and carries on with the next one, saying so only on stdout.
    running = session.get_providers()
    dropped = [p for p in providers if p not in running]
    if dropped:
        logger.warning(
            "%s: onnxruntime could not start %s; running on %s",
            path,
            ", ".join(dropped),
            ", ".join(running),
        )
    return session
