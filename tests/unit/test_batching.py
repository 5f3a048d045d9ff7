"""The dynamic batcher: sizes, release reasons, queue policy, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batching import Batcher, BatchingConfig, Tensors
from service.protocol.errors import (
    BackendError,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    Unavailable,
)

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


class Doubler:
    """A run_batch: y = 2x and each row's position in its batch; records what it was given."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[list[float]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.running = 0
        self.peak = 0
        self._running_changed = asyncio.Condition()

    async def __call__(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        self.batches.append(inputs["x"][:, 0].tolist())
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.set()
        async with self._running_changed:
            self._running_changed.notify_all()
        try:
            await self.gate.wait()
            if self.seconds:
                await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        x = inputs["x"]
        return {"y": x * 2, "position": np.arange(len(x))}

    async def until_running(self, batches: int) -> None:
        async with self._running_changed:
            await self._running_changed.wait_for(lambda: self.running >= batches)

    def seen(self) -> set[float]:
        return {value for batch in self.batches for value in batch}


def rows(*ids: float) -> Tensors:
    return {"x": np.array(ids, dtype=np.float64).reshape(-1, 1)}


def y_of(result: Tensors) -> list[float]:
    return [float(v) for v in result["y"][:, 0]]


@pytest.fixture
def model() -> str:
    """A model name of this test's own, so metric values start at zero."""
    return f"m-{uuid.uuid4().hex[:12]}"


def make(run_batch: Any, model: str, max_batch_size: int = 8, **config: Any) -> Batcher:
    return Batcher(
        run_batch,
        max_batch_size=max_batch_size,
        config=BatchingConfig(**config),
        model=model,
        version="1",
    )


def metric(name: str, model: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"model": model, "version": "1", **labels})
    return value or 0.0


def releases(model: str, reason: str) -> float:
    return metric("mlgate_batch_releases_total", model, reason=reason)


async def hold_the_slot(backend: Doubler, batcher: Batcher) -> asyncio.Task[Tensors]:
    """Start a batch that runs until backend.gate is set, so later requests queue."""
    backend.gate.clear()
    task = asyncio.create_task(batcher.submit(rows(-1)))
    await backend.started.wait()
    return task


async def test_concurrent_requests_share_one_batch_and_each_gets_its_own_rows(model: str) -> None:
    backend = Doubler()
    batcher = make(backend, model)
    a, b, c = await asyncio.gather(
        batcher.submit(rows(1, 2)), batcher.submit(rows(3)), batcher.submit(rows(4, 5, 6))
    )
    assert backend.batches == [[1, 2, 3, 4, 5, 6]]
    assert y_of(a) == [2, 4] and y_of(b) == [6] and y_of(c) == [8, 10, 12]
    # Extra row-aligned outputs are sliced back too.
    assert c["position"].tolist() == [3, 4, 5]


async def test_request_larger_than_max_batch_size_is_split_and_rejoined_in_order(
    model: str,
) -> None:
    backend = Doubler()
    batcher = make(backend, model, max_batch_size=4)
    result = await batcher.submit(rows(*range(10)))
    assert [len(batch) for batch in backend.batches] == [4, 4, 2]
    assert y_of(result) == [2 * i for i in range(10)]


class FinishesInReverse:
    """A run_batch whose concurrent batches finish in the reverse of the order they started:
    the first one returns last. Needs `batches` of them running at once."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.started = 0
        self.finished: list[int] = []  # start order of each batch, in finishing order
        self._changed = asyncio.Condition()

    async def __call__(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        order = self.started
        self.started += 1
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.finished) == self.batches - 1 - order)
            self.finished.append(order)
            self._changed.notify_all()
        return {"y": inputs["x"] * 2, "position": np.arange(len(inputs["x"]))}


async def test_split_request_is_rejoined_in_row_order_when_chunks_finish_out_of_order(
    model: str,
) -> None:
    backend = FinishesInReverse(3)
    batcher = make(backend, model, max_batch_size=4, instances=3)
    async with asyncio.timeout(5):
        result = await batcher.submit(rows(*range(10)))
    assert backend.finished == [2, 1, 0]  # the chunks really did come back last-first
    assert y_of(result) == [2 * i for i in range(10)]
    assert result["position"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


async def test_requests_are_never_split_to_fill_a_batch(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model, max_batch_size=4)
        blocker = await hold_the_slot(backend, batcher)
        first = asyncio.create_task(batcher.submit(rows(1, 2, 3)))
        second = asyncio.create_task(batcher.submit(rows(4, 5, 6)))
        await asyncio.sleep(0.01)
        backend.gate.set()
        await asyncio.gather(blocker, first, second)
        assert backend.batches[1:] == [[1, 2, 3], [4, 5, 6]]
        assert releases(model, "full") == 1  # the second request could not join the first


async def test_requests_with_different_row_shapes_do_not_share_a_batch(model: str) -> None:
    async def first_column_doubled(inputs: Tensors, deadline: float | None = None) -> Tensors:
        return {"y": inputs["x"][:, :1] * 2}

    batcher = make(first_column_doubled, model)
    narrow = {"x": np.ones((2, 1))}
    wide = {"x": np.ones((3, 2))}
    a, b = await asyncio.gather(batcher.submit(narrow), batcher.submit(wide))
    assert a["y"].shape == (2, 1) and b["y"].shape == (3, 1)
    assert releases(model, "full") + releases(model, "idle") == 2


async def test_outputs_are_selected_per_caller_within_a_shared_batch(model: str) -> None:
    backend = Doubler()
    batcher = make(backend, model)
    only_y, only_position, everything = await asyncio.gather(
        batcher.submit(rows(1), outputs=["y"]),
        batcher.submit(rows(2), outputs=["position"]),
        batcher.submit(rows(3)),
    )
    assert len(backend.batches) == 1
    assert set(only_y) == {"y"} and set(only_position) == {"position"}
    assert set(everything) == {"y", "position"}
    assert only_position["position"].tolist() == [1]


async def test_unknown_output_fails_only_the_caller_that_asked_for_it(model: str) -> None:
    batcher = make(Doubler(), model)
    bad, good = await asyncio.gather(
        batcher.submit(rows(1), outputs=["nope"]), batcher.submit(rows(2)), return_exceptions=True
    )
    assert isinstance(bad, InvalidInput) and "nope" in bad.message
    assert isinstance(good, dict) and y_of(good) == [4]


async def test_full_queue_refuses_at_once_with_a_retry_estimate(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model, max_batch_size=1, max_queue_size=2)
        blocker = await hold_the_slot(backend, batcher)
        queued = [asyncio.create_task(batcher.submit(rows(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(rows(3))
        assert time.monotonic() - started < 0.5
        assert refused.value.retry_after_s > 0
        assert metric("mlgate_queue_rejected_total", model) == 1
        # Asked before a request is even built, the queue answers the same.
        with pytest.raises(Overloaded):
            batcher.admit()
        assert metric("mlgate_queue_rejected_total", model) == 2
        backend.gate.set()
        await asyncio.gather(blocker, *queued)
        assert 3 not in backend.seen()
        batcher.admit()  # room again


async def test_request_still_queued_at_its_deadline_fails_and_never_runs(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model)
        blocker = await hold_the_slot(backend, batcher)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(7), deadline=time.monotonic() + 0.02)
        assert metric("mlgate_queue_expired_total", model) == 1
        backend.gate.set()
        await blocker
        await batcher.close()
        assert 7 not in backend.seen()


async def test_default_timeout_applies_when_the_caller_gives_no_deadline(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model, default_timeout_us=20_000)
        blocker = await hold_the_slot(backend, batcher)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(7))
        backend.gate.set()
        await blocker
        assert 7 not in backend.seen()


async def test_deadline_already_past_is_refused_without_queueing(model: str) -> None:
    backend = Doubler()
    batcher = make(backend, model)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(1), deadline=time.monotonic() - 1)
    assert backend.batches == []


async def test_cancelled_queued_request_never_runs_and_the_others_proceed(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model)
        blocker = await hold_the_slot(backend, batcher)
        gone = asyncio.create_task(batcher.submit(rows(*range(100, 120))))
        stays = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        backend.gate.set()
        await blocker
        assert y_of(await stays) == [2]
        assert gone.cancelled()
        assert backend.seen().isdisjoint(range(100, 120))


async def test_cancelling_a_running_request_leaves_its_batch_mates_their_answers(
    model: str,
) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        backend.gate.clear()
        batcher = make(backend, model)
        gone = asyncio.create_task(batcher.submit(rows(1)))
        stays = asyncio.create_task(batcher.submit(rows(2)))
        await backend.started.wait()
        gone.cancel()
        backend.gate.set()
        assert y_of(await stays) == [4]
        assert backend.batches == [[1, 2]]
        with pytest.raises(asyncio.CancelledError):
            await gone


async def test_higher_priority_requests_leave_the_queue_first(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(
            backend, model, max_batch_size=1, priority_levels=3, default_priority_level=2
        )
        blocker = await hold_the_slot(backend, batcher)
        order = [(1, 3), (2, 2), (3, 1), (4, 1), (5, None), (6, 3)]
        tasks = [asyncio.create_task(batcher.submit(rows(i), priority=p)) for i, p in order]
        await asyncio.sleep(0)
        backend.gate.set()
        await asyncio.gather(blocker, *tasks)
        assert backend.batches[1:] == [[3], [4], [2], [5], [1], [6]]


async def test_higher_priority_arrival_goes_ahead_of_a_batch_that_is_waiting(model: str) -> None:
    backend = Doubler()
    batcher = make(backend, model, max_batch_size=4, max_queue_delay_us=200_000, priority_levels=2)
    async with asyncio.timeout(5):
        low = asyncio.create_task(batcher.submit(rows(1, 2), priority=2))
        await asyncio.sleep(0.01)
        high = asyncio.create_task(batcher.submit(rows(3, 4, 5), priority=1))
        await asyncio.gather(low, high)
    # The urgent request fills what would have been the waiting batch; the rest waits on.
    assert backend.batches == [[3, 4, 5], [1, 2]]
    assert releases(model, "full") == 1 and releases(model, "delay") == 1


async def test_priority_outside_the_levels_is_invalid_and_zero_means_default(model: str) -> None:
    batcher = make(Doubler(), model, priority_levels=2)
    for bad in (3, -1):
        with pytest.raises(InvalidInput):
            await batcher.submit(rows(1), priority=bad)
    assert y_of(await batcher.submit(rows(1), priority=0)) == [2]


def test_default_priority_level_beyond_the_levels_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="default_priority_level"):
        BatchingConfig(priority_levels=2, default_priority_level=3)


async def test_inputs_disagreeing_on_rows_are_invalid(model: str) -> None:
    batcher = make(Doubler(), model)
    with pytest.raises(InvalidInput):
        await batcher.submit({"x": np.ones((2, 1)), "z": np.ones((3, 1))})
    with pytest.raises(InvalidInput):
        await batcher.submit({"x": np.ones((0, 1))})


async def test_batch_reaching_max_batch_size_is_released_full_without_waiting(model: str) -> None:
    batcher = make(Doubler(), model, max_batch_size=4, max_queue_delay_us=10_000_000)
    async with asyncio.timeout(5):
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(4)))
    assert releases(model, "full") == 1


async def test_preferred_size_is_released_without_waiting(model: str) -> None:
    batcher = make(Doubler(), model, preferred_batch_sizes=[2], max_queue_delay_us=10_000_000)
    async with asyncio.timeout(5):
        await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)))
    assert releases(model, "preferred") == 1


async def test_batch_waits_for_the_queue_delay_and_takes_late_arrivals(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model, max_queue_delay_us=200_000)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, batcher.submit(rows(2)))
        assert backend.batches == [[1, 2]]
        assert releases(model, "delay") == 1


async def test_near_deadline_releases_the_batch_early_enough_to_run_it(model: str) -> None:
    batcher = make(Doubler(0.1), model, max_queue_delay_us=10_000_000, preferred_batch_sizes=[1])
    async with asyncio.timeout(5):
        # A first batch (released at once: preferred) teaches the batcher that batches take 0.1 s.
        await batcher.submit(rows(0))
        result = await batcher.submit(rows(1, 2), deadline=time.monotonic() + 0.4)
    assert y_of(result) == [2, 4]
    assert releases(model, "deadline") == 1


async def test_delay_zero_releases_at_once_as_idle(model: str) -> None:
    batcher = make(Doubler(), model)
    await batcher.submit(rows(1))
    assert releases(model, "idle") == 1


async def test_batches_run_concurrently_up_to_instances(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        backend.gate.clear()
        batcher = make(backend, model, max_batch_size=1, instances=2)
        tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(5)]
        await backend.until_running(2)
        await asyncio.sleep(0.01)
        assert backend.running == 2
        backend.gate.set()
        results = await asyncio.gather(*tasks)
        assert [y_of(r) for r in results] == [[2 * i] for i in range(5)]
        assert backend.peak == 2


async def test_backend_exception_fails_only_its_batch_with_a_backend_error(model: str) -> None:
    backend = Doubler()

    async def fails_on_negative(inputs: Tensors, deadline: float | None = None) -> Tensors:
        if (inputs["x"] < 0).any():
            raise RuntimeError("negative input\nTraceback (most recent call last): ...")
        return await backend(inputs)

    batcher = make(fails_on_negative, model, max_batch_size=2)
    outcomes = await asyncio.gather(
        *(batcher.submit(rows(i)) for i in (1, -1, 3, 4)), return_exceptions=True
    )
    for failed in outcomes[:2]:
        assert isinstance(failed, BackendError)
        assert "RuntimeError: negative input" in failed.message
        assert "Traceback" not in failed.message
    assert [y_of(r) for r in outcomes[2:] if isinstance(r, dict)] == [[6], [8]]


async def test_gateway_error_from_the_backend_reaches_callers_unchanged(model: str) -> None:
    async def store_down(inputs: Tensors, deadline: float | None = None) -> Tensors:
        raise Unavailable("feature store unreachable")

    batcher = make(store_down, model)
    with pytest.raises(Unavailable, match="feature store unreachable"):
        await batcher.submit(rows(1))


async def test_backend_answer_with_wrong_rows_is_a_backend_error(model: str) -> None:
    async def one_row_short(inputs: Tensors, deadline: float | None = None) -> Tensors:
        return {"y": inputs["x"][1:]}

    batcher = make(one_row_short, model)
    with pytest.raises(BackendError, match="'y'"):
        await batcher.submit(rows(1, 2))


async def test_close_runs_queued_requests_then_refuses_new_ones(model: str) -> None:
    backend = Doubler()
    batcher = make(backend, model, max_queue_delay_us=10_000_000)
    queued = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await batcher.close()
    assert y_of(await queued) == [2]
    with pytest.raises(Unavailable):
        await batcher.submit(rows(2))


async def test_adaptive_releases_a_lone_request_without_waiting(model: str) -> None:
    batcher = make(Doubler(), model, adaptive=True, max_queue_delay_us=10_000_000)
    async with asyncio.timeout(5):
        await batcher.submit(rows(1))
    assert releases(model, "idle") == 1


async def test_adaptive_never_delays_a_client_that_waits_for_each_answer(model: str) -> None:
    batcher = make(Doubler(0.002), model, adaptive=True, max_queue_delay_us=10_000_000)
    async with asyncio.timeout(5):
        for i in range(15):
            await batcher.submit(rows(i))
    assert releases(model, "idle") == 15


async def test_adaptive_runs_a_lone_request_in_its_callers_task(model: str) -> None:
    tasks: list[asyncio.Task[Any] | None] = []

    async def run_batch(inputs: Tensors, deadline: float | None = None) -> Tensors:
        tasks.append(asyncio.current_task())
        return {"y": inputs["x"] * 2}

    batcher = make(run_batch, model, adaptive=True, max_queue_delay_us=10_000_000)
    async with asyncio.timeout(5):
        await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)))  # learns T
        await asyncio.sleep(0.01)
        caller = asyncio.create_task(batcher.submit(rows(3), outputs=["y"]))
        assert y_of(await caller) == [6]
    # The queue path runs batches in tasks of their own; the lone request skips it.
    assert tasks[0] is not None and tasks[0] is not caller
    assert tasks[-1] is caller
    assert metric("mlgate_queue_depth", model) == 0


async def test_adaptive_waits_to_fill_a_batch_while_requests_stream_in(model: str) -> None:
    # Batches cost 200 ms whatever their size, so waiting to fill them is cheap under load.
    backend = Doubler(0.2)
    batcher = make(
        backend,
        model,
        max_batch_size=4,
        instances=2,
        adaptive=True,
        max_queue_delay_us=10_000_000,
    )
    async with asyncio.timeout(5):
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(4)))
        # The first arrival after the pause goes alone; the stream behind it fills the other
        # instance's batch although that instance is free all along.
        stream = [asyncio.create_task(batcher.submit(rows(100)))]
        for i in range(101, 105):
            await asyncio.sleep(0)
            stream.append(asyncio.create_task(batcher.submit(rows(i))))
        await asyncio.gather(*stream)
    assert backend.batches[1:] == [[100], [101, 102, 103, 104]]
    assert releases(model, "full") == 2
    assert releases(model, "idle") == 1


class Timeline:
    """A run_batch of a fixed run time that records when each batch ran and which rows."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[tuple[float, float, list[float]]] = []  # (start, end, row ids)

    async def __call__(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        started = time.monotonic()
        await asyncio.sleep(self.seconds)
        self.runs.append((started, time.monotonic(), inputs["x"][:, 0].tolist()))
        return {"y": inputs["x"] * 2}

    def busy_until(self, at: float, lag: float) -> float:
        """When the batch running at `at` ended (`at` itself when none ran). A batch released
        just before `at` may start in the event loop's next turn: up to `lag` later."""
        running = [end for start, end, _ in self.runs if start <= at + lag < end + lag]
        return max(running, default=at)


@pytest.mark.parametrize("adaptive", [True, False])
async def test_no_request_waits_longer_than_the_delay_plus_one_batch_run(
    model: str, adaptive: bool
) -> None:
    # Closed-loop clients, all fitting in one batch, pausing at random between requests so that
    # they arrive alone, in bursts and while a batch runs (lone requests race the queue then).
    # With one instance, a request must start by the end of the batch running when it arrived
    # (as long as that batch really took) plus the delay; a request left behind by a release
    # waits a whole run more. The slack covers a loaded machine's late timers and stalls.
    delay_s, slack_s = 0.0005, 0.05
    backend = Timeline(0.1)
    batcher = make(
        backend,
        model,
        max_batch_size=64,
        adaptive=adaptive,
        max_queue_delay_us=round(delay_s * 1e6),
    )
    pauses = np.random.default_rng(17).exponential(0.02, size=(32, 6))
    arrived: dict[float, float] = {}

    async def client(number: int, waits: np.ndarray) -> None:
        for i, pause in enumerate(waits):
            await asyncio.sleep(pause)
            request = number * 100 + i
            arrived[request] = time.monotonic()
            await batcher.submit(rows(request))

    async with asyncio.timeout(30):
        await asyncio.gather(*(client(n, waits) for n, waits in enumerate(pauses)))
    late = {
        request: round((start - free) * 1e3, 1)
        for start, _, requests in backend.runs
        for request in requests
        if start > (free := backend.busy_until(arrived[request], slack_s)) + delay_s + slack_s
    }
    assert sum(len(requests) for _, _, requests in backend.runs) == pauses.size
    assert not late, f"ms past the bound, by request: {late}"


async def test_queue_metrics_follow_requests(model: str) -> None:
    async with asyncio.timeout(5):
        backend = Doubler()
        batcher = make(backend, model)
        blocker = await hold_the_slot(backend, batcher)
        queued = [asyncio.create_task(batcher.submit(rows(i, i))) for i in range(3)]
        await asyncio.sleep(0)
        assert metric("mlgate_queue_depth", model) == 3
        backend.gate.set()
        await asyncio.gather(blocker, *queued)
        assert metric("mlgate_queue_depth", model) == 0
        assert metric("mlgate_batch_size_sum", model) == 1 + 6
        assert metric("mlgate_queue_wait_seconds_count", model) == 4


async def test_onnx_model_answers_each_caller_as_if_run_alone(model: str) -> None:
    paths = sorted(MODELS_DIR.glob("fraud_mlp/*/model.onnx"))
    if not paths:
        pytest.skip("models/fraud_mlp has no model.onnx; build it with `make models`")
    import onnxruntime as ort

    session = ort.InferenceSession(str(paths[-1]), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    width = feed.shape[1]

    names = [out.name for out in session.get_outputs()]

    async def run_batch(inputs: Tensors, deadline: float | None = None) -> Tensors:
        results = await asyncio.to_thread(session.run, names, inputs)
        return dict(zip(names, results, strict=True))

    batcher = make(run_batch, model, max_batch_size=16, max_queue_delay_us=2_000)
    rng = np.random.default_rng(7)
    requests = [{feed.name: rng.normal(size=(n, width)).astype(np.float32)} for n in (1, 5, 40, 3)]
    answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for request, answer in zip(requests, answers, strict=True):
        alone = session.run(names, request)
        assert list(answer) == names
        for name, expected in zip(names, alone, strict=True):
            np.testing.assert_allclose(answer[name], expected, rtol=1e-5, atol=1e-6)


async def test_a_batch_runs_with_its_earliest_member_deadline(model: str) -> None:
    given: list[float | None] = []

    async def run_batch(inputs: Tensors, deadline: float | None = None) -> Tensors:
        given.append(deadline)
        return {"y": inputs["x"] * 2}

    batcher = make(run_batch, model, max_queue_delay_us=1_000_000, preferred_batch_sizes=[3])
    now = time.monotonic()
    soon, later = now + 5.0, now + 9.0
    async with asyncio.timeout(5):
        await asyncio.gather(
            batcher.submit(rows(1), deadline=later),
            batcher.submit(rows(2)),
            batcher.submit(rows(3), deadline=soon),
        )
        await batcher.submit(rows(4))
    assert given[0] == soon  # the three ran as one batch, cut at its first member's deadline
    assert given[-1] is None  # no member with a deadline: none handed on
