"""The local files that hold audit records while the sink is down, until they are drained back.

One main spill file per process (`<spill_dir>/<pid>.spill`), and one more per lane of a sink
that fails by lanes (`<pid>-<n>.spill`, a Redis Cluster's streams), each held under an
exclusive flock so two gateway workers never share one. On open, the main file adopts every
other `*.spill` file in the directory that no live process holds: the records of a worker
that died before its sink came back are drained too, not orphaned. Every method blocks;
AuditLog runs them on one thread, in order.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from service.audit.framing import LENGTH, frame, read_frames, valid_length

SUFFIX = ".spill"


def spill_file(spill_dir: Path) -> Path:
    return spill_dir / f"{os.getpid()}{SUFFIX}"


class Spill:
    """An append-only frame file with a read offset; bounded by `max_bytes` on disk, shared
    with the process's other spill files."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd = -1
        self._size = 0
        self._read = 0

    @property
    def pending(self) -> bool:
        return self._read < self._size

    @property
    def size(self) -> int:
        return self._size

    def open(self, *, adopt: bool = True) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"spill file {self.path} is held by another process") from None
        self._fd = fd
        os.ftruncate(fd, valid_length(fd))
        if adopt:
            self._adopt_orphans()
        self._size = os.fstat(fd).st_size
        self._read = 0

    def append(self, payloads: list[bytes], others: int = 0) -> int:
        """Append the longest prefix of `payloads` that fits beside the `others` bytes the
        process's other spill files hold; returns how many were written."""
        room = self.max_bytes - others - self._size
        n, need = 0, 0
        for p in payloads:
            if need + LENGTH.size + len(p) > room:
                break
            need += LENGTH.size + len(p)
            n += 1
        if n:
            self._write_all(frame(payloads[:n]))
            self._size += need
        return n

    def read(self, max_frames: int) -> tuple[list[bytes], int]:
        """The next undrained payloads and the offset to `consume` once the sink has them."""
        return read_frames(self._fd, self._read, max_frames)

    def consume(self, offset: int) -> None:
        self._read = offset
        if self._read >= self._size:
            # Fully drained: start over, so the file never grows past one outage.
            os.ftruncate(self._fd, 0)
            self._size = self._read = 0

    def close(self) -> None:
        """Keep only what is not drained yet, for the next process to drain; remove it if none."""
        if self._fd < 0:
            return
        if not self.pending:
            self.path.unlink(missing_ok=True)
        elif self._read > 0:
            self._keep_tail()
        else:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A partial frame would misalign every frame after it.
            os.ftruncate(self._fd, self._size)
            raise

    def _keep_tail(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            offset = self._read
            while True:
                frames, offset = read_frames(self._fd, offset, 4096)
                if not frames:
                    break
                os.write(out, frame(frames))
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, self.path)

    def _adopt_orphans(self) -> None:
        others = [p for p in self.path.parent.glob(f"*{SUFFIX}") if p != self.path]
        for other in sorted(others, key=_mtime):
            try:
                fd = os.open(other, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live worker's own spill
                if not _same_file(fd, other):
                    continue  # adopted and removed by another process since we listed it
                offset = 0
                while True:
                    frames, offset = read_frames(fd, offset, 4096)
                    if not frames:
                        break
                    self._size = os.fstat(self._fd).st_size
                    self._write_all(frame(frames))
                other.unlink()
            finally:
                os.close(fd)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return os.fstat(fd).st_ino == st.st_ino
