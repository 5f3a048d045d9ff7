"""Per-version inference statistics in Triton's shape (its statistics extension).

Plain integer counters on each loaded version, bumped by the batcher and the pipeline: nothing
is allocated per request, and reading them is free until a client asks. They count this process
only, as Triton's count one server: with `--workers N` each worker answers with its own share.
A reloaded version starts again from zero, as a reloaded Triton model does.
"""

from __future__ import annotations

import time
from typing import Any

# Triton's InferStatistics durations this gateway measures. compute_input is the features
# stage (store read and assembly), compute_infer the backend call of the request's batch,
# compute_output the guard; cache_hit and cache_miss stay zero: there is no response cache.
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
SUCCESS, FAIL, QUEUE, COMPUTE_INPUT, COMPUTE_INFER, COMPUTE_OUTPUT = range(len(DURATIONS))


class InferenceStatistics:
    """Counts and summed nanoseconds per duration, batches and rows run, last inference."""

    __slots__ = (
        "_counts",
        "_ns",
        "execution_count",
        "inference_count",
        "last_inference_ms",
    )

    def __init__(self) -> None:
        # Indexed as DURATIONS: one preallocated list each, so a request only adds ints.
        self._counts = [0] * len(DURATIONS)
        self._ns = [0] * len(DURATIONS)
        self.execution_count = 0
        self.inference_count = 0
        self.last_inference_ms = 0

    def _add(self, index: int, seconds: float, count: int = 1) -> None:
        self._counts[index] += count
        self._ns[index] += round(seconds * 1e9) * count

    def queued(self, seconds: float) -> None:
        """A request left the batcher's queue after `seconds`."""
        self._add(QUEUE, seconds)

    def executed(self, seconds: float, rows: int, requests: int) -> None:
        """One backend call of `rows` rows for `requests` requests: each request's
        compute_infer is the whole call, as Triton counts a batch's members."""
        self.execution_count += 1
        self.inference_count += rows
        self._add(COMPUTE_INFER, seconds, requests)

    def answered(self, total_s: float, input_s: float, output_s: float) -> None:
        """A request succeeded in `total_s`, of which `input_s` fetching its features and
        `output_s` checking its outputs."""
        self._add(SUCCESS, total_s)
        self._add(COMPUTE_INPUT, input_s)
        self._add(COMPUTE_OUTPUT, output_s)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, total_s: float) -> None:
        self._add(FAIL, total_s)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def doc(self, model: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics as JSON (proto field names, integers as numbers)."""
        durations = {
            name: {"count": count, "ns": ns}
            for name, count, ns in zip(DURATIONS, self._counts, self._ns, strict=True)
        }
        for name in ("cache_hit", "cache_miss"):
            durations[name] = {"count": 0, "ns": 0}
        return {
            "name": model,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": durations,
            "batch_stats": [],
            "memory_usage": [],
        }
