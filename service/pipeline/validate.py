"""The validate stage: a request's tensors against the version that will answer it.

Names, datatypes, shapes, batch sizes and values are checked, and entity ids split off from
the tensors, before any feature is fetched or any row is scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.pipeline.served import Served
from service.protocol.datatypes import v2_datatype
from service.protocol.errors import InvalidInput
from service.protocol.limits import Limits
from service.repository.config import InputSpec


def requested_outputs(served: Served, requested: list[str] | None) -> list[str]:
    if requested is None:
        return served.output_names
    for name in requested:
        if name not in served.output_names:
            raise InvalidInput(
                f"unknown output '{name}' for model '{served.model}'; "
                f"available: {', '.join(served.output_names)}"
            )
    return requested


def split_inputs(
    served: Served, given: dict[str, np.ndarray], limits: Limits
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Check names, datatypes, shapes and values; split off entity ids."""
    plan = served.plan
    inputs: dict[str, np.ndarray] = {}
    entity_ids: list[str] | None = None
    batch: int | None = None
    for name, arr in given.items():
        if plan is not None and name == plan.entity:
            limits.entities(arr.size)
            entity_ids = decode_entity_ids(name, arr)
            rows = len(entity_ids)
        else:
            spec = served.inputs.get(name)
            if spec is None:
                raise InvalidInput(
                    f"unknown input '{name}' for model '{served.model}'; "
                    f"expected: {', '.join(expected_inputs(served))}"
                )
            check_tensor(served, spec, arr)
            inputs[name] = arr
            rows = arr.shape[0] if served.mv.config.max_batch_size > 0 else 1
        if batch is not None and rows != batch:
            raise InvalidInput(f"inputs disagree on the batch size ({batch} vs {rows})")
        batch = rows
    for name in served.inputs:
        fed_by_entity = plan is not None and name == plan.input_name and entity_ids is not None
        if name not in inputs and not fed_by_entity:
            raise InvalidInput(
                f"missing input '{name}' for model '{served.model}'; "
                f"expected: {', '.join(expected_inputs(served))}"
            )
    if plan is not None and entity_ids is not None and plan.input_name in inputs:
        raise InvalidInput(f"give either '{plan.entity}' or '{plan.input_name}', not both")
    if batch is not None:
        check_batch(served, batch)
    return inputs, entity_ids


def entity_list(entity_ids: Sequence[object], limits: Limits) -> list[str]:
    """The entity-keyed API's ids: a non-empty list of non-empty strings, within the limit."""
    limits.entities(len(entity_ids))
    if not entity_ids or not all(isinstance(e, str) and e for e in entity_ids):
        raise InvalidInput("'entities' must be a non-empty list of non-empty strings")
    return list(entity_ids)  # type: ignore[arg-type]


def instance_inputs(served: Served, instances: Sequence[object]) -> dict[str, np.ndarray]:
    """KServe V1 `instances` as input tensors: objects naming the inputs (TensorFlow Serving's
    row format), or, for a model of one input, each row that input's values in order."""
    if all(isinstance(row, dict) for row in instances):
        rows: list[dict[str, object]] = list(instances)  # type: ignore[arg-type]
        names = list(rows[0])
        for i, row in enumerate(rows):
            if list(row) != names:
                raise InvalidInput(f"instances[{i}] names other inputs than instances[0]")
        if served.plan is not None and served.plan.entity in names:
            raise InvalidInput(
                f"'instances' carry model inputs; send entity ids as 'entities', "
                f"not '{served.plan.entity}'"
            )
        columns = {name: [row[name] for row in rows] for name in names}
    elif any(isinstance(row, dict) for row in instances):
        raise InvalidInput("'instances' must all be objects or all be rows of values")
    elif len(served.inputs) == 1:
        columns = {next(iter(served.inputs)): list(instances)}
    else:
        raise InvalidInput(
            f"model '{served.model}' has {len(served.inputs)} inputs: give each instance "
            f"as an object naming them ({', '.join(served.inputs)})"
        )
    tensors = {}
    for name, values in columns.items():
        try:
            # An unknown name converts as it comes, for split_inputs to refuse by name.
            tensors[name] = np.asarray(values, dtype=served.input_dtypes.get(name))
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(
                f"input '{name}': instances must be equally long rows of numbers"
            ) from None
    return tensors


def check_entities(served: Served, entity_ids: list[str]) -> None:
    """Entity ids for a version: it must build an input from features, and take that many."""
    if served.plan is None:
        raise InvalidInput(f"model '{served.model}' takes no entity features; use the V2 infer")
    check_batch(served, len(entity_ids))


def check_batch(served: Served, rows: int) -> None:
    limit = served.mv.config.max_batch_size
    # A batcher splits larger requests into batches the model takes.
    if limit > 0 and rows > limit and served.batcher is None:
        raise InvalidInput(
            f"batch of {rows} rows exceeds max_batch_size {limit} of model '{served.model}'"
        )


def expected_inputs(served: Served) -> list[str]:
    names = list(served.inputs)
    if served.plan is not None:
        names.append(f"{served.plan.entity} (entity ids, in place of {served.plan.input_name})")
    return names


def check_tensor(served: Served, spec: InputSpec, arr: np.ndarray) -> None:
    name = spec.name
    dtype = served.input_dtypes[name]
    if arr.dtype != dtype:
        raise InvalidInput(
            f"input '{name}': datatype {v2_datatype(arr.dtype)} does not match "
            f"the model's {spec.datatype}"
        )
    dims = list(spec.dims)
    if served.mv.config.max_batch_size > 0:
        dims = [-1, *dims]
    if arr.ndim != len(dims) or any(d not in (-1, s) for d, s in zip(dims, arr.shape, strict=True)):
        raise InvalidInput(f"input '{name}': shape {list(arr.shape)} does not match {dims}")
    if served.mv.config.max_batch_size > 0 and arr.shape[0] == 0:
        raise InvalidInput(f"input '{name}': the batch is empty")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInput(f"input '{name}' contains NaN or infinite values")


def decode_entity_ids(name: str, arr: np.ndarray) -> list[str]:
    if arr.dtype.kind != "O" or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 1):
        raise InvalidInput(
            f"input '{name}': entity ids must be a BYTES tensor of shape [n] or [n, 1]"
        )
    try:
        ids = [x.decode() if isinstance(x, bytes) else x for x in arr.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': entity ids must be valid UTF-8") from None
    if not ids or not all(ids):
        raise InvalidInput(f"input '{name}': entity ids must be non-empty")
    return ids
