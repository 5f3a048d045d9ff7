"""Giving the C heap's free memory back to the system after a model loads.

onnxruntime optimises a graph at load (constant folding, weight prepacking) in scratch memory
that it frees, but glibc's malloc keeps freed memory in its arenas: the demo's heavy_mlp leaves
200-300 MiB resident that no one uses (docs/memory.md). malloc_trim returns it; where the C
library is not glibc, there is nothing to call and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_freed_heap() -> None:
    """Return the free memory of every malloc arena to the system (glibc only)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
