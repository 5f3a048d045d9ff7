"""Triton's protocol extensions as plain documents: model configuration, statistics and the
repository index.

Each is the JSON Triton's HTTP front answers (proto field names, integers as numbers); the gRPC
front parses the same document into its message, so both fronts always say the same thing.
"""

from __future__ import annotations

from typing import Any

from service.pipeline.route import Route
from service.pipeline.served import Registry
from service.repository.config import PLATFORMS, ModelConfig, TensorSpec

Doc = dict[str, Any]
# The one state a version listed here can be in: only loaded versions are known to the registry.
READY = "READY"


def model_config(route: Route, model: str, version: str | None) -> Doc:
    """The configuration of `version` of `model` (its stable version without one)."""
    return config_doc(route.version(model, version).mv.config)


def config_doc(config: ModelConfig) -> Doc:
    """The part of Triton's ModelConfig that config.yaml determines, and nothing invented."""
    doc: Doc = {
        "name": config.name,
        "platform": PLATFORMS[config.backend],
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [_tensor(s) for s in config.inputs],
        "output": [_tensor(s) for s in config.outputs],
    }
    batching = config.dynamic_batching
    if batching is not None:
        policy: Doc = {"max_queue_size": batching.max_queue_size}
        if batching.default_timeout_us is not None:
            policy["default_timeout_microseconds"] = batching.default_timeout_us
        doc["dynamic_batching"] = {
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "priority_levels": batching.priority_levels,
            "default_priority_level": batching.default_priority_level,
            "default_queue_policy": policy,
        }
    return doc


def _tensor(spec: TensorSpec) -> Doc:
    # Model configs name BYTES "TYPE_STRING"; every other type is TYPE_ + its V2 name.
    data_type = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
    return {"name": spec.name, "data_type": data_type, "dims": list(spec.dims)}


def statistics(registry: Registry, model: str, version: str) -> Doc:
    """Triton's ModelStatisticsResponse: every loaded version of every model without a model
    name ("", as Triton's clients send), every version of `model` without a version."""
    if not model:
        chosen = [s for m in registry.models.values() for s in m.versions.values()]
    elif not version:
        chosen = list(registry.model(model).versions.values())
    else:
        chosen = [registry.get(model, version)]
    return {"model_stats": [s.stats.doc(s.model, s.version) for s in chosen]}


def repository_index(registry: Registry) -> list[Doc]:
    """Triton's repository index: each loaded version, by model name and version number."""
    return [
        {"name": name, "version": version, "state": READY, "reason": ""}
        for name, model in sorted(registry.models.items())
        for version in model.versions
    ]
