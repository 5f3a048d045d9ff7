"""Loading the repository: every model's versions found, opened, checked and warmed up.

`Repository.load` serves; `check_repository` does the same without serving (`mlgate models
check`); `Repository.open_version` loads one version at run time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.backends.base import Backend
from service.backends.onnx import CPU, OnnxBackend
from service.heap import release_freed_heap
from service.monitor.profile import (
    REFERENCE_FILE,
    Profile,
    ProfileError,
    profile_errors,
    read_profile,
    tensor_widths,
)
from service.protocol.errors import GatewayError
from service.repository.checks import FeatureViewLike, binding_errors, graph_errors
from service.repository.config import (
    CONFIG_FILE,
    MODEL_FILE,
    ConfigError,
    ModelConfig,
    describe_error,
    read_config,
)
from service.routing.config import RoutingConfig
from service.versions import is_version

logger = logging.getLogger(__name__)


@dataclass
class ModelVersion:
    model: str
    version: str
    config: ModelConfig
    path: Path | None  # the .onnx file; None where Triton serves the version
    backend: Backend
    # <version>/reference.json: the version is monitored for drift against it.
    reference: Profile | None = None


@dataclass
class Model:
    name: str
    config: ModelConfig
    versions: dict[str, ModelVersion]  # in numeric order
    default_version: str


class Repository:
    """The models under a directory: loaded and warmed up at start (`models`, which the
    pipeline's registry takes over), and single versions opened again at run time."""

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
        release_freed_heap()
        for model in repository.models.values():
            unprofiled = [v for v, mv in model.versions.items() if mv.reference is None]
            if unprofiled:
                logger.info(
                    "model %s: no %s for version(s) %s: not monitored for drift",
                    model.name,
                    REFERENCE_FILE,
                    ", ".join(unprofiled),
                )
            devices = sorted({v.backend.device for v in model.versions.values()})
            logger.info(
                "loaded model %s: versions %s (default %s) on %s",
                model.name,
                ", ".join(model.versions),
                model.default_version,
                ", ".join(devices),
            )
        return repository

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
        release_freed_heap()
        return found

    async def close(self) -> None:
        for model in self.models.values():
            for version in model.versions.values():
                await version.backend.close()
        if self._owned_executor is not None:
            # Batches already running finish on their own; closing must not block the event loop.
            self._owned_executor.shutdown(wait=False)


def check_repository(root: Path, views: Mapping[str, FeatureViewLike] | None = None) -> list[str]:
    """Every problem of the repository under `root`, one per line; [] when it can be served.

    Feature bindings are checked against `views` when given (`mlgate models check` and `serve`
    both give `declared_views`). Builds a CPU session of each version, and reads the metadata
    of each version Triton serves, to check its inputs and outputs against config.yaml but runs
    no inference.
    """
    try:
        config_paths = _config_paths(root)
    except ConfigError as exc:
        return str(exc).splitlines()
    errors: list[str] = []
    with ThreadPoolExecutor(1) as executor:
        for path in config_paths:
            try:
                asyncio.run(_check_model(_open_model(path, views, executor, cpu_only=True)))
            except ConfigError as exc:
                errors.extend(str(exc).splitlines())
    return errors


async def _check_model(opened: _OpenedModel) -> None:
    model = await opened.finish()
    for version in model.versions.values():
        await version.backend.close()


def _raise_errors(results: list[Any]) -> None:
    """Raise the ConfigErrors among `results` as one, or first any other exception as it is."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ConfigError):
            raise result
    errors = [str(result) for result in results if isinstance(result, ConfigError)]
    if errors:
        raise ConfigError("\n".join(errors))


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
        if child.is_dir() and is_version(child.name)
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
        # Imported only by a repository with a Triton version: tritonclient, aiohttp and
        # gevent are ~12 MiB of every process otherwise (docs/memory.md).
        from service.backends.triton import TritonBackend

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
        mismatches = graph_errors(self.config, self.config_path, backend.target, backend)
        reference, problems = _reference(self.config, self.config_path, version)
        if mismatches or problems:
            self.errors += mismatches + problems
            await backend.close()
            return
        self.versions[version] = ModelVersion(
            self.config.name, version, self.config, None, backend, reference
        )


async def _finish(opened: _OpenedModel | BaseException) -> Model:
    if isinstance(opened, BaseException):
        raise opened
    return await opened.finish()


def _open_model(
    config_path: Path,
    views: Mapping[str, FeatureViewLike] | None,
    executor: ThreadPoolExecutor,
    only: str | None = None,
    *,
    cpu_only: bool = False,
) -> _OpenedModel:
    """Read and check one model and open (without warming up) its onnxruntime versions, or
    just version `only`; on the CPU alone with `cpu_only`, whatever the config asks."""
    config = read_config(config_path)
    errors = []
    directory = config_path.parent.name
    if config.name != directory:
        errors.append(
            f"{config_path}: name: '{config.name}' differs from its directory '{directory}'"
        )
    if views is not None:
        errors += binding_errors(config, views, config_path)

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
                f"{describe_error(config_path, error)} (routing.stable defaults to "
                f"'{default_version}'; set it)"
                for error in exc.errors()
            ]
    routed = config.routing.versions() if config.routing is not None else set()
    errors += [
        f"{config_path}: routing: version '{version}' is not a version; "
        f"available: {', '.join(found.names)}"
        for version in sorted(routed - set(found.names), key=int)
    ]

    options = config.onnxruntime
    if cpu_only:
        # A check needs only the graphs' signatures. GPU sessions would load CUDA and cuDNN and
        # hold a CUDA context (and its memory) in `mlgate serve`'s parent, which never serves.
        options = options.model_copy(update={"providers": [CPU]})
    versions = {}
    for version, path in found.onnx.items():
        if only is not None and version != only:
            continue
        try:
            backend = OnnxBackend(path, options, executor)
        except GatewayError as exc:
            errors.append(exc.message)
            continue
        mismatches = graph_errors(config, config_path, str(path), backend)
        reference, problems = _reference(config, config_path, version)
        if mismatches or problems:
            errors += mismatches + problems
            continue
        versions[version] = ModelVersion(config.name, version, config, path, backend, reference)
    triton = {v: t for v, t in found.triton.items() if only is None or v == only}
    return _OpenedModel(config_path, config, default_version, versions, triton, errors)


def _reference(
    config: ModelConfig, config_path: Path, version: str
) -> tuple[Profile | None, list[str]]:
    """The version's reference profile, if it has one, or why it cannot be used."""
    path = config_path.parent / version / REFERENCE_FILE
    if not path.is_file():
        return None, []
    try:
        profile = read_profile(path)
    except ProfileError as exc:
        return None, [str(exc)]
    errors = profile_errors(profile, tensor_widths(config), path)
    return (None, errors) if errors else (profile, [])


async def _warm_up(version: ModelVersion) -> None:
    try:
        await version.backend.warmup()
    except GatewayError as exc:
        where = version.path or f"model '{version.model}' version {version.version}"
        raise ConfigError(f"{where}: warm-up failed: {exc.message}") from None
