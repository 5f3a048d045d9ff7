"""Requests/s and latency of fraud_mlp: Triton called directly vs through TritonBackend.

Loopback, bounded: each case runs `--seconds` with `--concurrency` callers, one batch of `--rows`
per call, on uvloop as `mlgate serve` runs. In-process onnxruntime is measured beside them.
Client CPU per call (this process, all threads) shows the caller's own cost, which a shared or
busy machine blurs less than latency.

    .venv/bin/python -m tests.triton_support.bench
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpc_aio
import uvloop
from tritonclient import grpc as grpcclient

from service.backends.onnx import OnnxBackend, OnnxOptions
from service.backends.triton import TritonBackend
from service.backends.triton_options import TritonOptions
from tests.conftest import MODELS_DIR
from tests.triton_support import MAX_BATCH_SIZE, start_triton

Call = Callable[[], Awaitable[Any]]


async def measure(
    call: Call, concurrency: int, seconds: float
) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, p99 ms, client CPU µs per call) of `call` made by `concurrency`
    callers for `seconds`."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while (started := time.perf_counter()) < end:
            await call()
            latencies.append(time.perf_counter() - started)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return len(latencies) / elapsed, float(p50), float(p99), cpu / len(latencies) * 1e6


async def run(endpoint: str, rows: int, concurrencies: list[int], seconds: float) -> None:
    batch = np.random.default_rng(0).normal(size=(rows, 32)).astype(np.float32)
    client = grpc_aio.InferenceServerClient(endpoint)

    async def direct() -> Any:
        tensor = grpcclient.InferInput("features", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = await client.infer(
            "fraud_mlp", [tensor], "2", [grpcclient.InferRequestedOutput("probability")]
        )
        return result.as_numpy("probability")

    backend = await TritonBackend.open(
        TritonOptions(endpoints=[endpoint]), "fraud_mlp", "2", MAX_BATCH_SIZE
    )
    executor = ThreadPoolExecutor(2)
    onnx = OnnxBackend(MODELS_DIR / "fraud_mlp" / "2" / "model.onnx", OnnxOptions(), executor)
    cases: dict[str, Call] = {
        "Triton, tritonclient.grpc.aio directly": direct,
        "Triton, through TritonBackend": lambda: backend.infer({"features": batch}),
        "in-process OnnxBackend": lambda: onnx.infer({"features": batch}),
    }
    try:
        for call in cases.values():
            await measure(call, 4, 0.5)  # warm-up
        print("| case | rows | concurrency | requests/s | p50 ms | p99 ms | client CPU µs/call |")
        print("|---|---|---|---|---|---|---|")
        for concurrency in concurrencies:
            for name, call in cases.items():
                rps, p50, p99, cpu = await measure(call, concurrency, seconds)
                print(
                    f"| {name} | {rows} | {concurrency} | {rps:.0f} | {p50:.2f} | {p99:.2f} "
                    f"| {cpu:.0f} |"
                )
    finally:
        await backend.close()
        await client.close()
        executor.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_triton(Path(tmp), only_fraud_mlp=True)
        try:
            server.wait_ready()
            uvloop.run(run(server.grpc, args.rows, args.concurrency, args.seconds))
        finally:
            server.kill()


if __name__ == "__main__":
    main()
