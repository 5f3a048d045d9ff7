"""Workloads: entity distributions, request shapes, model mix, wire encodings."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import replace

import numpy as np
import orjson
import pytest

from loadtests.workloads import (
    SCENARIOS,
    KeyDistribution,
    ModelChoice,
    Workload,
    draw_calls,
    encode_bytes_tensor,
    entity_sampler,
    grpc_requests,
    http_requests,
    parse_models,
)


def share_of_top_keys(keys: KeyDistribution, top: int = 1000) -> float:
    draws = entity_sampler(np.random.default_rng(0), 100_000, keys, 1.1)(200_000)
    counts = np.sort(np.bincount(draws, minlength=100_000))[::-1]
    return float(counts[:top].sum() / counts.sum())


def test_zipf_puts_most_traffic_on_a_few_hot_keys_and_uniform_does_not() -> None:
    assert share_of_top_keys("zipf") > 0.5
    assert share_of_top_keys("uniform") < 0.05


def test_requests_name_distinct_entities_from_the_loaded_set() -> None:
    workload = Workload(SCENARIOS["predict-32-zipf"], key_space=1000, pool=200)
    for call in draw_calls(workload):
        assert call.entities is not None
        assert len(call.entities) == len(set(call.entities)) == 32
        assert all(0 <= int(e[1:]) < 1000 for e in call.entities)


def test_model_mix_follows_its_weights() -> None:
    workload = Workload(SCENARIOS["mix"], pool=4000)
    counts = Counter(str(c.model) for c in draw_calls(workload))
    assert counts["fraud_mlp/1=0.45"] == pytest.approx(1800, abs=150)
    assert counts["heavy_mlp/1=0.1"] == pytest.approx(400, abs=80)


def test_http_bodies_have_the_gateway_shapes() -> None:
    (path, body), *_ = http_requests(Workload(SCENARIOS["predict-8-zipf"], pool=1))
    assert path == "/v1/models/fraud_mlp:predict"
    assert len(orjson.loads(body)["entities"]) == 8

    (path, body), *_ = http_requests(Workload(SCENARIOS["v2-dense-32"], pool=1))
    assert path == "/v2/models/fraud_mlp/versions/2/infer"
    (tensor,) = orjson.loads(body)["inputs"]
    assert tensor["name"] == "features" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [32, 32] and len(tensor["data"]) == 32 * 32

    (path, body), *_ = http_requests(Workload(SCENARIOS["v2-entities-8"], pool=1))
    (tensor,) = orjson.loads(body)["inputs"]
    assert tensor["name"] == "user_id" and tensor["datatype"] == "BYTES"
    assert tensor["shape"] == [8] and all(e.startswith("u") for e in tensor["data"])


def test_bytes_tensor_is_length_prefixed_little_endian() -> None:
    raw = encode_bytes_tensor(["u1", "u12345"])
    assert raw == struct.pack("<I", 2) + b"u1" + struct.pack("<I", 6) + b"u12345"


def test_grpc_requests_carry_raw_contents_matching_their_shape() -> None:
    (dense,) = grpc_requests(Workload(SCENARIOS["v2-dense-1"], pool=1))
    assert dense.inputs[0].datatype == "FP32"
    assert list(dense.inputs[0].shape) == [1, 32]
    assert len(dense.raw_input_contents[0]) == 32 * 4
    (ids,) = grpc_requests(Workload(SCENARIOS["v2-entities-8"], pool=1))
    assert ids.model_version == "2"
    assert list(ids.inputs[0].shape) == [8]
    with pytest.raises(ValueError, match="HTTP only"):
        grpc_requests(Workload(SCENARIOS["predict-1"], pool=1))


def test_model_choices_parse_and_print_back() -> None:
    mix = parse_models("fraud_mlp/2=0.45, heavy_mlp")
    assert mix == (ModelChoice("fraud_mlp", "2", 0.45), ModelChoice("heavy_mlp"))
    assert [str(m) for m in mix] == ["fraud_mlp/2=0.45", "heavy_mlp"]
    with pytest.raises(ValueError):
        ModelChoice.parse("fraud_mlp=0")


def test_a_pinned_version_is_in_the_predict_path() -> None:
    pinned = replace(SCENARIOS["predict-1"], models=parse_models("fraud_mlp/1"))
    ((path, _),) = http_requests(Workload(pinned, pool=1))
    assert path == "/v1/models/fraud_mlp/versions/1:predict"
