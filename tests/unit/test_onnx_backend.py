"""The onnxruntime backend on the repository's real models."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.backends.base import TensorSignature
from service.backends.onnx import OnnxBackend, OnnxOptions
from service.protocol.errors import BackendError, InvalidInput, Unavailable
from tests.conftest import MODELS_DIR

FRAUD_V1 = MODELS_DIR / "fraud_mlp" / "1" / "model.onnx"
HEAVY = MODELS_DIR / "heavy_mlp" / "1" / "model.onnx"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


@pytest.fixture
def fraud(executor: ThreadPoolExecutor) -> OnnxBackend:
    return OnnxBackend(FRAUD_V1, OnnxOptions(), executor)


@pytest.fixture
def two_outputs(tmp_path: Path, executor: ThreadPoolExecutor) -> OnnxBackend:
    """x -> (x, -x): a model whose outputs can be told apart."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Neg", ["x"], ["neg"])],
        "two_outputs",
        inputs=[helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3])],
        outputs=[
            helper.make_tensor_value_info("same", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("neg", TensorProto.INT64, ["batch", 3]),
        ],
    )
    path = tmp_path / "model.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path
    )
    return OnnxBackend(path, OnnxOptions(), executor)


@pytest.mark.parametrize("rows", [1, 8])
async def test_infer_matches_a_direct_onnxruntime_session(fraud: OnnxBackend, rows: int) -> None:
    features = np.random.default_rng(rows).random((rows, 32), dtype=np.float32) * 50
    expected = ort.InferenceSession(FRAUD_V1).run(["probability"], {"features": features})[0]
    result = await fraud.infer({"features": features})
    assert list(result) == ["probability"]
    assert result["probability"].shape == (rows, 1)
    np.testing.assert_allclose(result["probability"], expected, rtol=0, atol=1e-6)


async def test_requested_outputs_are_the_only_ones_answered(two_outputs: OnnxBackend) -> None:
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert list(await two_outputs.infer({"x": x})) == ["same", "neg"]
    result = await two_outputs.infer({"x": x}, outputs=["neg"])
    assert list(result) == ["neg"]
    np.testing.assert_array_equal(result["neg"], -x)


async def test_unknown_output_is_invalid_input(two_outputs: OnnxBackend) -> None:
    with pytest.raises(InvalidInput, match=r"^unknown output 'nope'; available: same, neg$"):
        await two_outputs.infer({"x": np.zeros((1, 3), np.int64)}, outputs=["nope"])


def test_signature_has_v2_datatypes_and_a_dynamic_batch(two_outputs: OnnxBackend) -> None:
    assert two_outputs.signature() == (
        [TensorSignature("x", "INT64", (-1, 3))],
        [TensorSignature("same", "INT64", (-1, 3)), TensorSignature("neg", "INT64", (-1, 3))],
    )


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (
            np.zeros((2, 32), np.float64),
            "Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))",
        ),
        (np.zeros((2, 31), np.float32), "Got invalid dimensions for input: features"),
    ],
)
async def test_refused_tensors_are_invalid_input_without_runtime_noise(
    fraud: OnnxBackend, features: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await fraud.infer({"features": features})
    assert caught.value.message.startswith(f"the model refused its input: {message}")
    assert "[ONNXRuntimeError]" not in caught.value.message
    assert "\n" not in caught.value.message


async def test_missing_input_is_invalid_input(fraud: OnnxBackend) -> None:
    with pytest.raises(InvalidInput, match="features"):
        await fraud.infer({})


async def test_infer_does_not_block_the_event_loop(executor: ThreadPoolExecutor) -> None:
    heavy = OnnxBackend(HEAVY, OnnxOptions(), executor)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    # Tens of milliseconds of compute: a loop blocked by it would tick at most once.
    await heavy.infer({"features": np.ones((256, 32), np.float32)})
    task.cancel()
    assert ticks >= 5


@contextmanager
def every_thread_taken(executor: ThreadPoolExecutor, threads: int = 2) -> Iterator[None]:
    """While inside, the pool runs nothing else: each of its threads waits on an event."""
    release = threading.Event()
    held = [executor.submit(release.wait) for _ in range(threads)]
    try:
        yield
    finally:
        release.set()
        for future in held:
            future.result()


async def test_a_batch_measured_shorter_than_a_thread_hand_off_runs_on_the_event_loop(
    executor: ThreadPoolExecutor,
) -> None:
    # A generous bound: the test is about where the run goes, not about this machine's speed.
    fraud = OnnxBackend(FRAUD_V1, OnnxOptions(inline_below_us=50_000), executor)
    features = {"features": np.ones((8, 32), np.float32)}
    first = await fraud.infer(features)  # a size never measured goes to the pool
    with every_thread_taken(executor):
        again = await asyncio.wait_for(fraud.infer(features), timeout=10)
    np.testing.assert_array_equal(again["probability"], first["probability"])


async def test_batches_larger_than_any_measured_or_slower_than_the_bound_use_the_pool(
    executor: ThreadPoolExecutor,
) -> None:
    fraud = OnnxBackend(FRAUD_V1, OnnxOptions(inline_below_us=50_000), executor)
    await fraud.infer({"features": np.ones((8, 32), np.float32)})
    assert fraud.runs_inline(8) and not fraud.runs_inline(64)
    never = OnnxBackend(FRAUD_V1, OnnxOptions(inline_below_us=0), executor)
    await never.infer({"features": np.ones((8, 32), np.float32)})
    assert not never.runs_inline(8)
    heavy = OnnxBackend(HEAVY, OnnxOptions(), executor)
    await heavy.infer({"features": np.ones((256, 32), np.float32)})
    assert not heavy.runs_inline(256)


async def test_unavailable_provider_falls_back_to_cpu_with_a_warning(
    executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with caplog.at_level(logging.WARNING, logger="service.backends.onnx"):
        backend = OnnxBackend(FRAUD_V1, OnnxOptions(providers=["CUDAExecutionProvider"]), executor)
    assert backend.device == "cpu"
    assert "CUDAExecutionProvider" in caplog.text
    assert "falling back to CPUExecutionProvider" in caplog.text
    result = await backend.infer({"features": np.zeros((1, 32), np.float32)})
    assert result["probability"].shape == (1, 1)


def test_session_follows_the_thread_options(executor: ThreadPoolExecutor) -> None:
    backend = OnnxBackend(FRAUD_V1, OnnxOptions(intra_op_threads=1, inter_op_threads=1), executor)
    options = backend._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_unloadable_model_is_a_backend_error_naming_the_file(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(BackendError, match=rf"^{path}: onnxruntime cannot load it"):
        OnnxBackend(path, OnnxOptions(), executor)


class RecordingSession:
    """The backend's real onnxruntime session, with each feed it runs recorded."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
        self.feeds.append(dict(feed))
        return self.session.run(names, feed)


async def test_warmup_runs_one_row_of_each_input_in_its_declared_type(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    # Inputs of two types and a fixed leading dimension: a warm-up feeding float zeros, or a
    # batch of another size where the model fixes it, would be refused by onnxruntime.
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["ids"], ["ids_out"]),
            helper.make_node("Neg", ["score"], ["neg"]),
        ],
        "mixed_inputs",
        inputs=[
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [2, 5]),
        ],
        outputs=[
            helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("neg", TensorProto.FLOAT, [2, 5]),
        ],
    )
    path = tmp_path / "mixed.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path
    )
    backend = OnnxBackend(path, OnnxOptions(), executor)
    recording = RecordingSession(backend._session)
    backend._session = recording
    await backend.warmup()
    [feed] = recording.feeds  # it ran, once, on the real session
    assert sorted(feed) == ["ids", "score"]
    assert feed["ids"].dtype == np.int64 and feed["ids"].shape == (1, 3)
    assert feed["score"].dtype == np.float32 and feed["score"].shape == (2, 5)
    assert not feed["ids"].any() and not feed["score"].any()


async def test_closed_backend_is_unavailable(fraud: OnnxBackend) -> None:
    await fraud.close()
    with pytest.raises(Unavailable):
        await fraud.infer({"features": np.zeros((1, 32), np.float32)})
