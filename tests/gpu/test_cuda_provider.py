"""The CUDA and TensorRT execution providers on a real GPU.

Skipped where onnxruntime has no CUDAExecutionProvider (the CPU package, as in CI). On a machine
with an NVIDIA GPU and `pip install onnxruntime-gpu`, `pytest tests/gpu` runs them:
docs/benchmarks.md ("On a GPU") gives the last run and its figures.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import importlib.util
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from loadtests.repository import changed_repository, merged
from service.backends.onnx import OnnxBackend, OnnxOptions
from tests.conftest import MODELS_DIR, start_gateway
from tests.integration.test_batching_http import body, metric

CUDA: Final = "CUDAExecutionProvider"
TENSORRT: Final = "TensorrtExecutionProvider"
CPU: Final = "CPUExecutionProvider"
FRAUD = MODELS_DIR / "fraud_mlp" / "2" / "model.onnx"
HEAVY = MODELS_DIR / "heavy_mlp" / "1" / "model.onnx"
# cuBLAS may multiply in TF32 on the GPU: probabilities agree with the CPU's to ~1e-3.
TOLERANCE = 5e-3

pytestmark = pytest.mark.skipif(
    CUDA not in ort.get_available_providers(),
    reason="this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu on an NVIDIA GPU)",
)


def tensorrt_installed() -> bool:
    return ctypes.util.find_library("nvinfer") is not None or bool(
        importlib.util.find_spec("tensorrt")
    )


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown()


def cpu_probabilities(path: Path, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=[CPU])
    result: np.ndarray = session.run(["probability"], {"features": features})[0]
    return result


def demo_rows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 32), dtype=np.float32) * 20


@pytest.mark.parametrize("path", [FRAUD, HEAVY], ids=["fraud_mlp", "heavy_mlp"])
@pytest.mark.parametrize("rows", [1, 64])
async def test_cuda_runs_on_the_gpu_and_agrees_with_the_cpu(
    executor: ThreadPoolExecutor, path: Path, rows: int
) -> None:
    backend = OnnxBackend(path, OnnxOptions(providers=[CUDA, CPU]), executor)
    assert backend.device == "cuda"
    features = demo_rows(rows)
    got = (await backend.infer({"features": features}))["probability"]
    np.testing.assert_allclose(got, cpu_probabilities(path, features), atol=TOLERANCE)


async def test_tensorrt_runs_or_falls_back_to_cuda_with_a_warning(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.backends.onnx"):
        backend = OnnxBackend(FRAUD, OnnxOptions(providers=[TENSORRT, CUDA, CPU]), executor)
    if tensorrt_installed():
        assert backend.device == "tensorrt"
    else:
        assert backend.device == "cuda"
        assert f"could not start {TENSORRT}" in caplog.text
    features = demo_rows(8)
    got = (await backend.infer({"features": features}))["probability"]
    np.testing.assert_allclose(got, cpu_probabilities(FRAUD, features), atol=TOLERANCE)


def gpu_repository(tmp: Path) -> Path:
    """The repository with CUDA first among heavy_mlp's providers."""
    providers = {"onnxruntime": {"providers": [CUDA, CPU]}}
    return changed_repository(
        MODELS_DIR, tmp / "models", "heavy_mlp", lambda config: merged(config, providers)
    )


def test_the_gateway_batches_concurrent_requests_on_the_gpu(tmp_path: Path) -> None:
    gateway = start_gateway(
        tmp_path, "--models", str(gpu_repository(tmp_path)), "--log-level", "info"
    )
    try:
        requests = [demo_rows(1 + i % 4, seed=i) for i in range(96)]

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
                return await asyncio.gather(
                    *(client.post("/v2/models/heavy_mlp/infer", json=body(x)) for x in requests)
                )

        responses = asyncio.run(send_all())
        for x, response in zip(requests, responses, strict=True):
            assert response.status_code == 200, response.text
            [output] = response.json()["outputs"]
            got = np.asarray(output["data"], np.float32).reshape(output["shape"])
            np.testing.assert_allclose(got, cpu_probabilities(HEAVY, x), atol=TOLERANCE)
        batches = metric(gateway.url, "mlgate_batch_size_count")
        rows = metric(gateway.url, "mlgate_batch_size_sum")
        # Warm-up runs one batch outside the batcher: every counted batch served requests.
        assert rows == sum(len(x) for x in requests)
        assert batches < len(requests) / 2
    finally:
        gateway.stop()
    assert "loaded model heavy_mlp: versions 1 (default 1) on cuda" in gateway.log.read_text()
