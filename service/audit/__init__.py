"""Audit log: one record per prediction, queued in bytes, written to Redis Streams or a file.

The request path calls `AuditLog.submit` only; reading back (`tail`, `export`) lives in
`service.audit.reader`, kept out of this import so the gateway never loads pyarrow for it.
"""

from __future__ import annotations

from pathlib import Path

from service.audit.queue import AuditLog
from service.audit.record import AuditRecord, decode_record, encode_record
from service.audit.sinks import open_sink
from service.audit.spill import spill_file

__all__ = ["AuditLog", "AuditRecord", "decode_record", "encode_record", "open_audit"]


def open_audit(url: str, *, spill_dir: Path) -> AuditLog | None:
    """The audit log for `mlgate serve --audit URL`, not started; None for `none`."""
    sink = open_sink(url)
    if sink is None:
        return None
    return AuditLog(sink, spill_path=spill_file(spill_dir))
