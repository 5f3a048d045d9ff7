"""CPU time of a process and its descendants (a gateway and its workers), from Linux's /proc."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # gone since the listing
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ")".
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_s(pid: int) -> float:
    """User plus system seconds of `pid` and every live descendant; workers that exited
    between two readings are missed, so compare readings of a steady process tree."""
    stats = {p: s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}
    children: dict[str, list[str]] = {}
    for child, child_fields in stats.items():
        children.setdefault(child_fields[1], []).append(child)  # [1]: the parent's pid
    total, todo = 0, [str(pid)]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        todo += children.get(current, [])
    return total / _TICKS_PER_S
