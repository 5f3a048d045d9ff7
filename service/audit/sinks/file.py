"""The embedded default sink: an append-only frame file rotated by size."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

from service.audit.framing import frame, valid_length
from service.audit.index import MemoryIndex
from service.audit.record import EncodedRecord


def sink_files(path: Path) -> list[Path]:
    """The files of a sink at `path` that exist, oldest first: path.<n> .. path.1, path."""
    numbered: list[tuple[int, Path]] = []
    for p in path.parent.glob(f"{path.name}.*"):
        n = p.name.removeprefix(f"{path.name}.")
        if n.isdigit():
            numbered.append((int(n), p))
    return [p for _, p in sorted(numbered, reverse=True)] + ([path] if path.exists() else [])


class FileSink:
    """Appends each batch with one write(); at `rotate_bytes` the file becomes `<path>.1`.

    Every append and rotation holds an flock on `<path>.lock`, so gateway workers that share
    the path interleave whole batches and rotate once, not once each. What this process wrote
    last is indexed in memory for label feedback (service.audit.index).
    """

    def __init__(self, path: Path, *, rotate_bytes: int = 64 << 20, keep: int = 5) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self._fd = -1
        self._lock_fd = -1
        # One thread: appends stay in order and never stall the event loop on a slow disk.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-file")
        self.index = MemoryIndex()

    def lane(self, e: EncodedRecord) -> str:
        return ""

    async def write(self, batch: Sequence[EncodedRecord]) -> list[EncodedRecord]:
        data = frame(e.payload for e in batch)
        await asyncio.get_running_loop().run_in_executor(self._io, self._append, data)
        for e in batch:
            self.index.add(e)
        return []

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self._close)
        self._io.shutdown(wait=False)

    def _append(self, data: bytes) -> None:
        if self._lock_fd < 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            fd = self._current()
            size = os.fstat(fd).st_size
            if size and size + len(data) > self.rotate_bytes:
                self._rotate()
                fd = self._current()
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _current(self) -> int:
        """The fd of `path` now, reopened if another process rotated it away from under us."""
        if self._fd >= 0:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return self._fd
            except FileNotFoundError:
                pass
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        # What a crash mid-write left would misalign every later frame.
        os.ftruncate(self._fd, valid_length(self._fd))
        return self._fd

    def _rotate(self) -> None:
        files = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        files.append(self.path)
        for older, newer in pairwise(files):
            if newer.exists():
                os.replace(newer, older)

    def _close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1
