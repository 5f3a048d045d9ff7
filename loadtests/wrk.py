"""Closed-loop HTTP load from wrk, a C client, so that the generator is never the limit.

The workload's request pool goes to wrk through a file that a Lua script reads in every wrk
thread and cycles through; when the run ends, the script writes wrk's counts and its whole
latency distribution as its quantiles every 0.1% (wrk's own counts per value disagree with its
request count); they become a RunResult like the Python generator's. wrk has no open loop and
speaks no gRPC.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from loadtests.generator import LoadSpec, RunResult
from loadtests.workloads import Workload, http_requests

# The latency distribution as its quantiles in steps of 0.1%: p99.9 is the last but one.
STEPS = 1000
# init() loads the pool (path and body on alternate lines); done() reports on lines that
# start with MARK, so that wrk's own report can stay in the output.
MARK = "mlgate-wrk"
SCRIPT = f"""
local requests, index = {{}}, 0
function init(args)
  local lines = {{}}
  for line in io.lines(args[1]) do lines[#lines + 1] = line end
  local headers = {{["Content-Type"] = "application/json"}}
  for i = 1, #lines, 2 do
    requests[#requests + 1] = wrk.format("POST", lines[i], headers, lines[i + 1])
  end
end
function request()
  index = index % #requests + 1
  return requests[index]
end
function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format("{MARK} %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status, e.connect, e.read, e.write, e.timeout))
  for i = 1, {STEPS} do
    io.write(string.format("{MARK}-latency %d\\n", latency:percentile(i * 100 / {STEPS})))
  end
end
"""
ERRORS = ("http_status", "connect", "read", "write", "timeout")


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not on PATH (`make wrk` installs it)")
    return found


def run_wrk(url: str, workload: Workload, spec: LoadSpec, threads: int = 1) -> RunResult:
    """`spec.concurrency` connections over `threads` wrk threads for `spec.duration_s`."""
    if spec.concurrency is None:
        raise ValueError("wrk drives a closed loop only: give a concurrency, not a rate")
    if spec.requests is not None:
        raise ValueError("wrk runs for a duration, not a number of requests")
    with tempfile.TemporaryDirectory(prefix="mlgate-wrk-") as folder:
        pool = Path(folder) / "requests.txt"
        pool.write_bytes(
            b"".join(path.encode() + b"\n" + body + b"\n" for path, body in http_requests(workload))
        )
        script = Path(folder) / "post.lua"
        script.write_text(SCRIPT)
        argv = [
            wrk_binary(),
            f"--threads={min(threads, spec.concurrency)}",
            f"--connections={spec.concurrency}",
            f"--duration={max(1, round(spec.duration_s))}s",
            f"--timeout={max(1, round(spec.timeout_s))}s",
            f"--script={script}",
            url,
            "--",
            str(pool),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or f"{MARK} " not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    return parse_report(done.stdout)


def parse_report(output: str) -> RunResult:
    """The RunResult of what SCRIPT's done() wrote. wrk keeps one latency distribution, so
    answers with an error status are in it too."""
    result = RunResult()
    quantiles: list[int] = []
    for line in output.splitlines():
        word, *numbers = line.split()
        if word == MARK:
            requests, duration_us, *errors = (int(n) for n in numbers)
            result.elapsed_s = duration_us / 1e6
            result.errors.update({k: n for k, n in zip(ERRORS, errors, strict=True) if n})
            # A status error is an answered request; the others never got one.
            result.ok = requests - errors[0]
        elif word == f"{MARK}-latency":
            quantiles.append(int(numbers[0]))
    # The answered requests spread evenly over the quantiles: the i-th holds those up to i/STEPS.
    answered = result.ok + result.errors["http_status"]
    for i, value_us in enumerate(quantiles, start=1):
        count = answered * i // len(quantiles) - answered * (i - 1) // len(quantiles)
        if count:
            result.latency.record_count_us(value_us, count)
    return result
