"""Instructions per request: the gateway under callgrind, so trees compare on a noisy machine.

Wall-clock figures on a shared 2-core box move 10 to 15% from run to run; the number of
instructions the gateway executes to answer a fixed set of requests does not (callgrind counts
them, whatever else the machine is doing). Each tree's gateway starts under
``valgrind --tool=callgrind --instr-atstart=no`` (start-up is not counted), answers a warm-up,
then counting is switched on for exactly ``requests`` requests sent with the given concurrency,
and the total is divided by that count. All of the gateway's threads are counted (the event
loop, the inference pool, onnxruntime's own threads); the client runs outside valgrind.

What it cannot see: time spent waiting (Redis round trips, batching delays) and differences in
how the CPU runs the same instructions. Batches form differently under valgrind's slow-down, so
at high concurrency the figure is the cost of the batches that formed, measured the same way
for every tree.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.http_client import HttpPool, encode_request
from loadtests.processes import (
    HOST,
    free_port,
    http_status,
    managed,
    mlgate_executable,
    redis_server,
)
from loadtests.seed import seed
from loadtests.workloads import SCENARIOS, Workload, http_requests

# Where `bench instructions` keeps its results; the page shows the newest (loadtests/render.py).
RESULTS = Path(__file__).with_name("results") / "instructions"
WARM_UP = 50
IDLE_S = 20.0
ATTEMPTS = 3
READY_TIMEOUT_S = 1200.0
REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Count:
    tree: str
    scenario: str
    concurrency: int
    requests: int
    instructions: int
    seconds: float
    """How long the counted requests took (under valgrind's slow-down)."""
    idle_per_s: float
    """Instructions per second the same gateway executes with no request at all (timers)."""

    @property
    def per_request(self) -> float:
        """Net of the idle work: what answering costs, not how long valgrind made it take."""
        return (self.instructions - self.idle_per_s * self.seconds) / self.requests


@contextmanager
def gateway_under_callgrind(
    serve_args: Sequence[str], tree: Path, out_dir: Path
) -> Iterator[tuple[int, int]]:
    """``mlgate serve`` from `tree` (its code and its models/) under callgrind; (pid, port)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not on PATH (Debian package valgrind)")
    port = free_port()
    argv = [
        valgrind,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
        mlgate_executable(),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        *serve_args,
    ]
    log = out_dir / "gateway.log"
    with managed(argv, env={"PYTHONPATH": str(tree)}, log=log) as proc:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while http_status(port, "/v2/health/ready") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gateway under callgrind did not start:\n{tail}")
            time.sleep(1.0)
        yield proc.pid, port


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _last_dump_total(out_dir: Path, pid: int) -> int:
    dumps = sorted(out_dir.glob(f"callgrind.{pid}.*"), key=lambda p: int(p.suffix.lstrip(".")))
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


async def _send(port: int, requests: list[bytes], concurrency: int) -> None:
    pool = HttpPool(HOST, port)
    queue = iter(requests)

    async def worker() -> None:
        for request in queue:
            response = await pool.request(request, REQUEST_TIMEOUT_S)
            if response.status != 200:
                raise RuntimeError(f"status {response.status}: {response.body[:200]!r}")

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        pool.close()


def _requests(scenario: str, n: int, entities: int) -> list[bytes]:
    pool = http_requests(Workload(SCENARIOS[scenario], key_space=entities))
    return [
        encode_request("POST", HOST, path, body, "application/json")
        for path, body in (pool[i % len(pool)] for i in range(n))
    ]


def _counted(pid: int, out_dir: Path, action: Callable[[], None]) -> tuple[int, float]:
    """Instructions the gateway executes while `action` runs, and the seconds it took."""
    _control(pid, "--dump")  # close whatever was counted before
    _control(pid, "--instr=on")
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    _control(pid, "--instr=off")
    _control(pid, "--dump")
    total = _last_dump_total(out_dir, pid)
    return total, seconds


def idle_rate(pid: int, out_dir: Path) -> float:
    """Instructions per second with no request: the timers (policy sync, rollout counts, loop
    lag, audit flush) that under valgrind would otherwise be charged to the requests."""
    total, seconds = _counted(pid, out_dir, lambda: time.sleep(IDLE_S))
    return total / seconds


def count(
    tree_name: str,
    gateway: tuple[int, int],
    out_dir: Path,
    scenario: str,
    concurrency: int,
    requests: int,
    entities: int,
    idle_per_s: float,
) -> Count:
    """Instructions the gateway executes for `requests` requests of `scenario`."""
    pid, port = gateway
    batch = _requests(scenario, WARM_UP + requests, entities)
    asyncio.run(_send(port, batch[:WARM_UP], concurrency))
    for _ in range(ATTEMPTS):
        total, seconds = _counted(
            pid, out_dir, lambda: asyncio.run(_send(port, batch[WARM_UP:], concurrency))
        )
        # Seen once in a dozen points: a dump of nothing, as if the counting had not begun.
        if total:
            break
    return Count(tree_name, scenario, concurrency, requests, total, seconds, idle_per_s)


def compare(
    trees: dict[str, Path],
    scenarios: Sequence[str],
    levels: Sequence[int],
    requests: int,
    entities: int,
    serve_args: Sequence[str],
    out_dir: Path,
) -> list[Count]:
    """Every tree's gateway over one seeded redis-server, each point counted once per tree."""
    counts: list[Count] = []
    with redis_server() as redis_url:
        first = next(iter(trees.values()))
        asyncio.run(seed(redis_url, first / "models/feature_views.yaml", entities))
        for name, tree in trees.items():
            tree_dir = out_dir / name
            tree_dir.mkdir(parents=True, exist_ok=True)
            args = [
                "--models",
                str(tree / "models"),
                "--views",
                str(tree / "models/feature_views.yaml"),
                "--feature-store",
                redis_url,
                "--log-level",
                "warning",
                *serve_args,
            ]
            with gateway_under_callgrind(args, tree, tree_dir) as gateway:
                idle = idle_rate(gateway[0], tree_dir)
                for scenario in scenarios:
                    for level in levels:
                        point = count(
                            name, gateway, tree_dir, scenario, level, requests, entities, idle
                        )
                        print(
                            f"{name:>10} {scenario:<16} c={level:<3} "
                            f"{point.per_request:>12,.0f} instructions/request net "
                            f"({point.instructions / requests:,.0f} gross, idle {idle:,.0f}/s "
                            f"over {point.seconds:.1f} s)",
                            flush=True,
                        )
                        counts.append(point)
    return counts


def save(counts: Sequence[Count], trees: dict[str, Path], command: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    measured = datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    commits = {
        name: subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        for name, tree in trees.items()
    }
    path = folder / f"{measured}.json"
    document = {
        "measured": measured,
        "command": command,
        "commits": commits,
        "counts": [{**asdict(c), "per_request": c.per_request} for c in counts],
    }
    path.write_text(json.dumps(document, indent=1))
    return path


def latest(folder: Path = RESULTS) -> dict[str, Any] | None:
    files = sorted(folder.glob("*.json"))
    loaded: dict[str, Any] | None = json.loads(files[-1].read_text()) if files else None
    return loaded


def section(results: dict[str, Any] | None) -> list[str]:
    """The page's section for the newest `bench instructions` run (none: no section)."""
    if results is None:
        return []
    counts = [
        Count(**{k: v for k, v in c.items() if k != "per_request"}) for c in results["counts"]
    ]
    commits = ", ".join(f"{name} = {commit}" for name, commit in results["commits"].items())
    return [
        "",
        f"## Instructions per request against an earlier tree ({results['measured']})",
        "",
        "Not made by `make bench`: each tree's gateway under callgrind, counting the"
        " instructions all its threads execute to answer the same requests (repeatable on a"
        " noisy machine, unlike req/s), net of what its timers cost while idle"
        f" (loadtests/instructions.py). Trees: {commits}. Command: `{results['command']}`",
        "",
        format_ratios(counts),
    ]


def format_ratios(counts: Sequence[Count]) -> str:
    """One line per point: each tree's instructions per request and its ratio to the first."""
    reference = counts[0].tree
    base = {(c.scenario, c.concurrency): c.per_request for c in counts if c.tree == reference}
    lines = [
        f"| tree | scenario | c | instructions/request, net of idle | gross | vs {reference} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in counts:
        ratio = c.per_request / base[(c.scenario, c.concurrency)]
        lines.append(
            f"| {c.tree} | {c.scenario} | {c.concurrency} | {c.per_request:,.0f} "
            f"| {c.instructions / c.requests:,.0f} | {ratio:.3f} |"
        )
    return "\n".join(lines)
