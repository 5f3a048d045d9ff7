"""Property: whatever the sizes, interleavings and failures, each caller gets its own rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.batching import Batcher, BatchingConfig, Tensors
from service.protocol.errors import BackendError, DeadlineExceeded

OUTPUT_CHOICES: tuple[tuple[str, ...] | None, ...] = (None, ("y",), ("key", "position"))


@dataclass(frozen=True)
class Call:
    rows: int
    pause_ms: float  # before submitting, from the start of the run
    poisoned: bool  # one of its rows makes its batch fail
    outputs: tuple[str, ...] | None
    priority: int
    deadline_ms: float | None


calls = st.builds(
    Call,
    rows=st.integers(1, 13),
    pause_ms=st.sampled_from([0.0, 0.0, 0.2, 1.0, 3.0]),
    poisoned=st.sampled_from([False, False, False, True]),
    outputs=st.sampled_from(OUTPUT_CHOICES),
    priority=st.integers(1, 2),
    deadline_ms=st.sampled_from([None, None, None, 0.5, 5.0]),
)

configs = st.builds(
    BatchingConfig,
    max_queue_delay_us=st.sampled_from([0, 300, 2_000]),
    preferred_batch_sizes=st.sampled_from([[], [2], [3, 4]]),
    instances=st.integers(1, 3),
    adaptive=st.booleans(),
    priority_levels=st.just(2),
)


class Recorder:
    """run_batch over row ids: y = 2 * id, the id as a string key, the row's batch position.

    `seconds` is every batch's run time, or one per batch in start order (cycled), so that
    concurrent batches can finish in another order than they started.
    """

    def __init__(self, seconds: float | Sequence[float]) -> None:
        self.seconds = [seconds] if isinstance(seconds, float | int) else list(seconds)
        self.batches: list[tuple[list[int], bool]] = []  # row ids, failed
        self.finished: list[int] = []  # batch indexes (start order), in finishing order

    async def __call__(self, inputs: Tensors, deadline: float | None = None) -> Tensors:
        ids = inputs["id"].tolist()
        failed = bool(inputs["poison"].any())
        index = len(self.batches)
        self.batches.append((ids, failed))
        try:
            await asyncio.sleep(self.seconds[index % len(self.seconds)])
        finally:
            self.finished.append(index)
        if failed:
            raise ValueError("poisoned row")
        return {
            "y": inputs["id"] * 2,
            "key": inputs["key"],
            "position": np.arange(len(ids)),
        }


async def scenario(
    config: BatchingConfig,
    max_batch_size: int,
    plan: list[Call],
    backend_ms: float | Sequence[float],
) -> None:
    if isinstance(backend_ms, float | int):
        backend = Recorder(backend_ms / 1e3)
    else:
        backend = Recorder([ms / 1e3 for ms in backend_ms])
    batcher = Batcher(
        backend, max_batch_size=max_batch_size, config=config, model="property", version="1"
    )
    first_ids: list[int] = []
    next_id = 0
    for call in plan:
        first_ids.append(next_id)
        next_id += call.rows

    async def one(call: Call, first: int) -> Tensors:
        await asyncio.sleep(call.pause_ms / 1e3)
        ids = np.arange(first, first + call.rows)
        poison = np.zeros(call.rows, dtype=bool)
        poison[-1] = call.poisoned
        inputs = {"id": ids, "key": ids.astype(str).astype(object), "poison": poison}
        deadline = None
        if call.deadline_ms is not None:
            deadline = time.monotonic() + call.deadline_ms / 1e3
        return await batcher.submit(
            inputs, outputs=call.outputs, priority=call.priority, deadline=deadline
        )

    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(
            *(one(call, first) for call, first in zip(plan, first_ids, strict=True)),
            return_exceptions=True,
        )
        await batcher.close()

    batch_of: dict[int, int] = {}
    for index, (ids, _) in enumerate(backend.batches):
        assert 0 < len(ids) <= max_batch_size
        for row in ids:
            assert row not in batch_of, "a row ran twice"
            batch_of[row] = index

    finish_rank = {batch: rank for rank, batch in enumerate(backend.finished)}
    for call, first, outcome in zip(plan, first_ids, outcomes, strict=True):
        event(type(outcome).__name__)
        ids = list(range(first, first + call.rows))
        ran = [row for row in ids if row in batch_of]
        chunks = sorted({batch_of[row] for row in ran})  # batches in start order = chunk order
        ranks = [finish_rank[batch] for batch in chunks]
        if isinstance(outcome, dict) and ranks != sorted(ranks):
            event("a split request's chunks finished out of order")
        failed_batch = any(backend.batches[batch_of[row]][1] for row in ran)
        if call.rows <= max_batch_size and ran:
            # A request that fits is never split: all its rows, contiguous, in one batch.
            batch_ids = backend.batches[batch_of[ran[0]]][0]
            start = batch_ids.index(first)
            assert batch_ids[start : start + call.rows] == ids

        if isinstance(outcome, DeadlineExceeded):
            assert call.deadline_ms is not None
            if call.rows <= max_batch_size:
                assert not ran, "an expired request ran"
        elif isinstance(outcome, BackendError):
            assert failed_batch
            assert "ValueError: poisoned row" in outcome.message
        else:
            assert isinstance(outcome, dict), outcome
            assert not call.poisoned and not failed_batch
            assert ran == ids
            assert set(outcome) == set(call.outputs or ("y", "key", "position"))
            if "y" in outcome:
                assert outcome["y"].tolist() == [2 * row for row in ids]
            if "key" in outcome:
                assert outcome["key"].tolist() == [str(row) for row in ids]
            if "position" in outcome:
                assert len(outcome["position"]) == call.rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configs,
    max_batch_size=st.integers(4, 8),
    plan=st.lists(calls, min_size=1, max_size=10),
    backend_ms=st.sampled_from([0.0, 0.5, 2.0]),
)
def test_every_caller_gets_exactly_its_rows_or_its_own_batch_failure(
    config: BatchingConfig, max_batch_size: int, plan: list[Call], backend_ms: float
) -> None:
    asyncio.run(scenario(config, max_batch_size, plan, backend_ms))


# Requests of more rows than max_batch_size, run by several instances whose batches take
# different times: a split request's chunks come back in any order, its rows must not.
split_calls = st.builds(
    Call,
    rows=st.integers(9, 30),  # more than any max_batch_size below: always split
    pause_ms=st.sampled_from([0.0, 0.0, 0.5]),
    poisoned=st.sampled_from([False, False, False, True]),
    outputs=st.sampled_from(OUTPUT_CHOICES),
    priority=st.integers(1, 2),
    deadline_ms=st.sampled_from([None, None, None, 5.0]),
)

concurrent_configs = st.builds(
    BatchingConfig,
    max_queue_delay_us=st.sampled_from([0, 300, 2_000]),
    preferred_batch_sizes=st.sampled_from([[], [2], [3, 4]]),
    instances=st.integers(2, 4),
    adaptive=st.booleans(),
    priority_levels=st.just(2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=concurrent_configs,
    max_batch_size=st.integers(4, 8),
    plan=st.builds(
        lambda split, others: [split, *others],
        split_calls,
        st.lists(st.one_of(split_calls, calls), max_size=7),
    ).flatmap(st.permutations),
    # Per batch, in start order: mostly decreasing, so earlier chunks tend to finish last.
    backend_ms=st.one_of(
        st.lists(st.sampled_from([0.0, 0.3, 1.0, 3.0]), min_size=2, max_size=6),
        st.integers(2, 6).map(lambda n: [float(n - i) for i in range(n)]),
    ),
)
def test_split_requests_get_their_rows_in_order_whatever_order_chunks_finish(
    config: BatchingConfig, max_batch_size: int, plan: list[Call], backend_ms: list[float]
) -> None:
    asyncio.run(scenario(config, max_batch_size, plan, backend_ms))
