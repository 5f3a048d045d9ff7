"""The JSON bodies of mlgate's own HTTP calls (not V2's), as pydantic models.

Unknown keys are refused, so a misspelt one is named in the 400 rather than ignored.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from service.protocol.errors import InvalidInput
from service.validation import describe


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def of(cls, doc: Any) -> Self:
        """`doc` (decoded JSON) as this body, or InvalidInput naming every problem."""
        if not isinstance(doc, dict):
            raise InvalidInput("the body must be a JSON object")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise InvalidInput(f"invalid body: {describe(exc)}") from None


class PredictBody(Body):
    """POST /v1/models/{model}[/versions/{version}]:predict"""

    # Checked by the pipeline: a non-empty list of non-empty strings.
    entities: list[Any]
    # Request-time feature values: "view.feature" -> one value, or one per entity.
    features: dict[str, Any] | None = None
    # V2-style parameters: priority, timeout (µs), version.
    parameters: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None


class FeaturePushBody(Body):
    """POST /v1/features/{view}"""

    rows: list[Any] = Field(min_length=1)
    # Milliseconds since the epoch; None: now.
    event_time_ms: StrictInt | None = None
