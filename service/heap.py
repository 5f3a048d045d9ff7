"""Giving the C heap's free memory back to the system after a model loads.

onnxruntime optimises a graph at load (constant folding, weight prepacking) in scratch memory
that it frees, but glibc's malloc keeps freed memory in its arenas: the demo's heavy_mlp leaves
200-300 MiB resident that no one uses (docs/memory.md). malloc_trim returns it; where the C
library is not glibc, there is no such function and nothing is done.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any


@cache
def _malloc_trim() -> Any:
    # The process's own symbols, the C library's among them: no library search at run time.
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_heap() -> None:
    """Return the free memory of every malloc arena to the system (glibc only)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
