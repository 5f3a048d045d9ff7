"""The JSON bodies of mlgate's own HTTP calls (not V2's), as pydantic models.

Unknown keys are refused, so a misspelt one is named in the 400 rather than ignored.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

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


class _Predict(Body):
    """What both forms of POST /v1/models/{model}[/versions/{version}]:predict may carry."""

    # V2-style parameters: priority, timeout (µs), version.
    parameters: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None


class PredictBody(_Predict):
    """The entity form: features are read from the online store."""

    # Checked by the pipeline: a non-empty list of non-empty strings.
    entities: list[Any]
    # Request-time feature values: "view.feature" -> one value, or one per entity.
    features: dict[str, Any] | None = None


class InstancesBody(_Predict):
    """KServe V1's form: the rows of model inputs themselves."""

    # Rows of one input's values, or objects of input name -> values (checked by the pipeline).
    instances: list[Any] = Field(min_length=1)


def predict_body(doc: Any) -> PredictBody | InstancesBody:
    """The :predict body, its form told by its keys: 'instances' or 'entities'."""
    forms = "'instances' (rows of model inputs) or 'entities' (entity ids whose features are read)"
    if isinstance(doc, dict):
        if "instances" in doc and "entities" in doc:
            raise InvalidInput(f"give either {forms}, not both")
        if "instances" in doc:
            return InstancesBody.of(doc)
        if "entities" not in doc:
            raise InvalidInput(f"the body needs {forms}")
    return PredictBody.of(doc)


class FeaturePushBody(Body):
    """POST /v1/features/{view}"""

    rows: list[Any] = Field(min_length=1)
    # Milliseconds since the epoch; None: now.
    event_time_ms: StrictInt | None = None


class FeedbackBody(Body):
    """POST /v1/feedback: the true labels of one recorded prediction, found by its request id,
    or by an entity and the time of its prediction (the closest within `within_ms`)."""

    model: str = Field(min_length=1)
    request_id: str | None = Field(default=None, min_length=1)
    entity: str | None = Field(default=None, min_length=1)
    # Milliseconds since the epoch.
    ts_ms: StrictInt | None = None
    within_ms: StrictInt = Field(default=5_000, ge=0, le=3_600_000)
    # One per row of the prediction (per entity of a :predict); one for an entity's row.
    labels: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_key(self) -> Self:
        by_entity = self.entity is not None or self.ts_ms is not None
        if (self.request_id is None) == (not by_entity):
            raise ValueError("give either request_id, or entity and ts_ms")
        if by_entity and (self.entity is None or self.ts_ms is None):
            raise ValueError("entity and ts_ms go together")
        if by_entity and len(self.labels) != 1:
            raise ValueError("an entity's row takes one label")
        return self


class RepositoryIndexBody(Body):
    """POST /v2/repository/index (Triton's repository extension); the body may be empty."""

    # Only versions ready to serve; every version mlgate lists is.
    ready: StrictBool = False
