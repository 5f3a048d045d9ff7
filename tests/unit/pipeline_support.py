"""The pipeline built in-process: the memory store, the demo views, and backends of known answers.

A stage can be tested here without `mlgate serve`, a socket or onnxruntime: `RecordingBackend`
answers every row of a version with that version's own constant and records each call it gets
(rows, deadline), so a test sees which version answered, how its batches were cut and which
deadline reached the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from feature_store.memory_store import MemoryStore
from feature_store.views import load_views
from service.backends.base import Backend, TensorSignature
from service.monitor.profile import Profile
from service.pipeline.features import Features
from service.pipeline.pipeline import Pipeline
from service.repository.config import ModelConfig
from service.repository.loader import Model, ModelVersion
from tests.conftest import MODELS_DIR

MODEL = "fraud_mlp"
VIEWS = load_views(MODELS_DIR / "feature_views.yaml")


@dataclass
class Call:
    rows: int
    deadline: float | None


@dataclass
class RecordingBackend(Backend):
    """probability = `answer` for every row, after `seconds`; each call recorded."""

    answer: float
    seconds: float = 0.0
    calls: list[Call] = field(default_factory=list)

    async def infer(
        self,
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        rows = len(inputs["features"])
        self.calls.append(Call(rows, deadline))
        if self.seconds:
            await asyncio.sleep(self.seconds)
        return {"probability": np.full((rows, 1), self.answer, dtype=np.float32)}

    def signature(self) -> tuple[list[TensorSignature], list[TensorSignature]]:
        return (
            [TensorSignature("features", "FP32", (-1, 32))],
            [TensorSignature("probability", "FP32", (-1, 1))],
        )

    async def warmup(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def device(self) -> str:
        return "cpu"


def config(**changes: Any) -> ModelConfig:
    """fraud_mlp's config.yaml with `changes` (None removes a section)."""
    doc = yaml.safe_load((MODELS_DIR / MODEL / "config.yaml").read_text())
    doc.update(changes)
    return ModelConfig.model_validate({k: v for k, v in doc.items() if v is not None})


def build(
    versions: Mapping[str, tuple[ModelConfig, Backend]],
    *,
    default_version: str = "1",
    model_config: ModelConfig | None = None,
    reference: Profile | None = None,
) -> tuple[Pipeline, MemoryStore]:
    """A pipeline serving fraud_mlp's `versions` over an empty memory store; every version
    monitored for drift against `reference` when one is given."""
    model = Model(
        MODEL,
        model_config or next(iter(versions.values()))[0],
        {
            v: ModelVersion(MODEL, v, c, None, backend, reference)
            for v, (c, backend) in versions.items()
        },
        default_version,
    )
    store = MemoryStore()
    return Pipeline({MODEL: model}, Features(store, VIEWS, coalesce=False)), store
