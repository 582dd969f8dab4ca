"""SQLite store: WAL, synchronous=FULL, group commit on one writer thread.

Every write is an operation queued for the writer thread. The writer takes
everything that queued up while the previous commit ran, applies it in one
transaction (a savepoint per operation, so one bad operation fails alone),
commits with an fsync, and only then resolves each caller's future. Many
messages, one fsync: that is group commit, and no message is acknowledged
before the commit that makes it durable.

Reads use a second connection on a reader thread; WAL lets them run while the
writer commits.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grpc_messenger.errors import ResourceExhausted, StoreError
from grpc_messenger.model import Message, PutOutcome
from grpc_messenger.store.base import (
    UNKNOWN_DIGEST,
    FetchPage,
    KeyState,
    MailboxDigest,
    MailboxUsage,
    ScrubPage,
    StoreCounts,
    TombstoneRef,
    decide,
    key_hash,
)
from grpc_messenger.store.diskspace import DiskFull, commit_error

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = "3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order here; Fetch's cursor
    mailbox TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    legacy_id INTEGER NOT NULL,
    digest TEXT NOT NULL,                   -- sha256 of content: identity and checksum
    -- key first: keys are UUIDv7 (time-ordered), so new entries land on the last
    -- page of this index whatever their mailbox. (mailbox, msg_key) dirtied one
    -- page per mailbox per commit: twice the WAL bytes per message. Stores made
    -- before keep that order; both serve the same lookups.
    UNIQUE (msg_key, mailbox)
);
CREATE INDEX IF NOT EXISTS messages_by_mailbox ON messages (mailbox, seq);
CREATE TABLE IF NOT EXISTS tombstones (
    mailbox TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    deleted_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (mailbox, msg_key)
) WITHOUT ROWID;
-- per-mailbox totals for quotas, kept exact by triggers inside every write transaction
CREATE TABLE IF NOT EXISTS mailbox_usage (
    mailbox TEXT PRIMARY KEY,
    messages INTEGER NOT NULL,
    body_bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS mailbox_usage_insert AFTER INSERT ON messages BEGIN
    INSERT INTO mailbox_usage (mailbox, messages, body_bytes)
    VALUES (new.mailbox, 1, length(CAST(new.body AS BLOB)))
    ON CONFLICT (mailbox) DO UPDATE SET
        messages = messages + 1, body_bytes = body_bytes + length(CAST(new.body AS BLOB));
END;
CREATE TRIGGER IF NOT EXISTS mailbox_usage_delete AFTER DELETE ON messages BEGIN
    UPDATE mailbox_usage SET messages = messages - 1, body_bytes = body_bytes - length(CAST(old.body AS BLOB))
    WHERE mailbox = old.mailbox;
    DELETE FROM mailbox_usage WHERE mailbox = old.mailbox AND messages <= 0;
END;
-- Repair fingerprints: XOR of key_hash() over each mailbox's queued keys and
-- tombstones, kept exact by triggers inside every write transaction.
CREATE TABLE IF NOT EXISTS mailbox_digest (
    mailbox TEXT PRIMARY KEY,
    digest INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    tombstones INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS digest_message_in AFTER INSERT ON messages BEGIN
    INSERT INTO mailbox_digest (mailbox, digest, messages, tombstones)
    VALUES (new.mailbox, key_hash(new.mailbox, 'm', new.msg_key), 1, 0)
    ON CONFLICT (mailbox) DO UPDATE SET digest = xor62(digest, key_hash(new.mailbox, 'm', new.msg_key)),
        messages = messages + 1;
END;
CREATE TRIGGER IF NOT EXISTS digest_message_out AFTER DELETE ON messages BEGIN
    UPDATE mailbox_digest SET digest = xor62(digest, key_hash(old.mailbox, 'm', old.msg_key)),
        messages = messages - 1
    WHERE mailbox = old.mailbox;
END;
CREATE TRIGGER IF NOT EXISTS digest_tombstone_out AFTER DELETE ON tombstones BEGIN
    UPDATE mailbox_digest SET digest = xor62(digest, key_hash(old.mailbox, 't', old.msg_key)),
        tombstones = tombstones - 1
    WHERE mailbox = old.mailbox;
END;
CREATE INDEX IF NOT EXISTS tombstones_by_age ON tombstones (deleted_unix_ms);
CREATE TRIGGER IF NOT EXISTS digest_tombstone_in AFTER INSERT ON tombstones BEGIN
    INSERT INTO mailbox_digest (mailbox, digest, messages, tombstones)
    VALUES (new.mailbox, key_hash(new.mailbox, 't', new.msg_key), 0, 1)
    ON CONFLICT (mailbox) DO UPDATE SET digest = xor62(digest, key_hash(new.mailbox, 't', new.msg_key)),
        tombstones = tombstones + 1;
END;
"""
# Stores created before mailbox_usage existed get it filled once.
_USAGE_BACKFILL = """
INSERT INTO mailbox_usage (mailbox, messages, body_bytes)
SELECT mailbox, count(*), sum(length(CAST(body AS BLOB))) FROM messages GROUP BY mailbox
"""

_COLUMNS = "seq, msg_key, sender, mailbox, body, created_unix_ms, legacy_id, digest"

# How many queued operations the writer takes into one commit, and how many
# may wait: beyond that, callers get RESOURCE_EXHAUSTED instead of memory growth.
COMMIT_OPS_MAX = 4096
QUEUE_OPS_MAX = 65536


@dataclass(slots=True)
class _Op:
    apply: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled; the write still happened
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    # Damaged text must fail its row's checksum, not the whole page: undecodable bytes
    # become lone surrogates, which no valid message contains, so the digest differs.
    conn.text_factory = _decode_text
    # the digest triggers call these; every connection that writes needs them
    conn.create_function("key_hash", 3, key_hash, deterministic=True)
    conn.create_function("xor62", 2, operator.xor, deterministic=True)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: WAL is fsynced at every commit, so an ack survives power loss too.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _row_to_message(row: sqlite3.Row | tuple[Any, ...]) -> tuple[int, Message, str]:
    seq, key, sender, mailbox, body, created, legacy_id, digest = row
    message = Message(
        key=key, sender=sender, recipient=mailbox, body=body, created_unix_ms=created, legacy_id=legacy_id
    )
    return seq, message, digest


class SqliteStore:
    """Durable mailboxes in one SQLite file (see module docstring)."""

    def __init__(self, path: Path | str, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.path = Path(path)
        self._clock_ms = clock_ms or _wall_clock_ms
        try:
            self._writer_conn = _connect(self.path)
            self._check_integrity(self._writer_conn)
            self._writer_conn.executescript(_SCHEMA)
            self._replica_id = self._load_identity(self._writer_conn)
            self._backfill_usage(self._writer_conn)
            self._reader_conn = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=QUEUE_OPS_MAX)
        self._closed = False
        # set by a commit that found no space, cleared by the next one that wrote something
        self.disk_full = False
        # called on the writer thread after each commit with (operations, seconds): metrics
        self.commit_observer: Callable[[int, float], None] | None = None
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")

    @property
    def kind(self) -> str:
        return "sqlite"

    @property
    def replica_id(self) -> str:
        return self._replica_id

    @staticmethod
    def _check_integrity(conn: sqlite3.Connection) -> None:
        # the full check: quick_check misses index/table mismatches (a damaged key or
        # tombstone row) that would otherwise be served, or never repaired
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            raise StoreError(f"integrity check failed: {'; '.join(rows[:5])}")

    @staticmethod
    def _load_identity(conn: sqlite3.Connection) -> str:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('replica_id', ?), ('schema_version', ?)",
                (f"r-{uuid.uuid4().hex[:12]}", SCHEMA_VERSION),
            )
        row = conn.execute("SELECT value FROM meta WHERE name = 'replica_id'").fetchone()
        return str(row[0])

    @staticmethod
    def _backfill_usage(conn: sqlite3.Connection) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            done = conn.execute("SELECT 1 FROM meta WHERE name = 'mailbox_usage'").fetchone()
            if done is None:
                conn.execute("DELETE FROM mailbox_usage")
                conn.execute(_USAGE_BACKFILL)
                conn.execute("INSERT INTO meta (name, value) VALUES ('mailbox_usage', '1')")

    # --- the writer thread -------------------------------------------------

    async def _write(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        try:
            self._queue.put_nowait(_Op(apply, future, loop))
        except queue.Full:
            raise ResourceExhausted("replica write queue is full; retry later") from None
        return await future

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            ops = [first]
            while len(ops) < COMMIT_OPS_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                ops.append(nxt)
            started = time.perf_counter()
            results = self._commit(ops)
            if self.commit_observer is not None:
                self.commit_observer(len(ops), time.perf_counter() - started)
            for op, (ok, value) in zip(ops, results, strict=True):
                op.loop.call_soon_threadsafe(_settle, op.future, ok, value)

    def _commit(self, ops: list[_Op]) -> list[tuple[bool, Any]]:
        conn = self._writer_conn
        results: list[tuple[bool, Any]] = []
        changes_before = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op.apply(conn)))
                except Exception as exc:  # this op alone fails; the batch goes on
                    conn.execute("ROLLBACK TO op")
                    failure = commit_error(exc, path=self.path) if isinstance(exc, sqlite3.Error) else exc
                    results.append((False, failure))
                conn.execute("RELEASE op")
            wrote = conn.total_changes != changes_before
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("event=store.commit_failed error=%r ops=%d", exc, len(ops))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = commit_error(exc, path=self.path)
            self.disk_full = isinstance(error, DiskFull)
            return [(False, error)] * len(ops)
        if wrote:  # only a commit that wrote something proves there is space again
            self.disk_full = False
        return results

    # --- operations --------------------------------------------------------

    async def put_many(self, messages: Sequence[Message]) -> list[PutOutcome]:
        batch = list(messages)
        return await self._write(lambda conn: _put_many(conn, batch))

    async def ack(self, mailbox: str, keys: Sequence[str]) -> int:
        key_list = list(keys)
        now_ms = self._clock_ms()
        return await self._write(lambda conn: _ack(conn, mailbox, key_list, now_ms))

    async def take(self, mailbox: str, *, limit: int, bytes_max: int) -> list[Message]:
        now_ms = self._clock_ms()
        return await self._write(lambda conn: _take(conn, mailbox, limit, bytes_max, now_ms))

    async def fetch(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> FetchPage:
        assert limit > 0
        return await self._read(lambda conn: _fetch(conn, mailbox, after_seq, limit, bytes_max))

    async def counts(self) -> StoreCounts:
        return await self._read(_counts)

    async def usage(self, mailboxes: Sequence[str]) -> dict[str, MailboxUsage]:
        names = list(dict.fromkeys(mailboxes))
        return await self._read(lambda conn: _usage(conn, names))

    async def digests(self, *, after_mailbox: str, limit: int, until_mailbox: str | None = None) -> list[MailboxDigest]:
        return await self._read(lambda conn: _digests(conn, after_mailbox, until_mailbox, limit))

    async def state_digest(self) -> int:
        return await self._read(_state_digest)

    async def key_states(self, mailbox: str, *, after_key: str, limit: int) -> list[KeyState]:
        return await self._read(lambda conn: _key_states(conn, mailbox, after_key, limit))

    async def apply_tombstones(self, mailbox: str, tombstones: Sequence[tuple[str, int]]) -> int:
        items = list(tombstones)
        return await self._write(lambda conn: _tombstone(conn, mailbox, items))

    async def purge_tombstones(self, *, deleted_before_ms: int, limit: int) -> int:
        return await self._write(lambda conn: _purge(conn, deleted_before_ms, limit))

    async def scrub(self, *, after_seq: int, limit: int) -> ScrubPage:
        now_ms = self._clock_ms()
        return await self._write(lambda conn: _scrub(conn, after_seq, limit, now_ms))

    async def tombstone_candidates(
        self, *, deleted_before_ms: int, after: TombstoneRef | None, limit: int
    ) -> list[TombstoneRef]:
        return await self._read(lambda conn: _tombstone_candidates(conn, deleted_before_ms, after, limit))

    async def forget_tombstones(self, tombstones: Sequence[TombstoneRef]) -> int:
        items = [(t.mailbox, t.key) for t in tombstones]
        return await self._write(lambda conn: _forget_tombstones(conn, items))

    async def get_queued(self, mailbox: str, keys: Sequence[str]) -> list[Message]:
        key_list = list(keys)
        return await self._read(lambda conn: _get_queued(conn, mailbox, key_list))

    async def _read(self, apply: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, apply, self._reader_conn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._queue.put, None)
        await asyncio.to_thread(self._writer.join)
        self._reader.shutdown(wait=True)
        self._writer_conn.close()
        self._reader_conn.close()


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


# The common case in one statement: insert unless the key is tombstoned or already
# stored. Only when nothing was inserted do we look at what is there, to tell
# ALREADY_STORED from CONFLICT (a unique index lookup each, O(log n)).
_INSERT_NEW = (
    "INSERT INTO messages (msg_key, sender, mailbox, body, created_unix_ms, legacy_id, digest)"
    " SELECT ?, ?, ?, ?, ?, ?, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE mailbox = ? AND msg_key = ?)"
    " ON CONFLICT DO NOTHING"
)


def _put_many(conn: sqlite3.Connection, messages: list[Message]) -> list[PutOutcome]:
    outcomes = []
    for m in messages:
        digest = m.digest
        inserted = conn.execute(
            _INSERT_NEW,
            (m.key, m.sender, m.recipient, m.body, m.created_unix_ms, m.legacy_id, digest, m.recipient, m.key),
        ).rowcount
        if inserted == 1:
            outcomes.append(PutOutcome.STORED)
            continue
        stored = conn.execute(
            "SELECT digest FROM messages WHERE mailbox = ? AND msg_key = ?", (m.recipient, m.key)
        ).fetchone()
        tomb = None
        if stored is None:
            tomb = conn.execute(
                "SELECT digest FROM tombstones WHERE mailbox = ? AND msg_key = ?", (m.recipient, m.key)
            ).fetchone()
        outcome = decide(
            new_digest=digest,
            stored_digest=stored[0] if stored else None,
            tombstone_digest=tomb[0] if tomb else None,
        )
        # pair assertion: nothing was inserted, so the key must be known here
        assert outcome is not None, "insert skipped a key that is neither stored nor tombstoned"
        outcomes.append(outcome)
    return outcomes


def _ack(conn: sqlite3.Connection, mailbox: str, keys: list[str], now_ms: int) -> int:
    return _tombstone(conn, mailbox, [(key, now_ms) for key in keys])


def _tombstone(conn: sqlite3.Connection, mailbox: str, tombstones: list[tuple[str, int]]) -> int:
    # Two statements for the whole list, looped in C by executemany: first the
    # tombstones (with the digest of the queued copy, if any; an existing
    # tombstone keeps its digest and the earliest deletion time), then the delete.
    conn.executemany(
        "INSERT INTO tombstones (mailbox, msg_key, digest, deleted_unix_ms)"
        " SELECT ?1, ?2, coalesce((SELECT digest FROM messages WHERE mailbox = ?1 AND msg_key = ?2), ?3), ?4"
        " WHERE true"  # an INSERT ... SELECT needs a WHERE before ON CONFLICT (SQLite parsing)
        " ON CONFLICT DO UPDATE SET deleted_unix_ms = min(deleted_unix_ms, excluded.deleted_unix_ms)",
        [(mailbox, key, UNKNOWN_DIGEST, deleted_ms) for key, deleted_ms in tombstones],
    )
    deleted = conn.executemany(
        "DELETE FROM messages WHERE mailbox = ? AND msg_key = ?", [(mailbox, key) for key, _ in tombstones]
    ).rowcount
    assert deleted <= len(tombstones)
    return max(deleted, 0)


def _purge(conn: sqlite3.Connection, deleted_before_ms: int, limit: int) -> int:
    cursor = conn.execute(
        "DELETE FROM tombstones WHERE (mailbox, msg_key) IN"
        " (SELECT mailbox, msg_key FROM tombstones WHERE deleted_unix_ms < ? LIMIT ?)",
        (deleted_before_ms, limit),
    )
    return cursor.rowcount


def _take(conn: sqlite3.Connection, mailbox: str, limit: int, bytes_max: int, now_ms: int) -> list[Message]:
    taken: list[Message] = []
    size = 0
    rows = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE mailbox = ? ORDER BY seq LIMIT ?", (mailbox, limit))
    for row in rows.fetchall():
        _, message, digest = _row_to_message(row)
        size += len(message.body.encode("utf-8", "surrogatepass"))
        if taken and size > bytes_max:
            break
        if digest != message.digest:
            log.error("event=store.damaged_row mailbox_len=%d", len(mailbox))
            continue
        taken.append(message)
    _ack(conn, mailbox, [m.key for m in taken], now_ms)
    return taken


def _fetch(conn: sqlite3.Connection, mailbox: str, after_seq: int, limit: int, bytes_max: int) -> FetchPage:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE mailbox = ? AND seq > ? ORDER BY seq LIMIT ?",
        (mailbox, after_seq, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    page: list[Message] = []
    last = after_seq
    size = 0
    for row in rows[:limit]:
        seq, message, digest = _row_to_message(row)
        size += len(message.body.encode("utf-8", "surrogatepass"))
        if page and size > bytes_max:
            more = True
            break
        last = seq
        # a row whose content no longer matches its digest is damaged: never serve it
        if digest != message.digest:
            log.error("event=store.damaged_row seq=%d", seq)
            continue
        page.append(message)
    return FetchPage(messages=tuple(page), next_after_seq=last, more=more)


def _counts(conn: sqlite3.Connection) -> StoreCounts:
    messages, mailboxes = conn.execute("SELECT count(*), count(DISTINCT mailbox) FROM messages").fetchone()
    (tombstones,) = conn.execute("SELECT count(*) FROM tombstones").fetchone()
    return StoreCounts(messages=messages, mailboxes=mailboxes, tombstones=tombstones)


def _usage(conn: sqlite3.Connection, mailboxes: list[str]) -> dict[str, MailboxUsage]:
    found = {}
    for mailbox in mailboxes:
        row = conn.execute("SELECT messages, body_bytes FROM mailbox_usage WHERE mailbox = ?", (mailbox,)).fetchone()
        found[mailbox] = MailboxUsage(messages=row[0], body_bytes=row[1]) if row else MailboxUsage(0, 0)
    return found


def _digests(conn: sqlite3.Connection, after: str, until: str | None, limit: int) -> list[MailboxDigest]:
    rows = conn.execute(
        "SELECT mailbox, digest, messages, tombstones FROM mailbox_digest"
        " WHERE mailbox > ? AND (? IS NULL OR mailbox <= ?) ORDER BY mailbox LIMIT ?",
        (after, until, until, limit),
    ).fetchall()
    return [MailboxDigest(*row) for row in rows]


def _state_digest(conn: sqlite3.Connection) -> int:
    total = 0
    for (digest,) in conn.execute("SELECT digest FROM mailbox_digest"):
        total ^= digest
    return total


def _key_states(conn: sqlite3.Connection, mailbox: str, after_key: str, limit: int) -> list[KeyState]:
    rows = conn.execute(
        "SELECT msg_key, 0, 0 FROM messages WHERE mailbox = ? AND msg_key > ?"
        " UNION ALL SELECT msg_key, 1, deleted_unix_ms FROM tombstones WHERE mailbox = ? AND msg_key > ?"
        " ORDER BY 1 LIMIT ?",
        (mailbox, after_key, mailbox, after_key, limit),
    ).fetchall()
    return [KeyState(key, bool(tomb), deleted_ms) for key, tomb, deleted_ms in rows]


def _get_queued(conn: sqlite3.Connection, mailbox: str, keys: list[str]) -> list[Message]:
    found: list[Message] = []
    for key in keys:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE mailbox = ? AND msg_key = ?", (mailbox, key)
        ).fetchone()
        if row is None:
            continue
        _, message, digest = _row_to_message(row)
        if digest == message.digest:  # a damaged copy must not spread
            found.append(message)
    return found


def _tombstone_candidates(
    conn: sqlite3.Connection, deleted_before_ms: int, after: TombstoneRef | None, limit: int
) -> list[TombstoneRef]:
    start = (after.deleted_unix_ms, after.mailbox, after.key) if after else (-1, "", "")
    rows = conn.execute(
        "SELECT deleted_unix_ms, mailbox, msg_key FROM tombstones"
        " WHERE deleted_unix_ms < ? AND (deleted_unix_ms, mailbox, msg_key) > (?, ?, ?)"
        " ORDER BY deleted_unix_ms, mailbox, msg_key LIMIT ?",
        (deleted_before_ms, *start, limit),
    ).fetchall()
    return [TombstoneRef(*row) for row in rows]


def _forget_tombstones(conn: sqlite3.Connection, items: list[tuple[str, str]]) -> int:
    return max(conn.executemany("DELETE FROM tombstones WHERE mailbox = ? AND msg_key = ?", items).rowcount, 0)


# Rows that failed their checksum, kept as they were found (raw bytes, no constraints).
_DAMAGED_ROWS = """
CREATE TABLE IF NOT EXISTS damaged_rows (
    seq INTEGER, mailbox BLOB, msg_key BLOB, sender BLOB, body BLOB,
    created_unix_ms INTEGER, legacy_id INTEGER, digest BLOB, found_unix_ms INTEGER NOT NULL
)
"""


def _row_intact(row: tuple[Any, ...]) -> bool:
    try:
        _, message, digest = _row_to_message(row)
    except Exception:  # a damaged field may not even make a valid message
        return False
    return bool(digest == message.digest)


def _scrub(conn: sqlite3.Connection, after_seq: int, limit: int, now_ms: int) -> ScrubPage:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
    ).fetchall()
    if not rows:
        return ScrubPage(next_after_seq=after_seq, checked=0, moved_aside=0, done=True)
    damaged = [(row[0],) for row in rows if not _row_intact(row)]
    if damaged:
        conn.execute(_DAMAGED_ROWS)
        conn.executemany(
            "INSERT INTO damaged_rows SELECT seq, CAST(mailbox AS BLOB), CAST(msg_key AS BLOB),"
            f" CAST(sender AS BLOB), CAST(body AS BLOB), created_unix_ms, legacy_id, CAST(digest AS BLOB), {now_ms:d}"
            " FROM messages WHERE seq = ?",
            damaged,
        )
        conn.executemany("DELETE FROM messages WHERE seq = ?", damaged)
        # the delete triggers subtracted what the damaged row says (maybe a wrong mailbox
        # or key): rebuild the per-mailbox totals and repair digests from what is left
        _rebuild_derived(conn)
        log.error("event=store.damaged_rows_moved_aside n=%d", len(damaged))
    return ScrubPage(next_after_seq=rows[-1][0], checked=len(rows), moved_aside=len(damaged), done=len(rows) < limit)


def _rebuild_derived(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM mailbox_usage")
    conn.execute(_USAGE_BACKFILL)
    digests: dict[str, list[int]] = {}
    for mailbox, key in conn.execute("SELECT mailbox, msg_key FROM messages"):
        entry = digests.setdefault(mailbox, [0, 0, 0])
        entry[0] ^= key_hash(mailbox, "m", key)
        entry[1] += 1
    for mailbox, key in conn.execute("SELECT mailbox, msg_key FROM tombstones"):
        entry = digests.setdefault(mailbox, [0, 0, 0])
        entry[0] ^= key_hash(mailbox, "t", key)
        entry[2] += 1
    conn.execute("DELETE FROM mailbox_digest")
    conn.executemany(
        "INSERT INTO mailbox_digest (mailbox, digest, messages, tombstones) VALUES (?, ?, ?, ?)",
        [(mailbox, *entry) for mailbox, entry in digests.items()],
    )
