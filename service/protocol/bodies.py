"""The JSON bodies of mlgate's own HTTP calls (not V2's), as pydantic models.

Unknown keys are refused, so a misspelt one is named in the 400 rather than ignored.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

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


class RepositoryIndexBody(Body):
    """POST /v2/repository/index (Triton's repository extension); the body may be empty."""

    # Only versions ready to serve; every version mlgate lists is.
    ready: StrictBool = False
