"""mlgate_inflight_requests, what the HorizontalPodAutoscaler scales on (deploy/): inference
requests being handled, over HTTP and gRPC (unary and stream), summed over a pod's workers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from loadtests.processes import free_port
from tests.conftest import GatewayProcess, start_workers

# A lone request waits this long for company in the batcher: long enough to be seen in flight.
DELAY_US = 1_000_000
SAMPLE = re.compile(r'^mlgate_inflight_requests\{endpoint="(\w+)"\} (\S+)$', re.MULTILINE)


def in_flight(url: str) -> dict[str, float]:
    return {e: float(v) for e, v in SAMPLE.findall(httpx.get(f"{url}/metrics", timeout=5).text)}


def infer_request() -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name="fraud_mlp")
    tensor = msg.inputs.add(name="features", datatype="FP32", shape=[1, 32])
    tensor.contents.fp32_contents.extend(np.zeros(32, dtype=np.float32).tolist())
    return msg


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, int]]:
    grpc_port = free_port()
    gw, _ = start_workers(
        tmp_path_factory.mktemp("inflight"),
        *("--grpc-port", str(grpc_port), "--batching-delay-us", str(DELAY_US)),
    )
    try:
        yield gw, grpc_port
    finally:
        gw.stop()


def test_requests_are_counted_in_flight_until_answered_over_http_and_grpc(
    gateway: tuple[GatewayProcess, int],
) -> None:
    gw, grpc_port = gateway
    v2_body = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u2"]}]}
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls: dict[str, Callable[[], object]] = {
            "predict": lambda: httpx.post(
                f"{gw.url}/v1/models/fraud_mlp:predict", json={"entities": ["u1"]}, timeout=30
            ).raise_for_status(),
            "infer": lambda: httpx.post(
                f"{gw.url}/v2/models/fraud_mlp/infer", json=v2_body, timeout=30
            ).raise_for_status(),
            "grpc_infer": lambda: stub.ModelInfer(infer_request(), timeout=30),
            "grpc_stream": lambda: list(stub.ModelStreamInfer(iter([infer_request()]), timeout=30)),
        }
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = [pool.submit(call) for call in calls.values()]
            # Each request is seen in flight at some scrape while it waits in the batcher.
            most = dict.fromkeys(calls, 0.0)
            while not all(answer.done() for answer in answers):
                for endpoint, value in in_flight(gw.url).items():
                    most[endpoint] = max(most.get(endpoint, 0.0), value)
            for answer in answers:
                answer.result()
    assert most == dict.fromkeys(calls, 1.0)
    assert in_flight(gw.url) == dict.fromkeys(calls, 0.0)
