"""Checks of a model against what it runs on: each version's graph (its inputs and outputs)
and the feature views its inputs are built from, both against config.yaml.

Messages name both sources: the graph's file (or the model on Triton) and config.yaml's field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike

from service.backends.base import Backend, TensorSignature
from service.protocol.datatypes import V2_TO_NUMPY
from service.repository.config import ConfigError, InputSpec, ModelConfig, OutputSpec, TensorSpec


class FeatureViewLike(Protocol):
    """What the repository needs to know of a feature view (feature_store's FeatureView fits)."""

    @property
    def width(self) -> int: ...

    @property
    def entity(self) -> str: ...

    @property
    def np_dtype(self) -> DTypeLike: ...


def check_feature_bindings(
    config: ModelConfig, views: Mapping[str, FeatureViewLike], path: Path
) -> None:
    """ConfigError unless every feature-bound input of `config` (read from `path`) fits `views`."""
    errors = binding_errors(config, views, path)
    if errors:
        raise ConfigError("\n".join(errors))


def binding_errors(
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


def graph_errors(
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
