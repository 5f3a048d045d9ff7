"""The CPU budget per request, stage by stage: `mlgate bench budget`.

The real app (service.server.create_app, its lifespan run as `mlgate serve` runs it) is called
in-process through ASGI, one request at a time, for entity predict and for V2 infer. Every
stage's entry point is wrapped by a clock of process CPU time (all threads: onnxruntime's too);
each stage keeps its own time less that of the stages that ran inside it, so the stages never
count a microsecond twice. One request at a time, whatever runs while a stage awaits (the
batcher's run, a drift count the loop schedules) ran for that request; the stages and *rest*
(the event loop between calls, background tasks, this driver) add up to the process's CPU time
over the run. uvicorn's own HTTP parsing and writing are outside: ASGI is called directly.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.workloads import SCENARIOS, Workload, http_requests

# The stages in the order a request meets them; "http front" is the ASGI app's own work
# (routing, body read, JSON decode and encode, middleware) less every stage inside it.
FRONT = "http front"
REST = "rest"
STAGES = (
    FRONT,
    "route",
    "validate",
    "features",
    "score",
    "guard",
    "record",
    "drift counting",
    REST,
)
# (label, scenario): entity predict with the features read from the store; V2 infer with them
# in the body.
WORKLOADS = (("entity predict", "predict-1"), ("V2 infer", "v2-dense-1"))
ASGI = Callable[..., Awaitable[None]]
# Alternating rounds of clocked and unclocked requests per workload.
ROUNDS = 5


@dataclass
class StageClock:
    """Exclusive process CPU seconds per stage; nested stages are subtracted from their parent."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # (stage, started, seconds of the stages inside it so far)
    _open: list[list[Any]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._open.append([name, time.process_time(), 0.0])
        try:
            yield
        finally:
            _, started, inner = self._open.pop()
            spent = time.process_time() - started
            self.seconds[name] += spent - inner
            if self._open:
                self._open[-1][2] += spent

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                with self.stage(name):
                    return await function(*args, **kwargs)

            return timed_async

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return function(*args, **kwargs)

        return timed


@contextmanager
def clocked(pipeline: Any, clock: StageClock) -> Iterator[None]:
    """Every stage's entry points wrapped by `clock`, put back on exit."""
    from service.monitor.drift import VersionDrift
    from service.pipeline import pipeline as pipeline_module
    from service.pipeline import validate

    points: list[tuple[object, str, str]] = [
        (pipeline.route, "resolve", "route"),
        (pipeline.route, "entity_key", "route"),
        *(
            (validate, name, "validate")
            for name in ("entity_list", "check_entities", "split_inputs", "requested_outputs")
        ),
        (pipeline, "_features", "features"),
        (pipeline_module, "score", "score"),
        (pipeline.guard, "check", "guard"),
        (pipeline.record, "tally", "record"),
        (pipeline.record, "log", "record"),
        # A bound method the loop calls once the batch's answers are out (count_soon).
        (VersionDrift, "count", "drift counting"),
    ]
    with ExitStack() as undo:
        for owner, attribute, stage in points:
            original = owner.__dict__.get(attribute)
            setattr(owner, attribute, clock.wrap(stage, getattr(owner, attribute)))
            # An instance's own attribute is removed again; a module's or class's restored.
            undo.callback(
                delattr if original is None else setattr,
                *((owner, attribute) if original is None else (owner, attribute, original)),
            )
        yield


async def call(app: ASGI, path: str, body: bytes) -> int:
    """One POST through the ASGI app; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        # The client never leaves: the disconnect watcher waits until the app cancels it.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure_workload(
    app: ASGI, pipeline: Any, requests: list[tuple[str, bytes]], count: int
) -> dict[str, Any]:
    """`count` sequential requests cycled from `requests` with the clocks (the stages) and as
    many without them (the total as served), in alternating rounds so that a drift of the
    machine's load over the run touches both alike; µs per request."""
    for path, body in requests[:50]:  # warm: first runs, lazy imports
        await call(app, path, body)
    clock = StageClock()
    unclocked_s = total_s = 0.0
    size = max(1, count // ROUNDS)
    for first in range(0, count, size):
        batch = [requests[i % len(requests)] for i in range(first, min(count, first + size))]
        started = time.process_time()
        for path, body in batch:
            await call(app, path, body)
        unclocked_s += time.process_time() - started
        with clocked(pipeline, clock):
            started = time.process_time()
            for path, body in batch:
                with clock.stage(FRONT):
                    status = await call(app, path, body)
                if status != 200:
                    raise RuntimeError(f"{path} answered {status}")
            total_s += time.process_time() - started
    clock.seconds[REST] = total_s - sum(clock.seconds.values())
    return {
        "requests": count,
        "total_us": round(total_s / count * 1e6, 1),
        "unclocked_total_us": round(unclocked_s / count * 1e6, 1),
        "stages_us": {name: round(s / count * 1e6, 1) for name, s in clock.seconds.items()},
    }


async def _measure(settings: Any, count: int, entities: int) -> list[dict[str, Any]]:
    from service.server import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pipeline = app.state.pipeline
        budgets = []
        for label, scenario in WORKLOADS:
            requests = http_requests(Workload(SCENARIOS[scenario], key_space=entities))
            budget = await measure_workload(app, pipeline, requests, count)
            budgets.append({"workload": label, "scenario": scenario} | budget)
        return budgets


def measure_budget(
    models: Path, views: Path, feature_store: str, entities: int, count: int
) -> dict[str, Any]:
    """The budget of `count` requests of each workload against the gateway as `mlgate serve`
    builds it by default, audit to a file included, features from `feature_store` (seeded with
    `entities` entities, or, memory://, seeded here)."""
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="mlgate-budget-") as folder:
        settings = Settings(
            models=models,
            views=views,
            feature_store=feature_store,
            demo_entities=entities,
            audit=f"file://{folder}/audit.log",
            audit_spill_dir=Path(folder) / "spill",
            log_level="warning",
        )
        budgets = asyncio.run(_measure(settings, count, entities))
    return {"workloads": budgets}


def format_budget(budget: dict[str, Any]) -> str:
    lines = [f"{'stage':<16}" + "".join(f"{w['workload']:>18}" for w in budget["workloads"])]
    for stage in STAGES:
        lines.append(
            f"{stage:<16}"
            + "".join(f"{w['stages_us'][stage]:>15.1f} µs" for w in budget["workloads"])
        )
    lines.append(
        f"{'total':<16}" + "".join(f"{w['total_us']:>15.1f} µs" for w in budget["workloads"])
    )
    lines.append(
        f"{'unclocked':<16}"
        + "".join(f"{w['unclocked_total_us']:>15.1f} µs" for w in budget["workloads"])
    )
    return "\n".join(lines)
