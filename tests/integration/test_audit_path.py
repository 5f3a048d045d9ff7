"""Every answered prediction leaves exactly one audit record, with what was scored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np

from service.audit import AuditRecord
from service.audit.reader import tail
from tests.conftest import RedisServer, start_gateway


async def records(url: str, model: str) -> list[AuditRecord]:
    return [r async for r in tail(url, model=model, follow=False)]


async def wait_for(url: str, model: str, n: int, within_s: float = 10.0) -> list[AuditRecord]:
    deadline = time.monotonic() + within_s
    got = await records(url, model)
    while len(got) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        got = await records(url, model)
    return got


def test_n_requests_leave_n_records_in_the_redis_stream(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    audit_url = f"redis://127.0.0.1:{redis_server.port}/3"
    gw = start_gateway(tmp_path, "--demo-entities", "500", env={"MLGATE_AUDIT": audit_url})
    try:
        sent = []
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for i in range(50):
                rid = f"req-{i}"
                body = {"entities": [f"u{i}", "nobody"], "request_id": rid}
                r = c.post("/v1/models/fraud_mlp:predict", json=body)
                assert r.status_code == 200
                sent.append((rid, r.json()["predictions"]))
            bad = c.post("/v1/models/fraud_mlp:predict", json={"entities": []})
            assert bad.status_code == 400  # refused requests are not predictions
        got = asyncio.run(wait_for(audit_url, "fraud_mlp", len(sent)))
    finally:
        gw.stop()
    assert [r.request_id for r in got] == [rid for rid, _ in sent]
    first = got[0]
    assert first.version == "2" and first.route == "primary"
    assert first.entity_ids == ["u0", "nobody"]
    values, status = first.features["txn_stats"]
    assert values.shape == (2, 16) and list(status) == [0, 2]  # fresh, missing
    assert first.inputs["features"].shape == (2, 32)
    np.testing.assert_allclose(first.outputs["probability"].reshape(-1), sent[0][1], atol=1e-6)
    assert set(first.latency_us) == {"features", "infer", "total"}


def test_records_are_flushed_to_the_file_on_shutdown(tmp_path: Path) -> None:
    audit_url = f"file://{tmp_path}/audit.log"
    gw = start_gateway(tmp_path, "--demo-entities", "10", env={"MLGATE_AUDIT": audit_url})
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for i in range(20):
                x = {"name": "features", "datatype": "FP32", "shape": [1, 32], "data": [i] * 32}
                assert (
                    c.post(
                        "/v2/models/fraud_mlp/infer", json={"id": f"r{i}", "inputs": [x]}
                    ).status_code
                    == 200
                )
    finally:
        gw.stop()  # SIGTERM: the queue is flushed before exit
    got = asyncio.run(records(audit_url, "fraud_mlp"))
    assert [r.request_id for r in got] == [f"r{i}" for i in range(20)]
    assert got[3].entity_ids is None and got[3].features == {}
