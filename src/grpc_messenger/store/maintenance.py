"""Operator chores on a SQLite store: online backup, integrity and checksum check, compaction.

`backup` and `check` only read: they run against a live replica's file too (WAL
lets a reader see one consistent snapshot while the writer commits). `compact`
writes (its purge goes through the store's own code and the replica's purge rule,
server/compaction.py), so it needs the replica stopped: a
replica holds an exclusive lock on its data directory (`DataDirLock`) for as
long as it runs, and compact takes the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from grpc_messenger.errors import StoreError
from grpc_messenger.store.base import row_checksum
from grpc_messenger.store.diskspace import bytes_on_disk

STORE_FILE = "replica.sqlite3"
LOCK_FILE = "replica.lock"
DAMAGED_LISTED_MAX = 1000


def store_file(data_dir: Path) -> Path:
    """Where a replica keeps its SQLite store inside its data directory."""
    return data_dir / STORE_FILE


@dataclass(frozen=True, slots=True)
class DamagedRow:
    """A queued message whose content no longer matches its checksum."""

    seq: int
    mailbox: str
    key: str


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What `check` found: SQLite's integrity check and the per-row checksums."""

    path: Path
    integrity: tuple[str, ...]  # ("ok",) when the file is whole
    rows_checked: int
    damaged: tuple[DamagedRow, ...]  # at most DAMAGED_LISTED_MAX listed
    damaged_count: int

    @property
    def ok(self) -> bool:
        """True when the file is whole and every row matches its checksum."""
        return self.integrity == ("ok",) and self.damaged_count == 0


@dataclass(frozen=True, slots=True)
class CompactReport:
    """What `compact` did."""

    path: Path
    tombstones_purged: int
    bytes_before: int
    bytes_after: int


class DataDirLock:
    """An exclusive advisory lock on a data directory: one writer (replica or compact) at a time."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreError naming who holds it."""
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(f"data directory {self.path.parent} is in use by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StoreError(f"no store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    # damaged text must fail its row's checksum, not the whole read (as in the store)
    conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    return conn


@contextlib.contextmanager
def _readonly(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        conn = _open_readonly(path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


def check(path: Path) -> CheckReport:
    """SQLite's full integrity check, then every queued row against its checksum; read-only."""
    with _readonly(path) as conn:
        try:
            integrity = tuple(str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall())
            checked, damaged, count = _verify_rows(conn)
        except sqlite3.DatabaseError as exc:
            return CheckReport(path, (f"unreadable: {exc}",), 0, (), 0)
    return CheckReport(path, integrity, checked, tuple(damaged), count)


def _verify_rows(conn: sqlite3.Connection) -> tuple[int, list[DamagedRow], int]:
    checked = 0
    count = 0
    damaged: list[DamagedRow] = []
    # one consistent snapshot for the whole scan
    conn.execute("BEGIN")
    try:
        # a row whose key has a tombstone is acked and only waits for the replica to sweep it
        rows = conn.execute(
            "SELECT seq, mailbox, msg_key, digest, body_bytes, wire, checksum FROM messages WHERE NOT EXISTS"
            " (SELECT 1 FROM tombstones WHERE tombstones.mailbox = messages.mailbox"
            " AND tombstones.msg_key = messages.msg_key) ORDER BY seq"
        )
        for seq, mailbox, key, digest, size, data, checksum in rows:
            checked += 1
            if isinstance(data, bytes) and row_checksum(mailbox, key, digest, size, data) == checksum:
                continue
            count += 1
            if len(damaged) < DAMAGED_LISTED_MAX:
                damaged.append(DamagedRow(seq=seq, mailbox=mailbox, key=key))
    finally:
        conn.execute("COMMIT")
    return checked, damaged, count


def backup(source: Path, target: Path) -> CheckReport:
    """Copy a (live) store to `target` with SQLite's online backup API; return the copy's check.

    The copy is one consistent snapshot: it is read in a single step inside one
    read transaction, while the replica goes on committing to its WAL. It is
    written beside `target`, fsynced, then renamed, so `target` is never half a
    backup.
    """
    if target.exists():
        raise StoreError(f"{target} exists; choose a new file for the backup")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    with _readonly(source) as src:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: the whole file in one step, one snapshot
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"backup of {source} failed: {exc}") from exc
        finally:
            dst.close()
    _fsync(partial)
    partial.replace(target)
    _fsync(target.parent)
    return check(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compact(data_dir: Path, *, purge: Callable[[Path], Coroutine[Any, Any, int]]) -> CompactReport:
    """Run `purge` (it opens the store and forgets the tombstones it may), then VACUUM; replica stopped.

    The data-directory lock keeps a replica from starting meanwhile, and refuses
    to compact under a running one.
    """
    path = store_file(data_dir)
    if not path.exists():
        raise StoreError(f"no store at {path}")
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        before = bytes_on_disk(path)
        purged = asyncio.run(purge(path))
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return CompactReport(path, purged, before, bytes_on_disk(path))
    finally:
        lock.release()
