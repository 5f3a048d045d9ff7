"""Dynamic batcher: queue, deadlines, sizes, cancellation. Knows nothing of HTTP or models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BatchingConfig(BaseModel):
    """The `dynamic_batching` section of a model's config.yaml (Triton's vocabulary)."""

    model_config = ConfigDict(extra="forbid")

    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(default=1024, ge=1)
    instances: int = Field(default=1, ge=1)
    adaptive: bool = False
    priority_levels: int = Field(default=1, ge=1)
    default_priority_level: int = Field(default=1, ge=1)
    default_timeout_us: int | None = Field(default=None, ge=1)
