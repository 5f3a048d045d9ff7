"""The `monitoring:` section of a model's config.yaml."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MonitoringConfig(BaseModel):
    """How a model's versions are judged for drift (those with a reference profile)."""

    model_config = ConfigDict(extra="forbid")

    # Off: counted and judged nowhere, profile or not.
    enabled: bool = True
    # The judged window, in seconds of wall-clock time, made of `sub_windows` sub-windows:
    # a window is judged each time a sub-window closes, over the last `sub_windows` of them.
    window_s: float = Field(default=300.0, gt=0.0, le=86_400.0)
    sub_windows: int = Field(default=5, ge=1, le=120)
    # The family-wise false-alarm rate per judged window, over every feature and output tested.
    alpha: float = Field(default=0.01, gt=0.0, lt=0.5)
    # The statistic that decides the alarm (both are computed and shown by the admin route).
    statistic: Literal["psi", "ks"] = "psi"
    # A window with fewer rows is not judged: its gauges keep the last judgement.
    min_rows: int = Field(default=100, ge=10)

    @model_validator(mode="after")
    def _sub_window_long_enough(self) -> Self:
        if self.window_s / self.sub_windows < 0.5:
            raise ValueError(
                f"window_s / sub_windows is {self.window_s / self.sub_windows:g} s; "
                "a sub-window lasts at least 0.5 s"
            )
        return self

    @property
    def sub_window_s(self) -> float:
        return self.window_s / self.sub_windows
