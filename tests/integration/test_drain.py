"""SIGTERM drains: readiness fails at once, the gateway serves on for the drain delay, then stops
accepting, answers what is in flight, flushes the audit log and exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtests.processes import free_port
from service.audit.reader import tail
from tests.conftest import GatewayProcess, start_gateway

DELAY_S = 2.0
PREDICT = "/v1/models/fraud_mlp:predict"


def body(request_id: str) -> dict[str, object]:
    return {"entities": ["u1", "u2"], "request_id": request_id}


async def load(url: str, client_no: int, stop: asyncio.Event, answered: list[str]) -> None:
    """One client sending predictions on a kept-alive connection until `stop` (at most 500)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for i in range(500):
            if stop.is_set():
                return
            rid = f"load-{client_no}-{i}"
            r = await client.post(PREDICT, json=body(rid))
            assert r.status_code == 200, r.text
            answered.append(rid)


async def slow_body(rid: str, until: float) -> AsyncIterator[bytes]:
    """A request body that arrives in two parts, the second after `until` (time.monotonic())."""
    whole = httpx.Request("POST", "/", json=body(rid)).content
    yield whole[:10]
    await asyncio.sleep(until - time.monotonic())
    yield whole[10:]


async def probe(url: str, path: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        return (await client.get(path)).status_code


def v2_readiness(port: int) -> tuple[bool, bool, bool]:
    """What a KServe V2 gRPC client (tritonclient) is told: server live, server ready, model
    ready."""
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return (
            client.is_server_live(),
            client.is_server_ready(),
            client.is_model_ready("fraud_mlp"),
        )
    finally:
        client.close()


def grpc_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return int(check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


async def drain_under_load(gw: GatewayProcess, grpc_port: int) -> tuple[list[str], float]:
    """SIGTERM while clients send; what the gateway says during the delay is asserted here.
    Returns the answered request ids and how long readiness took to fail."""
    stop = asyncio.Event()
    answered: list[str] = []
    clients = [asyncio.create_task(load(gw.url, n, stop, answered)) for n in range(4)]
    await asyncio.sleep(0.5)
    assert grpc_health(grpc_port) == health_pb2.HealthCheckResponse.SERVING
    assert v2_readiness(grpc_port) == (True, True, True)
    assert await probe(gw.url, "/v2/health/ready") == 200
    assert await probe(gw.url, "/v2/models/fraud_mlp/ready") == 200
    async with httpx.AsyncClient(base_url=gw.url, timeout=15) as slow_client:
        # In flight when the delay ends and the gateway stops accepting: it must be answered.
        sigterm_at = time.monotonic() + 0.3
        slow = asyncio.create_task(
            slow_client.post(
                PREDICT,
                content=slow_body("in-flight", sigterm_at + DELAY_S + 0.7),
                headers={"content-type": "application/json"},
            )
        )
        await asyncio.sleep(sigterm_at - time.monotonic())
        gw.proc.send_signal(signal.SIGTERM)
        while await probe(gw.url, "/v2/health/ready") != 503:
            pass
        not_ready_after = time.monotonic() - sigterm_at
        assert await probe(gw.url, "/v2/health/live") == 200
        status = await asyncio.to_thread(grpc_health, grpc_port)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The V2 readiness calls agree with the probes: live, but neither server nor model ready.
        assert await asyncio.to_thread(v2_readiness, grpc_port) == (True, False, False)
        assert await probe(gw.url, "/v2/models/fraud_mlp/ready") == 503
        # A client arriving during the delay, on a connection of its own, is still served.
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as late:
            r = await late.post(PREDICT, json=body("during-delay"))
        assert r.status_code == 200, r.text
        answered.append("during-delay")
        # Still within the delay (the checks above take their time on a loaded machine).
        await asyncio.sleep(max(0.0, sigterm_at + DELAY_S * 0.75 - time.monotonic()))
        assert await probe(gw.url, "/v2/health/ready") == 503
        stop.set()
        await asyncio.gather(*clients)
        response = await slow
        assert response.status_code == 200, response.text
        answered.append("in-flight")
    return answered, not_ready_after


def test_sigterm_drains_without_failing_a_request_and_flushes_the_audit_log(
    tmp_path: Path,
) -> None:
    audit = f"file://{tmp_path}/audit.log"
    grpc_port = free_port()
    gw = start_gateway(
        tmp_path,
        "--demo-entities",
        "10",
        "--grpc-port",
        str(grpc_port),
        "--drain-delay-s",
        str(DELAY_S),
        env={"MLGATE_AUDIT": audit},
    )
    try:
        answered, not_ready_after = asyncio.run(drain_under_load(gw, grpc_port))
        assert gw.proc.wait(timeout=20) == 0, gw.log.read_text()
    finally:
        gw.stop()
    assert not_ready_after < 0.5
    assert len(answered) > 20
    recorded = asyncio.run(audited(audit))
    assert sorted(recorded) == sorted(answered)


async def audited(url: str) -> list[str]:
    return [r.request_id async for r in tail(url, model="fraud_mlp", follow=False)]


def test_sigterm_to_the_supervisor_drains_every_worker(tmp_path: Path) -> None:
    gw = start_gateway(
        tmp_path, "--workers", "2", "--demo-entities", "10", "--drain-delay-s", str(DELAY_S)
    )
    try:
        deadline = time.monotonic() + 30
        # Both workers ready before the signal (fresh connections spread over them).
        while time.monotonic() < deadline:
            if all(httpx.get(f"{gw.url}/v2/health/ready").status_code == 200 for _ in range(8)):
                break
            time.sleep(0.1)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        # The supervisor looks at its signals twice a second, then forwards them.
        while httpx.get(f"{gw.url}/v2/health/ready").status_code != 503:
            assert time.monotonic() - signalled < 1.0
        # Fresh connections land on either worker: every one says not ready, and serves.
        for i in range(10):
            assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 503
            assert httpx.get(f"{gw.url}/v2/health/live").status_code == 200
            r = httpx.post(f"{gw.url}{PREDICT}", json=body(f"r{i}"))
            assert r.status_code == 200, r.text
        assert time.monotonic() - signalled < DELAY_S
        assert gw.proc.wait(timeout=20) == 0, gw.log.read_text()
    finally:
        gw.stop()
