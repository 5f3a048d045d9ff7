"""Length-prefixed record files, shared by the file sink, the spill and the readers.

A file is a run of frames: a little-endian u32 payload length, then the payload. No file
header, so a file may be cut or concatenated at any frame boundary. A crash can leave a
partial frame at the end; readers stop before it and writers cut it off when they open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

LENGTH = struct.Struct("<I")
_READ_BLOCK = 256 << 10


def frame(payloads: Iterable[bytes]) -> bytes:
    """The frames of `payloads`, joined so that a batch is one write()."""
    parts: list[bytes] = []
    for p in payloads:
        parts.append(LENGTH.pack(len(p)))
        parts.append(p)
    return b"".join(parts)


def read_frames(fd: int, offset: int, max_frames: int) -> tuple[list[bytes], int]:
    """Up to `max_frames` complete payloads from `offset`, and the offset after the last."""
    out: list[bytes] = []
    while len(out) < max_frames:
        block = os.pread(fd, _READ_BLOCK, offset)
        pos = 0
        while len(out) < max_frames and pos + LENGTH.size <= len(block):
            (n,) = LENGTH.unpack_from(block, pos)
            end = pos + LENGTH.size + n
            if end > len(block):
                break
            out.append(block[pos + LENGTH.size : end])
            pos = end
        if pos == 0 and len(block) >= LENGTH.size:
            # One frame larger than a block: read it whole, or stop at a partial tail.
            (n,) = LENGTH.unpack_from(block, 0)
            payload = os.pread(fd, n, offset + LENGTH.size)
            if len(payload) < n:
                break
            out.append(payload)
            pos = LENGTH.size + n
        if pos == 0:
            break
        offset += pos
    return out, offset


def iter_file(path: Path, *, batch: int = 1024) -> Iterator[bytes]:
    """Every complete payload of one file, in order."""
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while True:
            frames, offset = read_frames(fd, offset, batch)
            if not frames:
                return
            yield from frames
    finally:
        os.close(fd)


def valid_length(fd: int) -> int:
    """The offset just past the last complete frame: what survives a crash mid-write."""
    offset = 0
    while True:
        frames, offset = read_frames(fd, offset, 4096)
        if not frames:
            return offset
