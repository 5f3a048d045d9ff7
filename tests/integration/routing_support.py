"""Model repositories for the routing tests: copies of fraud_mlp with a routing section, and
versions made for the occasion (a slow one, a broken one)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from models.build import IR_VERSION, OPSET, ModelSpec, Standardisation, build_model
from service.audit import AuditRecord
from service.audit.reader import tail
from tests.conftest import MODELS_DIR, GatewayProcess

TOKEN = "routing-tests-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@cache
def slow_model() -> bytes:
    """fraud_mlp's signature with three 4096-wide layers: a hundred times slower than version 2."""
    spec = ModelSpec("fraud_mlp", "9", hidden=(4096, 4096, 4096), seed=9, generated_weights=True)
    standardisation = Standardisation.fit(MODELS_DIR / "feature_views.yaml")
    return bytes(build_model(spec, standardisation).SerializeToString())


@cache
def nan_model() -> bytes:
    """fraud_mlp's signature, answering NaN for every row: it breaks the output contract."""
    weights = numpy_helper.from_array(np.full((32, 1), np.nan, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["probability"])],
        "broken",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 32])],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def add_model(
    root: Path,
    name: str,
    routing: dict[str, Any] | None = None,
    extra: dict[str, bytes] | None = None,
    sections: dict[str, Any] | None = None,
) -> Path:
    """A copy of fraud_mlp (versions 1 and 2) named `name`, plus `extra` versions and
    `sections` of config.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "feature_views.yaml").exists():
        shutil.copy(MODELS_DIR / "feature_views.yaml", root)
    directory = root / name
    shutil.copytree(MODELS_DIR / "fraud_mlp", directory)
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config.update(name=name, **(sections or {}))
    config.pop("version_backends", None)
    config.pop("triton", None)
    if routing is not None:
        config["routing"] = routing
        config.pop("default_version", None)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    for version, blob in (extra or {}).items():
        (directory / version).mkdir()
        (directory / version / "model.onnx").write_bytes(blob)
    return directory


# One client for every call: a new httpx client costs tens of milliseconds (its TLS context).
_CLIENT = httpx.Client(timeout=30)


def admin(
    gw: GatewayProcess, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return _CLIENT.request(method, f"{gw.url}/admin/{path}", json=body, headers=AUTH)


def predict(gw: GatewayProcess, model: str, *entities: str, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"entities": list(entities), **extra.pop("body", {})}
    return _CLIENT.post(f"{gw.url}/v1/models/{model}:predict", json=body, **extra)


def post(url: str, body: dict[str, Any], **extra: Any) -> httpx.Response:
    return _CLIENT.post(url, json=body, **extra)


def audit_records(
    gw: GatewayProcess,
    model: str,
    until: Callable[[list[AuditRecord]], bool],
    timeout_s: float = 15.0,
) -> list[AuditRecord]:
    """The model's audit records, once `until` holds for them (or after `timeout_s`)."""

    async def read() -> list[AuditRecord]:
        url = f"file://{gw.log.parent}/audit-{gw.port}.log"
        deadline = time.monotonic() + timeout_s
        while True:
            records = [r async for r in tail(url, model=model, follow=False)]
            if until(records) or time.monotonic() > deadline:
                return records
            await asyncio.sleep(0.1)

    return asyncio.run(read())
