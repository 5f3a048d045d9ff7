"""Workloads: which entities, how many per request, which models; encoded once, sent many times.

Requests are built before the clock starts (a pool of distinct bodies, cycled), so the
generator spends its time sending, not serialising. Entity ids are ``u0 .. u{N-1}``, the ids
``mlgate bench seed`` loads, drawn uniformly or Zipf-distributed (a few hot keys take most of
the traffic, as real users do).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import orjson

Api = Literal["predict", "v2-entities", "v2-dense"]
KeyDistribution = Literal["uniform", "zipf"]

FEATURE_WIDTH = 32
ENTITY_INPUT = "user_id"
DENSE_INPUT = "features"


@dataclass(frozen=True)
class ModelChoice:
    """One model (and optionally version) with its share of the traffic."""

    name: str
    version: str | None = None
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> ModelChoice:
        """``name[/version][=weight]``, e.g. ``fraud_mlp/2=0.45``."""
        target, _, weight = text.strip().partition("=")
        name, _, version = target.partition("/")
        if not name:
            raise ValueError(f"no model name in {text!r}")
        choice = cls(name, version or None, float(weight) if weight else 1.0)
        if choice.weight <= 0:
            raise ValueError(f"weight must be positive in {text!r}")
        return choice

    def __str__(self) -> str:
        target = f"{self.name}/{self.version}" if self.version else self.name
        return target if self.weight == 1.0 else f"{target}={self.weight:g}"


def parse_models(text: str) -> tuple[ModelChoice, ...]:
    return tuple(ModelChoice.parse(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Scenario:
    name: str
    api: Api
    rows: int
    """Entities per request (predict, v2-entities) or feature rows (v2-dense)."""
    keys: KeyDistribution
    models: tuple[ModelChoice, ...]
    description: str

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError("a request needs at least one row")
        if not self.models:
            raise ValueError("a scenario needs at least one model")


_FRAUD = (ModelChoice("fraud_mlp"),)
_FRAUD_V2 = (ModelChoice("fraud_mlp", "2"),)
_HEAVY = (ModelChoice("heavy_mlp"),)
_MIX = (
    ModelChoice("fraud_mlp", "1", 0.45),
    ModelChoice("fraud_mlp", "2", 0.45),
    ModelChoice("heavy_mlp", "1", 0.10),
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("predict-1", "predict", 1, "uniform", _FRAUD, "entity predict, 1 entity"),
        Scenario("predict-8-zipf", "predict", 8, "zipf", _FRAUD, "entity predict, 8 hot-key"),
        Scenario("predict-32-zipf", "predict", 32, "zipf", _FRAUD, "entity predict, 32 hot-key"),
        Scenario(
            "v2-entities-8", "v2-entities", 8, "uniform", _FRAUD_V2, "V2 infer, 8 user_id BYTES"
        ),
        Scenario("v2-dense-1", "v2-dense", 1, "uniform", _FRAUD_V2, "V2 infer, 1 FP32 row"),
        Scenario("v2-dense-32", "v2-dense", 32, "uniform", _FRAUD_V2, "V2 infer, 32 FP32 rows"),
        Scenario("mix", "v2-entities", 8, "zipf", _MIX, "V2 infer, 8 hot-key, 3 model versions"),
        Scenario(
            "heavy-1", "predict", 1, "uniform", _HEAVY, "entity predict on heavy_mlp, 1 entity"
        ),
        # 32 rows of heavy_mlp cost far more than the front's work on one request: the model,
        # not HTTP, is what this scenario saturates (the suite's overload run).
        Scenario(
            "heavy-32", "predict", 32, "uniform", _HEAVY, "entity predict on heavy_mlp, 32 entities"
        ),
    )
}


@dataclass(frozen=True)
class Workload:
    """A scenario plus how its requests are drawn; picklable, so each process builds its own."""

    scenario: Scenario
    key_space: int = 100_000
    zipf_s: float = 1.1
    pool: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scenario.api != "v2-dense" and self.scenario.rows > self.key_space:
            raise ValueError(f"{self.scenario.rows} distinct entities need a key space that big")
        if self.zipf_s <= 0:
            raise ValueError("the Zipf exponent must be positive")
        if self.pool < 1:
            raise ValueError("the request pool needs at least one request")

    def with_seed(self, seed: int) -> Workload:
        return replace(self, seed=seed)


@dataclass(frozen=True)
class Call:
    """One request: the model it targets, the rows it carries."""

    model: ModelChoice
    entities: list[str] | None
    dense: np.ndarray | None


def draw_calls(workload: Workload) -> list[Call]:
    """The request pool, reproducible from the workload's seed."""
    scenario = workload.scenario
    rng = np.random.default_rng(workload.seed)
    weights = np.array([m.weight for m in scenario.models])
    picks = rng.choice(len(scenario.models), size=workload.pool, p=weights / weights.sum())
    sampler = entity_sampler(rng, workload.key_space, scenario.keys, workload.zipf_s)
    calls: list[Call] = []
    for pick in picks.tolist():
        model = scenario.models[pick]
        if scenario.api == "v2-dense":
            rows = rng.standard_normal((scenario.rows, FEATURE_WIDTH)).astype(np.float32)
            calls.append(Call(model, None, rows))
        else:
            ids = distinct(sampler, scenario.rows)
            calls.append(Call(model, [f"u{i}" for i in ids.tolist()], None))
    return calls


def entity_sampler(
    rng: np.random.Generator, key_space: int, keys: KeyDistribution, zipf_s: float
) -> Callable[[int], np.ndarray]:
    """A function drawing n entity indexes in [0, key_space) from the chosen distribution."""
    if keys == "uniform":
        return lambda n: rng.integers(0, key_space, size=n)
    # Bounded Zipf: P(rank k) ~ 1/k^s over the loaded set (numpy's zipf is unbounded). Ranks
    # map to ids through a fixed permutation so the hot keys are not simply u0, u1, ...
    cdf = np.cumsum(1.0 / np.arange(1, key_space + 1, dtype=np.float64) ** zipf_s)
    cdf /= cdf[-1]
    ids = np.random.default_rng(0).permutation(key_space)
    return lambda n: ids[np.minimum(np.searchsorted(cdf, rng.random(n)), key_space - 1)]


def distinct(sampler: Callable[[int], np.ndarray], n: int) -> np.ndarray:
    """n distinct draws in draw order: a request names each entity once, as a caller would."""
    for _ in range(32):
        candidates = sampler(4 * n)
        _, first = np.unique(candidates, return_index=True)
        if len(first) >= n:
            return candidates[np.sort(first)[:n]]
    raise ValueError(f"cannot draw {n} distinct entities: the key space is too concentrated")


def http_path(scenario: Scenario, model: ModelChoice) -> str:
    version = f"/versions/{model.version}" if model.version else ""
    if scenario.api == "predict":
        return f"/v1/models/{model.name}{version}:predict"
    return f"/v2/models/{model.name}{version}/infer"


def http_body(api: Api, call: Call) -> bytes:
    if api == "predict":
        return orjson.dumps({"entities": call.entities})
    if call.dense is not None:
        rows = np.round(call.dense.astype(np.float64), 4)
        tensor = {
            "name": DENSE_INPUT,
            "datatype": "FP32",
            "shape": list(rows.shape),
            "data": rows.ravel().tolist(),
        }
    else:
        assert call.entities is not None
        tensor = {
            "name": ENTITY_INPUT,
            "datatype": "BYTES",
            "shape": [len(call.entities)],
            "data": call.entities,
        }
    return orjson.dumps({"inputs": [tensor]})


def http_requests(workload: Workload) -> list[tuple[str, bytes]]:
    """(path, JSON body) for each request of the pool."""
    scenario = workload.scenario
    return [
        (http_path(scenario, c.model), http_body(scenario.api, c)) for c in draw_calls(workload)
    ]


def encode_bytes_tensor(values: list[str]) -> bytes:
    """The V2 raw BYTES layout: per element a 4-byte little-endian length, then the bytes."""
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def grpc_requests(workload: Workload) -> list[Any]:
    """ModelInferRequest messages for the pool (the generated stubs carry no types)."""
    from tritonclient.grpc import service_pb2

    if workload.scenario.api == "predict":
        raise ValueError("the entity predict API is HTTP only; use a v2-* scenario over gRPC")
    requests: list[Any] = []
    for call in draw_calls(workload):
        request = service_pb2.ModelInferRequest(
            model_name=call.model.name, model_version=call.model.version or ""
        )
        tensor = request.inputs.add()
        if call.dense is not None:
            tensor.name, tensor.datatype = DENSE_INPUT, "FP32"
            tensor.shape.extend(call.dense.shape)
            request.raw_input_contents.append(call.dense.astype("<f4").tobytes())
        else:
            assert call.entities is not None
            tensor.name, tensor.datatype = ENTITY_INPUT, "BYTES"
            tensor.shape.append(len(call.entities))
            request.raw_input_contents.append(encode_bytes_tensor(call.entities))
        requests.append(request)
    return requests
