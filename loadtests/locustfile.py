"""Locust users that send the same scenarios as `mlgate bench`, for teams that already run Locust.

    locust -f loadtests/locustfile.py --headless -u 8 -t 30s \\
        --host http://127.0.0.1:8000 --mlgate-scenario predict-8-zipf HttpScenarioUser
    locust -f loadtests/locustfile.py --headless -u 8 -t 30s \\
        --mlgate-grpc 127.0.0.1:8001 --mlgate-scenario v2-entities-8 GrpcScenarioUser

Name one user class per Locust process. gRPC on gevent runs each call's wait on gevent's
native thread pool; it is slow, jittery at start, and was seen to stall HTTP users sharing
its hub (grpcio 1.85, locust 2.47). Users wait for nothing between requests, so ``-u`` is the
closed-loop concurrency. Locust costs far more per request than `mlgate bench run` (see the
generator's ceiling in docs/benchmarks.md): prefer the native generator for figures, Locust
for its UI and for load shapes it scripts well (ramps, steps).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from functools import cache
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, events, task
from locust.argument_parser import LocustArgumentParser

from loadtests.workloads import SCENARIOS, Workload, grpc_requests, http_requests

# gRPC's own threads must yield to gevent, or one blocking call stalls every Locust user.
grpc_gevent.init_gevent()

_HEADERS = {"Content-Type": "application/json"}
_TIMEOUT_S = 5.0


# Locust's EventHook is unannotated.
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--mlgate-scenario",
        choices=sorted(SCENARIOS),
        default="predict-8-zipf",
        help="a scenario of `mlgate bench run`",
    )
    parser.add_argument("--mlgate-key-space", type=int, default=100_000, help="ids u0 .. u{N-1}")
    parser.add_argument("--mlgate-grpc", default="127.0.0.1:8001", help="gRPC host:port")


# One pool per process, shared by its users; each user starts at its own random point in it.
@cache
def _http_pool(scenario: str, key_space: int) -> list[tuple[str, bytes]]:
    return http_requests(Workload(SCENARIOS[scenario], key_space=key_space))


@cache
def _grpc_pool(scenario: str, key_space: int) -> list[Any]:
    return grpc_requests(Workload(SCENARIOS[scenario], key_space=key_space))


def _cycle(pool: list[Any]) -> Iterator[Any]:
    start = random.randrange(len(pool))
    return itertools.cycle(pool[start:] + pool[:start])


class HttpScenarioUser(FastHttpUser):
    """HTTP/1.1 keep-alive, like the gateway's real callers; V2 infer or entity predict."""

    network_timeout = _TIMEOUT_S

    def on_start(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        self._requests = _cycle(_http_pool(options.mlgate_scenario, options.mlgate_key_space))

    @task
    def call(self) -> None:
        path, body = next(self._requests)
        self.client.post(path, data=body, headers=_HEADERS)


class GrpcScenarioUser(User):
    """V2 ModelInfer over one channel per user; timings reported to Locust as 'grpc' requests."""

    def on_start(self) -> None:
        from tritonclient.grpc import service_pb2_grpc

        options = self.environment.parsed_options
        assert options is not None
        self._channel = grpc.insecure_channel(options.mlgate_grpc)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._requests = _cycle(_grpc_pool(options.mlgate_scenario, options.mlgate_key_space))

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def infer(self) -> None:
        request = next(self._requests)
        name = f"ModelInfer {request.model_name}/{request.model_version or 'default'}"
        error: Exception | None = None
        started = time.perf_counter()
        try:
            response = self._stub.ModelInfer(request, timeout=_TIMEOUT_S)
        except grpc.RpcError as exc:
            error, size = exc, 0
        else:
            size = response.ByteSize()
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=error,
            context={},
        )
