"""Run a load job in this process or in several, past the GIL, and merge what they measured."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
import traceback
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Barrier
from typing import Any

import uvloop

from loadtests.generator import LoadSpec, RunResult, run_load
from loadtests.targets import Client, open_target, parse_url
from loadtests.workloads import Workload
from loadtests.wrk import run_wrk

_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Job:
    url: str
    workload: Workload
    spec: LoadSpec
    client: Client = "raw"

    def __post_init__(self) -> None:
        scheme, _, _ = parse_url(self.url)
        if scheme == "grpc" and self.workload.scenario.api == "predict":
            raise ValueError("the entity predict API is HTTP only; use a v2-* scenario over gRPC")
        if self.client == "wrk" and scheme != "http":
            raise ValueError("wrk speaks HTTP only")


async def run_job(job: Job, barrier: Barrier | None = None) -> RunResult:
    connections = job.spec.concurrency or job.spec.max_inflight
    target = open_target(job.url, job.workload, client=job.client, connections=connections)
    try:
        if barrier is not None:
            # Building the request pool takes a while; start the clock in every process at once.
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait, _START_TIMEOUT_S)
        return await run_load(target, job.spec)
    finally:
        await target.aclose()


def execute(job: Job, procs: int = 1) -> RunResult:
    """Run the job across ``procs`` processes (1: this one) and return the merged result;
    with wrk, across ``procs`` wrk threads."""
    if job.client == "wrk":
        return run_wrk(job.url, job.workload, job.spec, threads=procs)
    if procs == 1:
        return uvloop.run(run_job(job))
    return _run_processes(split(job, procs))


def split(job: Job, procs: int) -> list[Job]:
    """One job per process, which together make the whole: same total load, distinct requests."""
    spec = job.spec
    if spec.concurrency is not None and spec.concurrency < procs:
        raise ValueError(f"concurrency {spec.concurrency} cannot be spread over {procs} processes")
    if spec.requests is not None and spec.requests < procs:
        raise ValueError(f"{spec.requests} requests cannot be spread over {procs} processes")
    jobs = []
    for k in range(procs):
        part = replace(
            spec,
            concurrency=_share(spec.concurrency, procs, k),
            requests=_share(spec.requests, procs, k),
            rate=spec.rate / procs if spec.rate is not None else None,
            # A metronome per process at rate/N, offset by 1/rate each: together, one metronome.
            phase_s=k / spec.rate if spec.rate is not None else 0.0,
            seed=spec.seed + k,
        )
        workload = job.workload.with_seed(job.workload.seed + k)
        jobs.append(replace(job, spec=part, workload=workload))
    return jobs


def _share(total: int | None, parts: int, k: int) -> int | None:
    if total is None:
        return None
    return total // parts + (1 if k < total % parts else 0)


def _child(job: Job, barrier: Barrier, results: multiprocessing.Queue[Any]) -> None:
    try:
        results.put(("ok", uvloop.run(run_job(job, barrier)).to_dict()))
    except BaseException:
        barrier.abort()
        results.put(("error", traceback.format_exc()))


def _run_processes(jobs: list[Job]) -> RunResult:
    # spawn, not fork: a forked child would inherit the parent's event loop and threads.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    results: multiprocessing.Queue[Any] = ctx.Queue()
    children = [ctx.Process(target=_child, args=(job, barrier, results)) for job in jobs]
    for child in children:
        child.start()
    spec = jobs[0].spec
    deadline = time.monotonic() + _START_TIMEOUT_S + spec.duration_s + spec.timeout_s + 10
    merged = RunResult()
    failures = []
    reports = 0
    try:
        while reports < len(jobs):
            try:
                status, payload = results.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline or not any(c.is_alive() for c in children):
                    raise RuntimeError("a generator process died without reporting") from None
                continue
            reports += 1
            if status == "ok":
                merged.merge(RunResult.from_dict(payload))
            else:
                failures.append(payload)
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
    if failures:
        raise RuntimeError("generator process failed:\n" + failures[0])
    return merged
