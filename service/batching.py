"""Dynamic batcher: queue, deadlines, sizes, cancellation. Knows nothing of HTTP or models."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service import metrics
from service.cost_model import ALPHA, CostModel
from service.protocol.errors import (
    BackendError,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Overloaded,
    Unavailable,
)
from service.statistics import InferenceStatistics

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray[Any, Any]]
# run_batch(inputs, deadline): the batch's earliest member deadline (time.monotonic()), or None.
RunBatch = Callable[[Tensors, float | None], Awaitable[Tensors]]
# (name, dtype, shape without the batch dimension) of each input, sorted by name.
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]

RELEASE_REASONS = ("full", "preferred", "delay", "deadline", "idle")

# A batch released for a deadline must start before it, but timers (1 ms in uvloop) and a busy
# event loop make the release late; a request still queued at its deadline has failed.
_DEADLINE_SLACK_S = 0.002
# Cancelled and finished requests stay in the deadline heap until it is rebuilt; this bounds them.
_HEAP_SLACK = 64


class BatchingConfig(BaseModel):
    """The `dynamic_batching` section of a model's config.yaml (Triton's vocabulary)."""

    model_config = ConfigDict(extra="forbid")

    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(default=1024, ge=1)
    instances: int = Field(default=1, ge=1)
    adaptive: bool = False
    priority_levels: int = Field(default=1, ge=1)
    default_priority_level: int = Field(default=1, ge=1)
    default_timeout_us: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} exceeds "
                f"priority_levels {self.priority_levels}"
            )
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must be positive")
        return self


@dataclass(eq=False, slots=True)
class _Request:
    seq: int
    priority: int
    arrival: float
    deadline: float | None
    outputs: tuple[str, ...] | None
    # Requests join one batch only when their inputs concatenate: same names, dtypes, row shapes.
    signature: Signature
    future: asyncio.Future[None]
    chunks: list[_Chunk] = field(default_factory=list)
    parts: dict[int, Tensors] = field(default_factory=dict)
    queued: int = 0  # chunks still in the queue


@dataclass(eq=False, slots=True)
class _Chunk:
    """At most max_batch_size rows of one request: the unit that joins a batch."""

    request: _Request
    index: int
    rows: int
    inputs: Tensors
    queued: bool = True


@dataclass(slots=True)
class _Prefix:
    """What the head of the queue would make as a batch, kept between arrivals.

    Arrivals append to it, so deciding costs O(requests) per batch rather than per arrival.
    """

    chunks: int = 0
    rows: int = 0
    preferred_chunks: int = 0
    preferred_rows: int = 0
    oldest: float = math.inf
    earliest_deadline: float = math.inf
    signature: Signature | None = None
    blocked: bool = False  # the next queued chunk cannot join: other signature, or too many rows


class _Plan(NamedTuple):
    reason: str | None  # None: wait until `wake`
    chunks: int
    rows: int
    wake: float


class _Traffic:
    """Arrivals: moving averages of the gap between requests and of their rows.

    They weigh the newest arrival by the cost model's ALPHA: the adaptive rule needs the gap and
    the batch time to follow a change alike (see `_adaptive_hold_until`).
    """

    __slots__ = ("gap", "last", "latest_gap", "rows")

    def __init__(self) -> None:
        self.gap = math.inf
        self.latest_gap = math.inf
        self.last = -math.inf
        self.rows = 0.0

    def observe(self, now: float, rows: int) -> None:
        self.latest_gap = now - self.last
        if math.isinf(self.gap):
            self.gap = self.latest_gap
        else:
            self.gap += ALPHA * (self.latest_gap - self.gap)
        self.rows = rows if not self.rows else self.rows + ALPHA * (rows - self.rows)
        self.last = now

    def gap_at(self, now: float) -> float:
        """The gap to expect: the average, unless the latest gap or the silence since is longer.

        A pause in traffic thus ends a wait at once, instead of after the average catches up.
        """
        return max(self.gap, self.latest_gap, now - self.last)


class Batcher:
    """Merges concurrent requests into batches for `run_batch`, one model version's queue.

    Triton's dynamic batcher: when one of `config.instances` execution slots is free, requests
    leave the queue in (priority, arrival) order; the batch is the largest preferred size that
    the head of the queue makes, else as many whole requests as fit in `max_batch_size`
    (a request larger than that is split into chunks, rejoined in order for its caller). The
    batcher waits for more only while the oldest request has waited less than
    `max_queue_delay_us` and no member's deadline is near. Each release is counted by reason:
    full, preferred, delay (the wait ran out), deadline (a member would miss its deadline),
    idle (nothing worth waiting for: delay 0, the adaptive rule, or shutdown).

    Adaptive delay (`config.adaptive`), with max_queue_delay_us as its bound: the batcher keeps
    moving averages of the gap between requests g and rows per request r, and fits batch time
    as T(k) = fixed + per_row * k. Holding k rows, it waits while the rows expected to reach
    one instance during T(k), r * T(k) / (g * instances), exceed k: batches that small could
    not keep up with the arrivals, so filling them costs no throughput. Once k rows cover their
    own run time it releases. g is the average gap unless the latest gap or the silence since
    the last arrival is longer, so a lone request, or a single client waiting for each answer
    (g >= T(1)), is released at once; before any batch has run, T is 0 and nothing waits.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        config: BatchingConfig,
        model: str,
        version: str,
        stats: InferenceStatistics | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("a batcher needs max_batch_size >= 1")
        too_large = [size for size in config.preferred_batch_sizes if size > max_batch_size]
        if too_large:
            raise ValueError(f"preferred batch size {too_large[0]} exceeds {max_batch_size}")
        self._run_batch = run_batch
        self._max_rows = max_batch_size
        self._config = config
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._delay_s = config.max_queue_delay_us / 1e6
        self._timeout_s = (
            None if config.default_timeout_us is None else config.default_timeout_us / 1e6
        )

        self._levels: list[deque[_Chunk]] = [deque() for _ in range(config.priority_levels)]
        self._prefix = _Prefix()
        self._deadlines: list[tuple[float, int, _Request]] = []
        self._seq = itertools.count()
        self._queued_requests = 0
        self._queued_rows = 0
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._poked = False
        self._closed = False
        self._drained = asyncio.Event()
        self._cost = CostModel()
        self._traffic = _Traffic()
        self._stats = stats or InferenceStatistics()

        self._batch_size = metrics.BATCH_SIZE.labels(model, version)
        self._depth = metrics.QUEUE_DEPTH.labels(model, version)
        self._wait = metrics.QUEUE_WAIT.labels(model, version)
        self._rejected = metrics.QUEUE_REJECTED.labels(model, version)
        self._expired = metrics.QUEUE_EXPIRED.labels(model, version)
        self._releases = {
            reason: metrics.BATCH_RELEASES.labels(model, version, reason)
            for reason in RELEASE_REASONS
        }

    def admit(self) -> None:
        """Raise what `submit` would refuse any request with right now: Unavailable (closed),
        Overloaded (queue full). Asked before a request's features are fetched, so that an
        overloaded model sheds load before it spends a store round trip on it."""
        if self._closed:
            raise Unavailable("this model version is shutting down")
        if self._queued_requests >= self._config.max_queue_size:
            self._rejected.inc()
            retry_after = self._retry_after_s()
            raise Overloaded(
                f"the queue is full ({self._queued_requests} requests waiting); "
                f"retry in {retry_after:.3f} s",
                retry_after,
            )

    async def submit(
        self,
        inputs: Tensors,
        *,
        outputs: Sequence[str] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Tensors:
        """Run `inputs` (every array n rows) within a batch; the caller's n rows of each output.

        `outputs` picks the outputs (None: all that run_batch returns); `priority` is a level,
        1 the highest (None or 0: the default level); `deadline` is a time.monotonic() value
        (None: now + default_timeout_us, if set). Raises InvalidInput, Overloaded (queue full),
        DeadlineExceeded (still queued at the deadline: never run), Unavailable (closed), and
        the batch's failure: the GatewayError run_batch raised, else BackendError.
        """
        self.admit()
        level = self._level(priority)
        rows, signature = _describe(inputs)
        now = time.monotonic()
        if deadline is None and self._timeout_s is not None:
            deadline = now + self._timeout_s
        if deadline is not None and deadline <= now:
            self._expired.inc()
            raise DeadlineExceeded("the request's deadline passed before it was queued")

        self._traffic.observe(now, rows)
        if self._runs_alone(now, rows):
            return await self._run_alone(inputs, outputs, now, rows, deadline)

        request = _Request(
            seq=next(self._seq),
            priority=level,
            arrival=now,
            deadline=deadline,
            outputs=None if outputs is None else tuple(outputs),
            signature=signature,
            future=asyncio.get_running_loop().create_future(),
        )
        self._enqueue(request, inputs, rows)
        self._poke()
        try:
            await request.future
        finally:
            if request.queued:
                # Only a cancelled caller gets here with rows still queued: they must never run.
                self._unqueue(request)
                self._poke()
        return _join(request)

    def _runs_alone(self, now: float, rows: int) -> bool:
        """Whether a request skips the queue: in adaptive mode, once batch times are known,
        when nothing waits, a slot is free and the rule would release it at once anyway.
        (Otherwise requests of one event-loop turn are still planned together.)"""
        return (
            self._config.adaptive
            and self._cost.known
            and not self._queued_requests
            and self._running < self._config.instances
            and rows <= self._max_rows
            and self._adaptive_hold_until(now, rows) is None
        )

    async def _run_alone(
        self,
        inputs: Tensors,
        outputs: Sequence[str] | None,
        now: float,
        rows: int,
        deadline: float | None,
    ) -> Tensors:
        """The batch of one request, run in its caller's task: no queue, no extra task."""
        self._wait.observe(0.0)
        self._stats.queued(0.0)
        self._batch_size.observe(rows)
        self._releases["idle"].inc()
        self._running += 1
        try:
            result = await self._run_batch(dict(inputs), deadline)
            _check_rows(result, rows)
        except (GatewayError, asyncio.CancelledError):
            raise
        except Exception as exc:
            logger.exception("the backend failed on a batch of %d rows", rows)
            raise BackendError(
                f"the backend failed on a batch of {rows} rows: {_summary(exc)}"
            ) from None
        finally:
            self._running -= 1
            if self._queued_requests:
                self._poke()
        elapsed = time.monotonic() - now
        self._cost.observe(rows, elapsed)
        self._stats.executed(elapsed, rows, 1)
        if outputs is None:
            return result
        try:
            return {name: result[name] for name in outputs}
        except KeyError as missing:
            raise InvalidInput(
                f"unknown output {missing.args[0]!r}; available: {', '.join(sorted(result))}"
            ) from None

    async def close(self) -> None:
        """Refuse new requests; run what is queued without waiting for more, and wait for it.

        Deadlines still apply to queued requests. Returns when the last batch has finished.
        """
        self._closed = True
        self._poke()
        await self._drained.wait()

    def _level(self, priority: int | None) -> int:
        levels = self._config.priority_levels
        if priority is None or priority == 0:
            return self._config.default_priority_level
        if not 1 <= priority <= levels:
            raise InvalidInput(
                f"priority must be between 1 (highest) and {levels}, or 0 for the default; "
                f"got {priority}"
            )
        return priority

    def _retry_after_s(self) -> float:
        batches = math.ceil(self._queued_rows / self._max_rows)
        seconds = batches * self._cost.seconds(self._max_rows) / self._config.instances
        # Before any batch has run there is nothing to estimate from.
        return seconds if seconds > 0 else 1.0

    def _enqueue(self, request: _Request, inputs: Tensors, rows: int) -> None:
        size = self._max_rows
        if rows <= size:
            request.chunks.append(_Chunk(request, 0, rows, inputs))
        else:
            for index, start in enumerate(range(0, rows, size)):
                part = {name: array[start : start + size] for name, array in inputs.items()}
                request.chunks.append(_Chunk(request, index, min(size, rows - start), part))

        level = request.priority - 1
        # A chunk behind lower-priority ones lands inside the prefix, not after it.
        if any(self._levels[level + 1 :]):
            self._prefix = _Prefix()
        self._levels[level].extend(request.chunks)
        request.queued = len(request.chunks)
        self._queued_requests += 1
        self._queued_rows += rows
        self._depth.inc()

        if request.deadline is not None:
            heapq.heappush(self._deadlines, (request.deadline, request.seq, request))
            if len(self._deadlines) > 2 * self._queued_requests + _HEAP_SLACK:
                self._deadlines = [entry for entry in self._deadlines if entry[2].queued]
                heapq.heapify(self._deadlines)

    def _unqueue(self, request: _Request) -> None:
        """Take a request's queued chunks out of the queue (cancelled, expired or failed)."""
        level = self._levels[request.priority - 1]
        for chunk in request.chunks:
            if chunk.queued:
                level.remove(chunk)
                chunk.queued = False
                self._queued_rows -= chunk.rows
        request.queued = 0
        self._queued_requests -= 1
        self._depth.dec()
        self._prefix = _Prefix()

    def _fail(self, request: _Request, error: GatewayError) -> None:
        if not request.future.done():
            request.future.set_exception(error)
        if request.queued:
            self._unqueue(request)

    def _poke(self) -> None:
        # Coalesced: requests that arrive in the same event-loop iteration are planned together.
        if not self._poked:
            self._poked = True
            asyncio.get_running_loop().call_soon(self._schedule)

    def _schedule(self) -> None:
        """Expire, release what is due, and set the timer for the next decision."""
        self._poked = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic()
        self._expire(now)
        wake = math.inf
        while self._queued_requests and self._running < self._config.instances:
            plan = self._plan(now)
            if plan.reason is None:
                wake = plan.wake
                break
            self._launch(plan.reason, plan.chunks, plan.rows, now)
        wake = min(wake, self._next_deadline())
        if wake < math.inf:
            self._timer = asyncio.get_running_loop().call_later(wake - now, self._schedule)
        if self._closed and not self._queued_requests and not self._running:
            self._drained.set()

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request = heapq.heappop(self._deadlines)
            if request.queued:
                self._expired.inc()
                waited_ms = (now - request.arrival) * 1e3
                self._fail(
                    request,
                    DeadlineExceeded(f"the deadline passed after {waited_ms:.1f} ms in the queue"),
                )

    def _next_deadline(self) -> float:
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else math.inf

    def _plan(self, now: float) -> _Plan:
        prefix = self._prefix
        if not prefix.blocked and prefix.rows < self._max_rows:
            queue = itertools.chain.from_iterable(self._levels)
            for chunk in itertools.islice(queue, prefix.chunks, None):
                request = chunk.request
                if prefix.signature is None:
                    prefix.signature = request.signature
                elif (
                    request.signature != prefix.signature
                    or prefix.rows + chunk.rows > self._max_rows
                ):
                    prefix.blocked = True
                    break
                prefix.chunks += 1
                prefix.rows += chunk.rows
                prefix.oldest = min(prefix.oldest, request.arrival)
                if request.deadline is not None:
                    prefix.earliest_deadline = min(prefix.earliest_deadline, request.deadline)
                if prefix.rows in self._preferred:
                    prefix.preferred_chunks, prefix.preferred_rows = prefix.chunks, prefix.rows
                if prefix.rows == self._max_rows:
                    break

        chunks, rows = prefix.chunks, prefix.rows
        if rows == self._max_rows:
            return _Plan("full", chunks, rows, now)
        if prefix.preferred_chunks:
            return _Plan("preferred", prefix.preferred_chunks, prefix.preferred_rows, now)
        if prefix.blocked:
            return _Plan("full", chunks, rows, now)
        if self._closed:
            return _Plan("idle", chunks, rows, now)
        if now - prefix.oldest >= self._delay_s:
            return _Plan("delay" if self._delay_s else "idle", chunks, rows, now)
        start_by = prefix.earliest_deadline - self._cost.seconds(rows) - _DEADLINE_SLACK_S
        if start_by <= now:
            return _Plan("deadline", chunks, rows, now)
        wake = min(prefix.oldest + self._delay_s, start_by)
        if self._config.adaptive:
            hold_until = self._adaptive_hold_until(now, rows)
            if hold_until is None:
                return _Plan("idle", chunks, rows, now)
            wake = min(wake, hold_until)
        return _Plan(None, 0, 0, wake)

    def _adaptive_hold_until(self, now: float, rows: int) -> float | None:
        """Until when the adaptive rule waits for more than `rows`; None: release now.

        Wait while r * T(k) > k * g * instances, i.e. while the gap g is below
        r * T(k) / (k * instances). With the same moving-average weight for gaps and batch
        times, a caller that waits for each answer has g >= T(1) and never waits.
        """
        traffic = self._traffic
        stop_gap = traffic.rows * self._cost.seconds(rows) / (rows * self._config.instances)
        if traffic.gap_at(now) >= stop_gap:
            return None
        return traffic.last + stop_gap

    def _launch(self, reason: str, chunks: int, rows: int, now: float) -> None:
        batch: list[_Chunk] = []
        for level in self._levels:
            while level and len(batch) < chunks:
                chunk = level.popleft()
                chunk.queued = False
                request = chunk.request
                request.queued -= 1
                if not request.queued:
                    self._queued_requests -= 1
                    self._depth.dec()
                    self._stats.queued(now - request.arrival)
                self._wait.observe(now - request.arrival)
                batch.append(chunk)
        self._queued_rows -= rows
        self._prefix = _Prefix()
        self._batch_size.observe(rows)
        self._releases[reason].inc()
        self._running += 1
        task = asyncio.create_task(self._run(batch, rows))
        # The event loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Chunk], rows: int) -> None:
        started = time.monotonic()
        try:
            outputs = await self._run_batch(_assemble(batch), _earliest_deadline(batch))
            _check_rows(outputs, rows)
        except GatewayError as exc:
            for chunk in batch:
                self._fail(chunk.request, exc)
        except asyncio.CancelledError:
            for chunk in batch:
                self._fail(chunk.request, Unavailable("the batch was cancelled"))
            raise
        except Exception as exc:
            logger.exception("the backend failed on a batch of %d rows", rows)
            error = BackendError(f"the backend failed on a batch of {rows} rows: {_summary(exc)}")
            for chunk in batch:
                self._fail(chunk.request, error)
        else:
            elapsed = time.monotonic() - started
            self._cost.observe(rows, elapsed)
            self._stats.executed(elapsed, rows, len(batch))
            self._deliver(batch, outputs)
        finally:
            self._running -= 1
            self._poke()

    def _deliver(self, batch: list[_Chunk], outputs: Tensors) -> None:
        start = 0
        for chunk in batch:
            request = chunk.request
            end = start + chunk.rows
            if not request.future.done():
                names = outputs.keys() if request.outputs is None else request.outputs
                try:
                    part = {name: outputs[name][start:end] for name in names}
                except KeyError as missing:
                    self._fail(
                        request,
                        InvalidInput(
                            f"unknown output {missing.args[0]!r}; "
                            f"available: {', '.join(sorted(outputs))}"
                        ),
                    )
                else:
                    request.parts[chunk.index] = part
                    if len(request.parts) == len(request.chunks):
                        request.future.set_result(None)
            start = end


def _describe(inputs: Tensors) -> tuple[int, Signature]:
    """The rows of a request and the signature that decides which requests it may join."""
    if not inputs:
        raise InvalidInput("a request needs at least one input")
    rows: int | None = None
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidInput(f"input {name!r} has no batch dimension")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidInput(f"inputs disagree on the number of rows ({rows} vs {name!r}'s)")
    if not rows:
        raise InvalidInput("a request needs at least one row")
    signature = tuple(
        sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items())
    )
    return rows, signature


def _assemble(batch: list[_Chunk]) -> Tensors:
    if len(batch) == 1:
        # A copy of the dict only: run_batch may add entries (features) without touching ours.
        return dict(batch[0].inputs)
    return {
        name: np.concatenate([chunk.inputs[name] for chunk in batch]) for name in batch[0].inputs
    }


def _earliest_deadline(batch: list[_Chunk]) -> float | None:
    """The first member deadline of a batch: a remote backend gives up on the batch then."""
    deadlines = [chunk.request.deadline for chunk in batch if chunk.request.deadline is not None]
    return min(deadlines) if deadlines else None


def _check_rows(outputs: Tensors, rows: int) -> None:
    for name, array in outputs.items():
        if not isinstance(array, np.ndarray) or array.ndim == 0 or array.shape[0] != rows:
            got = getattr(array, "shape", type(array).__name__)
            raise BackendError(
                f"the backend answered output {name!r} with shape {got} for a batch of {rows} rows"
            )


def _join(request: _Request) -> Tensors:
    parts = request.parts
    if len(parts) == 1:
        return parts[0]
    ordered = [parts[index] for index in range(len(parts))]
    return {name: np.concatenate([part[name] for part in ordered]) for name in ordered[0]}


def _summary(exc: Exception) -> str:
    """The exception's type and the first line of its message: no traceback, bounded."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
