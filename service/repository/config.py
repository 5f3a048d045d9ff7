"""config.yaml: its schema in Triton's vocabulary, and reading it.

Every problem is a ConfigError whose message names the file and the field, one problem a line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from service.backends.onnx import OnnxOptions
from service.backends.triton_options import TritonOptions
from service.batching import BatchingConfig
from service.guard import GuardConfig, guard_config_errors
from service.monitor.config import MonitoringConfig
from service.monitor.quality import QualityConfig, one_wide
from service.protocol.datatypes import V2_TO_NUMPY
from service.routing.config import RoutingConfig
from service.validation import location, message
from service.versions import VersionName, check_version

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"


class ConfigError(Exception):
    """The repository cannot be served as it is; each line names a file and a field."""


def _unique_names(specs: list[TensorSpec]) -> None:
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate name {', '.join(map(repr, duplicates))}")


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    datatype: str
    # Without the batch dimension when max_batch_size > 0; -1 marks a variable size.
    dims: list[int]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in V2_TO_NUMPY:
            raise ValueError(
                f"unsupported datatype {value!r}; expected one of {', '.join(V2_TO_NUMPY)}"
            )
        return value

    @field_validator("dims")
    @classmethod
    def _valid_dims(cls, value: list[int]) -> list[int]:
        for dim in value:
            if dim == 0 or dim < -1:
                raise ValueError(
                    f"{dim} is not a size; use a positive size, or -1 for a variable one"
                )
        return value


class FeatureBinding(BaseModel):
    """Builds an input from online features: one row per entity, the views' columns in order."""

    model_config = ConfigDict(extra="forbid")

    entity: str = Field(min_length=1)
    views: list[str] = Field(min_length=1)

    @field_validator("views")
    @classmethod
    def _distinct_views(cls, value: list[str]) -> list[str]:
        duplicates = sorted({view for view in value if value.count(view) > 1})
        if duplicates:
            raise ValueError(f"view {', '.join(map(repr, duplicates))} listed twice")
        return value


class InputSpec(TensorSpec):
    features: FeatureBinding | None = None

    @field_validator("features")
    @classmethod
    def _room_for_features(
        cls, value: FeatureBinding | None, info: ValidationInfo
    ) -> FeatureBinding | None:
        if value is not None and info.data.get("dims") == []:
            raise ValueError("a feature-bound input needs dims whose last entry holds the features")
        return value


class ValidRange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class OutputSpec(TensorSpec):
    # The contract predictions must keep (service.guard enforces it, with finiteness and dims).
    valid_range: ValidRange | None = None
    # The class set: every value must be one of these.
    allowed: list[float] | None = Field(default=None, min_length=1)

    @field_validator("valid_range", "allowed")
    @classmethod
    def _numeric_output(
        cls, value: ValidRange | list[float] | None, info: ValidationInfo
    ) -> ValidRange | list[float] | None:
        datatype = info.data.get("datatype")
        if value is None or datatype is None:
            return value
        kind = V2_TO_NUMPY[datatype].kind
        if kind == "O":
            raise ValueError(f"a {datatype} output has no numeric contract")
        if isinstance(value, list) and kind != "f" and not all(v.is_integer() for v in value):
            raise ValueError(f"a {datatype} output only takes whole numbers")
        return value


BackendName = Literal["onnxruntime", "triton"]
PLATFORMS: dict[str, str] = {"onnxruntime": "onnxruntime_onnx", "triton": "triton"}


class ModelConfig(BaseModel):
    """One model's config.yaml, in Triton's vocabulary."""

    # `default_version: 2` reads as an int from YAML; versions are directory names, so strings.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str = Field(min_length=1)
    # What serves every version not named in version_backends.
    backend: BackendName
    version_backends: dict[str, BackendName] = Field(default_factory=dict)
    # Triton's meaning: 0 = the model does not batch and dims are full shapes.
    max_batch_size: int = Field(default=0, ge=0)
    default_version: VersionName | None = None
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    onnxruntime: OnnxOptions = Field(default_factory=OnnxOptions)
    triton: TritonOptions | None = None
    dynamic_batching: BatchingConfig | None = None
    # After outputs: its validator checks the fallback defaults against them.
    guard: GuardConfig = Field(default_factory=GuardConfig)
    # Stable, canary, shadow and A/B arms (service.routing.config); absent: every request on the
    # default version.
    routing: RoutingConfig | None = None
    # Drift monitoring of the versions that have a reference profile (service.monitor).
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    # Realised quality from label feedback (service.monitor.quality); absent: labels are
    # joined and recorded, and no quality is computed.
    quality: QualityConfig | None = None

    def quality_output(self) -> str:
        """The output labels are scored against."""
        assert self.quality is not None
        return self.quality.output or self.outputs[0].name

    @model_validator(mode="after")
    def _quality_fits(self) -> Self:
        quality = self.quality
        rollback = self.routing.rollback if self.routing is not None else None
        if quality is None:
            if rollback is not None and rollback.max_quality_drop is not None:
                raise ValueError("routing.rollback.max_quality_drop needs a quality section")
            return self
        specs = {spec.name: spec for spec in self.outputs}
        spec = specs.get(self.quality_output())
        if spec is None:
            raise ValueError(
                f"quality.output: no output '{quality.output}'; outputs: {', '.join(specs)}"
            )
        if V2_TO_NUMPY[spec.datatype].kind == "O":
            raise ValueError(f"quality.output: '{spec.name}' is {spec.datatype}, not numbers")
        if one_wide(quality.metric) and spec.dims[-1:] != [1]:
            raise ValueError(
                f"quality.metric {quality.metric} needs one value per row: output "
                f"'{spec.name}' has dims {spec.dims}"
            )
        return self

    @model_validator(mode="after")
    def _one_stable(self) -> Self:
        routing = self.routing
        if routing is None or routing.stable is None or self.default_version is None:
            return self
        if routing.stable != self.default_version:
            raise ValueError(
                f"routing.stable '{routing.stable}' differs from default_version "
                f"'{self.default_version}'; give one of them"
            )
        return self

    @field_validator("version_backends")
    @classmethod
    def _version_names(cls, value: dict[str, BackendName]) -> dict[str, BackendName]:
        for version in value:
            check_version(version)
        return value

    def backend_of(self, version: str) -> BackendName:
        return self.version_backends.get(version, self.backend)

    def platform_of(self, version: str) -> str:
        """The V2 metadata `platform` of a version: what actually runs it."""
        return PLATFORMS[self.backend_of(version)]

    @model_validator(mode="after")
    def _triton_configured(self) -> Self:
        if self.triton is None:
            if "triton" in (self.backend, *self.version_backends.values()):
                raise ValueError("versions served by triton need a triton section (endpoints)")
            return self
        for version in self.triton.model_versions:
            if self.backend_of(version) != "triton":
                raise ValueError(
                    f"triton.model_versions names version '{version}', which onnxruntime serves; "
                    f"set version_backends: {{'{version}': triton}} to serve it from Triton"
                )
        return self

    @field_validator("inputs", "outputs")
    @classmethod
    def _distinct_names(cls, value: list[TensorSpec]) -> list[TensorSpec]:
        _unique_names(value)
        return value

    @field_validator("dynamic_batching")
    @classmethod
    def _batchable(
        cls, value: BatchingConfig | None, info: ValidationInfo
    ) -> BatchingConfig | None:
        max_batch_size = info.data.get("max_batch_size")
        if value is None or max_batch_size is None:
            return value
        if max_batch_size == 0:
            raise ValueError("needs max_batch_size > 0")
        too_large = [size for size in value.preferred_batch_sizes if size > max_batch_size]
        if too_large:
            raise ValueError(
                f"preferred_batch_sizes: {too_large[0]} exceeds max_batch_size {max_batch_size}"
            )
        return value

    @field_validator("guard")
    @classmethod
    def _guard_fits_outputs(cls, value: GuardConfig, info: ValidationInfo) -> GuardConfig:
        outputs = info.data.get("outputs")
        errors = [] if outputs is None else guard_config_errors(value, outputs)
        if errors:
            raise ValueError("; ".join(errors))
        return value


def read_config(path: Path) -> ModelConfig:
    """Parse and validate one config.yaml."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, found {type(data).__name__}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = [describe_error(path, error) for error in exc.errors()]
        raise ConfigError("\n".join(problems)) from None


def describe_error(path: Path, error: ErrorDetails) -> str:
    """One pydantic error as `file: field.path[0]: message`."""
    field = location(error["loc"])
    if error["type"] in ("extra_forbidden", "value_error"):
        what = message(error)
    else:
        what = error["msg"][0].lower() + error["msg"][1:]
        if isinstance(error.get("input"), str | int | float):
            what += f" (got {error['input']!r})"
    return f"{path}: {field}: {what}" if field else f"{path}: {what}"
