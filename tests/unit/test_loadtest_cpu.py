"""CPU time of a process tree: what the suite divides by requests for server CPU per request."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from loadtests.cpu import tree_cpu_s

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def test_cpu_of_a_tree_counts_its_live_children() -> None:
    # The child burns 0.3 s of CPU, then waits for its stdin to close, alive to be read.
    child = subprocess.Popen(
        [sys.executable, "-c", BURN + "print('done', flush=True)\nimport sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"done\n"
        own = time.process_time()
        assert tree_cpu_s(os.getpid()) - own >= 0.25
        assert tree_cpu_s(child.pid) >= 0.25
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert tree_cpu_s(child.pid) == 0
