"""A full disk is an operating condition, not a store failure.

SQLite answers a write that finds no space with SQLITE_FULL and rolls the
transaction back: nothing of it is acknowledged and the file stays intact. The
replica then refuses writes with RESOURCE_EXHAUSTED (back off and retry; the
client's outbox does) instead of UNAVAILABLE, keeps serving reads, and accepts
writes again as soon as a commit fits.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from grpc_messenger.errors import ResourceExhausted, StoreError


class DiskFull(ResourceExhausted):
    """The replica's data directory has no space left; writes are refused until space returns."""


def is_disk_full(exc: sqlite3.Error) -> bool:
    """True when SQLite failed for want of space: SQLITE_FULL, read from the error code, never its text.

    (The unix VFS turns ENOSPC on a write into SQLITE_FULL; the low byte of an
    extended result code is its primary code.)
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL


def commit_error(exc: sqlite3.Error, *, path: Path) -> StoreError | DiskFull:
    """The error a failed commit gives every writer in it: DiskFull (retry later) or StoreError."""
    if is_disk_full(exc):
        return DiskFull(
            f"replica disk full: the data directory {path.parent} has no space left; "
            "this write was not stored (retry later); reads are still served"
        )
    return StoreError(f"commit failed: {exc}")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def bytes_on_disk(path: Path) -> int:
    """Bytes a SQLite store takes: its file plus its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += path.with_name(path.name + suffix).stat().st_size
        except FileNotFoundError:
            continue
    return total
