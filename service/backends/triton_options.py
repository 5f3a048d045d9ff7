"""The `triton` section of a model's config.yaml, apart from the backend itself: reading a
repository's configuration must not import the Triton backend's clients (tritonclient's HTTP
client brings aiohttp and gevent) where no version is served by Triton.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.versions import check_version

_ENDPOINT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")


class TritonOptions(BaseModel):
    """The `triton` section of a model's config.yaml."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    # host:port of each server's gRPC port (HTTP port with protocol: http).
    endpoints: list[str] = Field(min_length=1)
    protocol: Literal["grpc", "http"] = "grpc"
    # Triton's name for the model; this model's name when absent.
    model_name: str | None = Field(default=None, min_length=1)
    # Triton's version of each version that Triton serves; the same number when absent.
    model_versions: dict[str, str] = Field(default_factory=dict)
    # The longest one call to Triton may take; a request's deadline shortens it. Also bounds each
    # call made at load.
    timeout_s: float = Field(default=5.0, gt=0)
    # Further endpoints tried after one that cannot serve; see the module's docstring.
    retries: int = Field(default=1, ge=0)
    # Consecutive failures that mark an endpoint down.
    failure_threshold: int = Field(default=3, ge=1)
    # How often every endpoint is checked, and how long one check may take.
    health_interval_s: float = Field(default=1.0, gt=0)

    @field_validator("endpoints")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            if not _ENDPOINT.match(endpoint):
                raise ValueError(f"{endpoint!r} is not host:port")
        duplicates = sorted({e for e in value if value.count(e) > 1})
        if duplicates:
            raise ValueError(f"endpoint {', '.join(map(repr, duplicates))} listed twice")
        return value

    @field_validator("model_versions")
    @classmethod
    def _version_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in (*value, *value.values()):
            check_version(name)
        return value
