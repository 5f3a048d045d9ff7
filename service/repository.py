"""The model repository: config.yaml parsing and validation, versions, load and warm-up.

The layout is Triton's:

    <root>/<model>/config.yaml
    <root>/<model>/<version>/model.onnx      (a version is a directory named by digits)

except that a version Triton serves needs no directory: config.yaml names it (`backend: triton`
with `triton.model_versions`, or `version_backends`), so one model can have versions on each.

Every problem is a ConfigError whose message names the file and the field, one problem a line,
so `mlgate models check` and a failed start both say exactly what to fix.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import numpy as np
import yaml
from numpy.typing import DTypeLike
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from feature_store.errors import ViewConfigError
from feature_store.views import load_views
from service.backends.base import Backend, TensorSignature
from service.backends.onnx import OnnxBackend, OnnxOptions
from service.backends.triton import TritonBackend, TritonOptions
from service.batching import BatchingConfig
from service.guard import GuardConfig, guard_config_errors
from service.protocol.datatypes import V2_TO_NUMPY
from service.protocol.errors import GatewayError, NotFound
from service.routing.config import RoutingConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"


class ConfigError(Exception):
    """The repository cannot be served as it is; each line names a file and a field."""


class FeatureViewLike(Protocol):
    """What the repository needs to know of a feature view (feature_store's FeatureView fits)."""

    @property
    def width(self) -> int: ...

    @property
    def entity(self) -> str: ...

    @property
    def np_dtype(self) -> DTypeLike: ...


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
    default_version: str | None = None
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    onnxruntime: OnnxOptions = Field(default_factory=OnnxOptions)
    triton: TritonOptions | None = None
    dynamic_batching: BatchingConfig | None = None
    # After outputs: its validator checks the fallback defaults against them.
    guard: GuardConfig = Field(default_factory=GuardConfig)
    # Stable, canary, shadow and A/B arms (service.routing); absent: every request on the
    # default version.
    routing: RoutingConfig | None = None

    @field_validator("default_version")
    @classmethod
    def _version_name(cls, value: str | None) -> str | None:
        if value is not None and not _is_version(value):
            raise ValueError(
                f"{value!r} is not a version; versions are directories named by digits"
            )
        return value

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
            if not _is_version(version):
                raise ValueError(f"{version!r} is not a version; versions are named by digits")
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


def _is_version(name: str) -> bool:
    return name.isascii() and name.isdigit()


@dataclass
class ModelVersion:
    model: str
    version: str
    config: ModelConfig
    path: Path | None  # the .onnx file; None where Triton serves the version
    backend: Backend


@dataclass
class Model:
    name: str
    config: ModelConfig
    versions: dict[str, ModelVersion]  # in numeric order
    default_version: str

    def get(self, version: str | None = None) -> ModelVersion:
        # The V2 gRPC protocol sends "" for "the server's choice", like an absent version in REST.
        key = version or self.default_version
        try:
            return self.versions[key]
        except KeyError:
            raise NotFound(
                f"model '{self.name}' has no version '{version}'; "
                f"available: {', '.join(self.versions)}"
            ) from None


class Repository:
    """The loaded models; every version has a warmed-up backend."""

    def __init__(
        self,
        models: dict[str, Model],
        owned_executor: ThreadPoolExecutor | None = None,
        *,
        root: Path | None = None,
        views: Mapping[str, FeatureViewLike] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.models = models
        self._owned_executor = owned_executor
        # Where versions loaded at runtime come from (open_version).
        self.root = root
        self._views = views
        self._executor = executor

    @classmethod
    async def load(
        cls,
        root: Path,
        views: Mapping[str, FeatureViewLike] | None = None,
        *,
        executor: ThreadPoolExecutor | None = None,
    ) -> Repository:
        """Load, check and warm up every model under `root`; ConfigError lists every problem.

        Feature bindings are checked against `views` when given. Inference runs on `executor`;
        without one the repository makes one thread per core and shuts it down on close().
        """
        config_paths = _config_paths(root)
        owned = None
        if executor is None:
            # One thread per core: sessions run one intra-op thread each by default.
            executor = owned = ThreadPoolExecutor(os.cpu_count(), "mlgate-infer")
        loop = asyncio.get_running_loop()
        # Sessions are built in threads: optimising a large graph takes a while.
        opened = await asyncio.gather(
            *(
                loop.run_in_executor(executor, _open_model, path, views, executor)
                for path in config_paths
            ),
            return_exceptions=True,
        )
        # Triton's clients belong to the event loop, so their versions open here.
        finished = await asyncio.gather(*(_finish(o) for o in opened), return_exceptions=True)
        repository = cls(
            {m.name: m for m in finished if isinstance(m, Model)},
            owned,
            root=root,
            views=views,
            executor=executor,
        )
        try:
            _raise_errors(finished)
            versions = [v for m in repository.models.values() for v in m.versions.values()]
            _raise_errors(
                await asyncio.gather(*(_warm_up(v) for v in versions), return_exceptions=True)
            )
        except BaseException:
            await repository.close()
            raise
        for model in repository.models.values():
            devices = sorted({v.backend.device for v in model.versions.values()})
            logger.info(
                "loaded model %s: versions %s (default %s) on %s",
                model.name,
                ", ".join(model.versions),
                model.default_version,
                ", ".join(devices),
            )
        return repository

    def get(self, model: str, version: str | None = None) -> ModelVersion:
        try:
            found = self.models[model]
        except KeyError:
            raise NotFound(
                f"unknown model '{model}'; available: {', '.join(sorted(self.models))}"
            ) from None
        return found.get(version)

    async def open_version(self, model: str, version: str) -> ModelVersion:
        """`version` of `model` as its directory and config.yaml are now, opened and warmed up
        but not added: the caller swaps it in. ConfigError says what keeps it from serving."""
        if self.root is None or self._executor is None:
            raise ConfigError("this repository was not loaded from a directory")
        config_path = self.root / model / CONFIG_FILE
        if not config_path.is_file():
            raise ConfigError(f"{config_path}: no such file")
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(
            self._executor, _open_model, config_path, self._views, self._executor, version
        )
        found = (await opened.finish()).versions.get(version)
        if found is None:
            raise ConfigError(f"{config_path.parent / version}: no version '{version}' to load")
        try:
            await _warm_up(found)
        except BaseException:
            await found.backend.close()
            raise
        return found

    def add(self, version: ModelVersion) -> None:
        """List `version` from now on, in place of the one of that name (the caller closes it)."""
        model = self.models[version.model]
        model.versions[version.version] = version
        model.versions = dict(sorted(model.versions.items(), key=lambda item: int(item[0])))

    def remove(self, model: str, version: str) -> ModelVersion:
        """Stop listing `version` (still open: the caller drains and closes it)."""
        return self.models[model].versions.pop(version)

    async def close(self) -> None:
        for model in self.models.values():
            for version in model.versions.values():
                await version.backend.close()
        if self._owned_executor is not None:
            # Batches already running finish on their own; closing must not block the event loop.
            self._owned_executor.shutdown(wait=False)


def check_repository(root: Path, views_path: Path | None = None) -> list[str]:
    """Every problem of the repository under `root`, one per line; [] when it can be served.

    Feature bindings are checked against the views declared in `views_path` when given. Builds
    each session, and reads the metadata of each version Triton serves, to check its inputs and
    outputs against config.yaml but runs no inference.
    """
    try:
        config_paths = _config_paths(root)
        views = load_views(views_path) if views_path is not None else None
    except (ConfigError, ViewConfigError) as exc:
        return str(exc).splitlines()
    errors: list[str] = []
    with ThreadPoolExecutor(1) as executor:
        for path in config_paths:
            try:
                asyncio.run(_check_model(_open_model(path, views, executor)))
            except ConfigError as exc:
                errors.extend(str(exc).splitlines())
    return errors


async def _check_model(opened: _OpenedModel) -> None:
    model = await opened.finish()
    for version in model.versions.values():
        await version.backend.close()


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
        raise ConfigError("\n".join(_describe(path, error) for error in exc.errors())) from None


def check_feature_bindings(
    config: ModelConfig, views: Mapping[str, FeatureViewLike], path: Path
) -> None:
    """ConfigError unless every feature-bound input of `config` (read from `path`) fits `views`."""
    errors = _binding_errors(config, views, path)
    if errors:
        raise ConfigError("\n".join(errors))


def _raise_errors(results: list[Any]) -> None:
    """Raise the ConfigErrors among `results` as one, or first any other exception as it is."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ConfigError):
            raise result
    errors = [str(result) for result in results if isinstance(result, ConfigError)]
    if errors:
        raise ConfigError("\n".join(errors))


def _describe(path: Path, error: Any) -> str:
    """One pydantic error as `file: field.path[0]: message`."""
    field = ""
    for part in error["loc"]:
        if isinstance(part, int):
            field += f"[{part}]"
        else:
            field += f".{part}" if field else part
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
        if isinstance(error.get("input"), str | int | float):
            message += f" (got {error['input']!r})"
    return f"{path}: {field}: {message}" if field else f"{path}: {message}"


def _binding_errors(
    config: ModelConfig, views: Mapping[str, FeatureViewLike], path: Path
) -> list[str]:
    errors = []
    for i, spec in enumerate(config.inputs):
        binding = spec.features
        if binding is None:
            continue
        field = f"inputs[{i}].features"
        dtype = V2_TO_NUMPY[spec.datatype]
        widths: list[str] = []
        total = 0
        for j, name in enumerate(binding.views):
            view = views.get(name)
            if view is None:
                errors.append(
                    f"{path}: {field}.views[{j}]: unknown feature view '{name}'; "
                    f"known: {', '.join(sorted(views)) or 'none'}"
                )
                continue
            if view.entity != binding.entity:
                errors.append(
                    f"{path}: {field}.views[{j}]: view '{name}' is keyed by '{view.entity}', "
                    f"not by {field}.entity '{binding.entity}'"
                )
            view_dtype = np.dtype(view.np_dtype)
            if view_dtype != dtype:
                errors.append(
                    f"{path}: {field}.views[{j}]: view '{name}' holds {view_dtype}, "
                    f"but inputs[{i}].datatype is {spec.datatype}"
                )
            widths.append(f"{name} {view.width}")
            total += view.width
        if len(widths) == len(binding.views) and total != spec.dims[-1]:
            errors.append(
                f"{path}: inputs[{i}].dims: the last dimension is {spec.dims[-1]}, but the views "
                f"of {field}.views give {total} columns ({' + '.join(widths)})"
            )
    return errors


def _config_paths(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory")
    paths = sorted(path for path in root.glob(f"*/{CONFIG_FILE}") if path.is_file())
    if not paths:
        raise ConfigError(f"{root}: no models; expected <model>/{CONFIG_FILE}")
    return paths


def _version_dirs(config_path: Path) -> dict[str, Path]:
    """{version: directory} of the directories beside config.yaml named by digits."""
    return {
        child.name: child
        for child in config_path.parent.iterdir()
        if child.is_dir() and _is_version(child.name)
    }


@dataclass
class _Versions:
    """The versions config.yaml and the directories beside it declare, by what serves them."""

    onnx: dict[str, Path]  # {version: model file}
    triton: dict[str, str]  # {version: Triton's version}
    errors: list[str]

    @property
    def names(self) -> list[str]:
        return sorted([*self.onnx, *self.triton], key=int)


def _find_versions(config: ModelConfig, config_path: Path) -> _Versions:
    dirs = _version_dirs(config_path)
    triton_versions = config.triton.model_versions if config.triton is not None else {}
    named = {*config.version_backends, *triton_versions}
    found = _Versions({}, {}, [])
    for version in sorted({*dirs, *named}, key=int):
        if config.backend_of(version) == "triton":
            found.triton[version] = triton_versions.get(version, version)
            continue
        model_file = dirs[version] / MODEL_FILE if version in dirs else None
        if model_file is not None and model_file.is_file():
            found.onnx[version] = model_file
        elif version in named:
            found.errors.append(
                f"{config_path}: version_backends: version '{version}' is served by onnxruntime "
                f"but has no {version}/{MODEL_FILE}"
            )
        else:
            logger.warning("%s: no %s, so not a version", dirs[version], MODEL_FILE)
    return found


@dataclass
class _OpenedModel:
    """One model read, its onnxruntime versions open; its Triton versions open in finish()."""

    config_path: Path
    config: ModelConfig
    default_version: str
    versions: dict[str, ModelVersion]
    triton_versions: dict[str, str]  # {version: Triton's version}
    errors: list[str]

    async def finish(self) -> Model:
        """The model with every version open; ConfigError (all versions closed) otherwise."""
        results = await asyncio.gather(
            *(self._open_triton(v, t) for v, t in self.triton_versions.items()),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if self.errors or failures:
            # Triton backends run health checks until closed.
            for version in self.versions.values():
                await version.backend.close()
            if failures:
                raise failures[0]
            raise ConfigError("\n".join(self.errors))
        versions = dict(sorted(self.versions.items(), key=lambda item: int(item[0])))
        return Model(self.config.name, self.config, versions, self.default_version)

    async def _open_triton(self, version: str, triton_version: str) -> None:
        options = self.config.triton
        assert options is not None, "ModelConfig makes a triton section for triton versions"
        try:
            backend = await TritonBackend.open(
                options,
                options.model_name or self.config.name,
                triton_version,
                self.config.max_batch_size,
            )
        except GatewayError as exc:
            self.errors.append(f"{self.config_path}: version {version}: {exc.message}")
            return
        graph_errors = _graph_errors(self.config, self.config_path, backend.target, backend)
        if graph_errors:
            self.errors += graph_errors
            await backend.close()
            return
        self.versions[version] = ModelVersion(self.config.name, version, self.config, None, backend)


async def _finish(opened: _OpenedModel | BaseException) -> Model:
    if isinstance(opened, BaseException):
        raise opened
    return await opened.finish()


def _open_model(
    config_path: Path,
    views: Mapping[str, FeatureViewLike] | None,
    executor: ThreadPoolExecutor,
    only: str | None = None,
) -> _OpenedModel:
    """Read and check one model and open (without warming up) its onnxruntime versions, or
    just version `only`."""
    config = read_config(config_path)
    errors = []
    directory = config_path.parent.name
    if config.name != directory:
        errors.append(
            f"{config_path}: name: '{config.name}' differs from its directory '{directory}'"
        )
    if views is not None:
        errors += _binding_errors(config, views, config_path)

    found = _find_versions(config, config_path)
    errors += found.errors
    if not found.names:
        expected = (
            f"<version>/{MODEL_FILE} beside it, the version named by digits"
            if config.backend == "onnxruntime"
            else "versions named in triton.model_versions or version_backends"
        )
        errors.append(f"{config_path}: no versions; expected {expected}")
        raise ConfigError("\n".join(errors))
    stable = config.routing.stable if config.routing is not None else None
    default_version = config.default_version or stable or found.names[-1]
    if default_version not in found.names:
        missing = (
            f"has no {MODEL_FILE}"
            if config.backend_of(default_version) == "onnxruntime"
            else "is not a version"
        )
        errors.append(
            f"{config_path}: default_version: '{default_version}' {missing}; "
            f"available: {', '.join(found.names)}"
        )
    fallback = config.guard.fallback
    if fallback is not None and fallback.version not in (None, *found.names):
        errors.append(
            f"{config_path}: guard.fallback.version: '{fallback.version}' is not a version; "
            f"available: {', '.join(found.names)}"
        )
    if config.routing is not None and config.routing.stable is None:
        # The stable version defaults to default_version: check the section with it filled in.
        try:
            RoutingConfig.model_validate(config.routing.model_dump() | {"stable": default_version})
        except ValidationError as exc:
            errors += [
                f"{_describe(config_path, error)} (routing.stable defaults to "
                f"'{default_version}'; set it)"
                for error in exc.errors()
            ]
    routed = config.routing.versions() if config.routing is not None else set()
    errors += [
        f"{config_path}: routing: version '{version}' is not a version; "
        f"available: {', '.join(found.names)}"
        for version in sorted(routed - set(found.names), key=int)
    ]

    versions = {}
    for version, path in found.onnx.items():
        if only is not None and version != only:
            continue
        try:
            backend = OnnxBackend(path, config.onnxruntime, executor)
        except GatewayError as exc:
            errors.append(exc.message)
            continue
        graph_errors = _graph_errors(config, config_path, str(path), backend)
        if graph_errors:
            errors += graph_errors
            continue
        versions[version] = ModelVersion(config.name, version, config, path, backend)
    triton = {v: t for v, t in found.triton.items() if only is None or v == only}
    return _OpenedModel(config_path, config, default_version, versions, triton, errors)


def _graph_errors(
    config: ModelConfig, config_path: Path, source: str, backend: Backend
) -> list[str]:
    graph_inputs, graph_outputs = backend.signature()
    check = _GraphCheck(config, config_path, source)
    return check.compare("input", config.inputs, graph_inputs) + check.compare(
        "output", config.outputs, graph_outputs
    )


@dataclass
class _GraphCheck:
    """Compares one version's graph with its config.yaml; messages name both sources."""

    config: ModelConfig
    config_path: Path
    source: str  # where the graph comes from: the .onnx file, or the model on Triton

    def compare(
        self, kind: str, specs: list[InputSpec] | list[OutputSpec], graph: list[TensorSignature]
    ) -> list[str]:
        """Differences between what config.yaml declares (`specs`) and what the graph has."""
        field = f"{kind}s"
        declared = [spec.name for spec in specs]
        errors = [
            f"{self.source}: {kind} '{tensor.name}' not declared in {self.config_path} "
            f"{field} (declared: {', '.join(declared)})"
            for tensor in graph
            if tensor.name not in declared
        ]
        by_name = {tensor.name: tensor for tensor in graph}
        for i, spec in enumerate(specs):
            tensor = by_name.get(spec.name)
            if tensor is None:
                errors.append(
                    f"{self.source}: no {kind} '{spec.name}' as {self.config_path} "
                    f"{field}[{i}].name declares (the graph has: {', '.join(by_name)})"
                )
                continue
            if tensor.datatype != spec.datatype:
                errors.append(
                    f"{self.source}: {kind} '{tensor.name}' is {tensor.datatype}, but "
                    f"{self.config_path} {field}[{i}].datatype is {spec.datatype}"
                )
            errors += self._shape_errors(f"{field}[{i}]", kind, spec, tensor)
        return errors

    def _shape_errors(
        self, field: str, kind: str, spec: TensorSpec, tensor: TensorSignature
    ) -> list[str]:
        max_batch_size = self.config.max_batch_size
        shape = list(tensor.shape)
        if max_batch_size > 0:
            if not shape or shape[0] != -1:
                return [
                    f"{self.source}: {kind} '{tensor.name}' has shape {shape} with no dynamic "
                    f"batch dimension first, which {self.config_path} max_batch_size "
                    f"{max_batch_size} needs (or set max_batch_size: 0 and give full shapes in "
                    "dims)"
                ]
            shape = shape[1:]
        # A dynamic graph dimension accepts whatever config.yaml narrows it to; a fixed one must
        # be declared as it is, or requests that follow config.yaml would fail in the runtime.
        if len(shape) != len(spec.dims) or any(
            have not in (-1, want) for have, want in zip(shape, spec.dims, strict=False)
        ):
            batch_note = " (dims exclude the batch dimension)" if max_batch_size > 0 else ""
            return [
                f"{self.source}: {kind} '{tensor.name}' has shape {list(tensor.shape)}, but "
                f"{self.config_path} {field}.dims is {spec.dims}{batch_note}"
            ]
        return []


async def _warm_up(version: ModelVersion) -> None:
    try:
        await version.backend.warmup()
    except GatewayError as exc:
        where = version.path or f"model '{version.model}' version {version.version}"
        raise ConfigError(f"{where}: warm-up failed: {exc.message}") from None
