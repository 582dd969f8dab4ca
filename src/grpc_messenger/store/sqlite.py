"""SQLite store: WAL, synchronous=FULL, group commit on one writer thread.

Every write is an operation queued for the writer thread. The writer takes
everything that queued up while the previous commit ran, applies it in one
transaction, commits with an fsync, and only then resolves each caller's
future. Many messages, one fsync: that is group commit, and no message is
acknowledged before the commit that makes it durable.

What a commit costs per message is kept to the minimum: rows arrive validated
and serialized (wire.row_from_pb); consecutive puts are inserted with one
`executemany`; the per-mailbox state that quotas, Info and repair need (queued
messages, body bytes, tombstones, repair digest) lives in memory, loaded at
open, and is written once per mailbox per commit inside the same transaction.
No Python function runs inside SQLite. An operation either applies whole or the
commit fails whole (every caller gets the error; nothing is acknowledged).

Each row stores the SendRequest readers are served, as bytes, with a checksum
over every column a reader or repair relies on; a row that fails it is never
served nor handed to a peer.

Reads use a second connection on a reader thread; WAL lets them run while the
writer commits.

An Ack writes its tombstones and leaves the acked rows in place: the tombstone is
what deletes (the row leaves the mailbox index and the per-mailbox state in that
commit, and a row with a tombstone is never served, counted or handed to a peer).
The rows themselves are swept later, many acks' at once, in a commit of their own:
the rows of one mailbox lie scattered over the table (rows are appended in arrival
order), so deleting them ack by ack rewrote nearly one page per acked message;
a sweep rewrites each page once for all its acked rows. Opening the store sweeps
what a crash left, and anything that reads every row or removes tombstones
(scrub, purge) sweeps first.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

from grpc_messenger import wire
from grpc_messenger.errors import ResourceExhausted, StoreError
from grpc_messenger.model import Message, PutOutcome
from grpc_messenger.store import migrate
from grpc_messenger.store.base import (
    CODE_OF_OUTCOME,
    OUTCOME_OF_CODE,
    QUOTA_EXCEEDED,
    STORED,
    UNKNOWN_DIGEST,
    FetchPage,
    KeyState,
    MailboxDigest,
    MailboxUsage,
    PutResult,
    Quota,
    Row,
    ScrubPage,
    StoreCounts,
    TombstoneRef,
    WirePage,
    decide,
    key_hash,
    row_checksum,
)
from grpc_messenger.store.diskspace import DiskFull, commit_error
from grpc_messenger.store.mailbox_index import MailboxIndex

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = migrate.SCHEMA_VERSION

# How many queued operations the writer takes into one commit, and how many
# may wait: beyond that, callers get RESOURCE_EXHAUSTED instead of memory growth.
COMMIT_OPS_MAX = 4096
QUEUE_OPS_MAX = 65536
# A put of at most this many rows, arriving while the writer is idle, is committed
# on the caller's thread (no hop to the writer and back).
INLINE_ROWS_MAX = 1
# Acked rows are swept once this many wait, or once the writer has been idle this long
# (under load it never is that long: batches stay large; when load stops, the rows go soon).
SWEEP_ROWS = 4096
SWEEP_IDLE_S = 0.1
# After a sweep failed (a full disk), the next is tried no sooner than this.
SWEEP_RETRY_S = 5.0

# Per-mailbox state, index into a box list: [messages, body_bytes, tombstones, digest]
_MESSAGES, _BYTES, _TOMBS, _DIGEST = 0, 1, 2, 3
_EMPTY = (0, 0, 0, 0)

_ROW_COLUMNS = "seq, msg_key, digest, body_bytes, wire, checksum"


@dataclass(slots=True)
class _Op:
    # a put (rows, quota) or any other operation (apply(conn, txn))
    rows: list[Row] | None
    quota: Quota | None
    apply: Callable[[sqlite3.Connection, _Txn], Any] | None
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class _Txn:
    """What one commit changes in the per-mailbox state and the mailbox index; memory sees it only after COMMIT."""

    __slots__ = ("_committed", "added", "deferred", "next_seq", "reindex", "removed", "swept", "touched", "unswept")

    def __init__(self, committed: dict[str, list[int]], next_seq: int, unswept: list[int]) -> None:
        self._committed = committed
        self.touched: dict[str, list[int]] = {}
        self.next_seq = next_seq
        # rows this commit inserts (mailbox, seq), in seq order, and removes, per mailbox
        self.added: list[tuple[str, int]] = []
        self.removed: dict[str, set[int]] = {}
        self.reindex = False
        # acked rows left in the table for a later sweep: committed before (read only), and this commit's
        self.unswept = unswept
        self.deferred: list[int] = []
        self.swept = False  # this commit deleted every row in `unswept`

    def replace_all(self, fresh: dict[str, list[int]]) -> None:
        """Make `fresh` the whole per-mailbox state (after rows were removed whose fields are not trusted)."""
        for mailbox in {*self._committed, *self.touched, *fresh}:
            self.touched[mailbox] = list(fresh.get(mailbox, _EMPTY))
        self.reindex = True

    def box(self, mailbox: str) -> list[int]:
        """This commit's copy of a mailbox's state (copied on first touch)."""
        box = self.touched.get(mailbox)
        if box is None:
            box = list(self._committed.get(mailbox, _EMPTY))
            self.touched[mailbox] = box
        return box


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled; the write still happened
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    # Damaged text must fail its row's checksum, not the whole page: undecodable bytes
    # become lone surrogates, which no valid message contains, so the checksum differs.
    conn.text_factory = _decode_text
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: WAL is fsynced at every commit, so an ack survives power loss too.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class SqliteStore:
    """Durable mailboxes in one SQLite file (see module docstring)."""

    def __init__(
        self, path: Path | str, *, clock_ms: Callable[[], int] | None = None, quota: Quota | None = None
    ) -> None:
        self.path = Path(path)
        self._clock_ms = clock_ms or _wall_clock_ms
        self._quota = quota if quota is not None and quota.enabled else None
        try:
            self._writer_conn = _connect(self.path)
            self._check_integrity(self._writer_conn)
            migrate.upgrade(self._writer_conn)
            self._replica_id, self._rebuilding = self._load_identity(self._writer_conn)
            self._boxes, next_seq = self._load_state(self._writer_conn)
            _sweep_at_open(self._writer_conn)
            self._index = MailboxIndex.load(self._writer_conn)
            self._reader_conn = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._next_seq = next_seq
        self._unswept: list[int] = []  # seqs of committed acked rows still in the table (writer thread only)
        self._sweep_after = 0.0  # time.monotonic() before which no sweep is tried (after a failure)
        self._messages = sum(b[_MESSAGES] for b in self._boxes.values())
        self._mailboxes = sum(1 for b in self._boxes.values() if b[_MESSAGES])
        self._tombstones = sum(b[_TOMBS] for b in self._boxes.values())
        self._state_digest = 0
        for box in self._boxes.values():
            self._state_digest ^= box[_DIGEST]
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=QUEUE_OPS_MAX)
        # held by whoever commits on the writer connection: the writer thread, or a caller inline
        self._commit_lock = threading.Lock()
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

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding

    async def mark_rebuilt(self) -> None:
        await self._write(_forget_rebuilding)
        self._rebuilding = False

    @staticmethod
    def _check_integrity(conn: sqlite3.Connection) -> None:
        # the full check: quick_check misses index/table mismatches (a damaged key or
        # tombstone row) that would otherwise be served, or never repaired
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        if rows != ["ok"]:
            raise StoreError(f"integrity check failed: {'; '.join(rows[:5])}")

    @staticmethod
    def _load_identity(conn: sqlite3.Connection) -> tuple[str, bool]:
        """(replica id, rebuilding): a store that gets its id now was created empty and must be rebuilt."""
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            created = conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('replica_id', ?)", (f"r-{uuid.uuid4().hex[:12]}",)
            ).rowcount
            if created:
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('rebuilding', '1')")
        row = conn.execute("SELECT value FROM meta WHERE name = 'replica_id'").fetchone()
        rebuilding = conn.execute("SELECT 1 FROM meta WHERE name = 'rebuilding'").fetchone() is not None
        return str(row[0]), rebuilding

    @staticmethod
    def _load_state(conn: sqlite3.Connection) -> tuple[dict[str, list[int]], int]:
        boxes = {
            mailbox: [messages, body_bytes, tombstones, digest]
            for mailbox, messages, body_bytes, tombstones, digest in conn.execute(
                "SELECT mailbox, messages, body_bytes, tombstones, digest FROM mailboxes"
            )
        }
        (max_seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()
        row = conn.execute("SELECT value FROM meta WHERE name = 'seq_high'").fetchone()
        high = int(row[0]) if row else 0
        return boxes, max(max_seq, high) + 1

    # --- the writer thread -------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            raise ResourceExhausted("replica write queue is full; retry later") from None

    async def _write(self, apply: Callable[[sqlite3.Connection, _Txn], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Op(None, None, apply, future, loop))
        return await future

    async def _put(self, rows: list[Row], quota: Quota | None) -> PutResult:
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PutResult] = loop.create_future()
        op = _Op(rows, quota, None, future, loop)
        if len(rows) <= INLINE_ROWS_MAX and self._commit_inline(op):
            return future.result()
        self._enqueue(op)
        return await future

    def _commit_inline(self, op: _Op) -> bool:
        """Commit `op` on this thread if the writer has nothing queued or running; False if it has.

        A lone small put (a unary Send) then pays no hop to the writer thread and
        none back: two context switches, most of its latency past the fsync.
        The caller's thread waits for that one fsync, as the writer would have.
        """
        if not self._commit_lock.acquire(blocking=False):
            return False
        try:
            if self._queue.unfinished_tasks:  # queued or being committed: keep their order
                return False
            ((ok, value),) = self._commit_observed([op])
        finally:
            self._commit_lock.release()
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)
        return True

    def _commit_observed(self, ops: list[_Op]) -> list[tuple[bool, Any]]:
        started = time.perf_counter()
        results = self._commit(ops)
        if self.commit_observer is not None:
            self.commit_observer(len(ops), time.perf_counter() - started)
        return results

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=SWEEP_IDLE_S if self._unswept else None)
            except queue.Empty:
                self._sweep()
                continue
            if first is None:
                break
            ops = [first]
            with self._commit_lock:  # an inline commit (see _commit_inline) may be running
                while len(ops) < COMMIT_OPS_MAX:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    ops.append(nxt)
                results = self._commit_observed(ops)
            # one wake-up per event loop per commit, not one per operation
            settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for op, (ok, value) in zip(ops, results, strict=True):
                settled.setdefault(op.loop, []).append((op.future, ok, value))
            for loop, outcomes in settled.items():
                try:
                    loop.call_soon_threadsafe(_settle_all, outcomes)
                except RuntimeError:  # that loop is closed: nobody waits for these any more
                    log.warning("event=store.settle_skipped reason=loop_closed ops=%d", len(outcomes))
            for _ in ops:
                self._queue.task_done()
            if len(self._unswept) >= SWEEP_ROWS:
                self._sweep()
        self._sweep()

    def _sweep(self) -> None:
        """Delete the acked rows still in the table, in a commit of their own; on failure they wait for the next."""
        if not self._unswept or time.monotonic() < self._sweep_after:
            return
        with self._commit_lock:
            conn = self._writer_conn
            txn = _Txn(self._boxes, self._next_seq, self._unswept)
            try:
                conn.execute("BEGIN IMMEDIATE")
                _sweep_now(conn, txn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                log.warning("event=store.sweep_failed error=%r rows=%d", exc, len(self._unswept))
                self._sweep_after = time.monotonic() + SWEEP_RETRY_S
                return
            self._merge(txn)

    def _commit(self, ops: list[_Op]) -> list[tuple[bool, Any]]:
        conn = self._writer_conn
        txn = _Txn(self._boxes, self._next_seq, self._unswept)
        results: list[Any] = []
        changes_before = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            i = 0
            while i < len(ops):
                if ops[i].rows is None:
                    apply = ops[i].apply
                    assert apply is not None
                    results.append(apply(conn, txn))
                    i += 1
                    continue
                j = i
                while j < len(ops) and ops[j].rows is not None:
                    j += 1
                results.extend(_put_group(conn, txn, ops[i:j]))  # consecutive puts: one executemany
                i = j
            _save_state(conn, txn, self._next_seq)
            wrote = conn.total_changes != changes_before
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                log.error("event=store.commit_failed error=%r ops=%d", exc, len(ops))
                error: Exception = commit_error(exc, path=self.path)
                self.disk_full = isinstance(error, DiskFull)
            else:
                log.exception("event=store.commit_failed ops=%d", len(ops))
                error = StoreError(f"commit failed: {exc}")
            return [(False, error)] * len(ops)
        self._merge(txn)
        if wrote:  # only a commit that wrote something proves there is space again
            self.disk_full = False
        return [(True, r) for r in results]

    def _merge(self, txn: _Txn) -> None:
        """Make a committed transaction's mailbox state and index changes the current ones."""
        if txn.reindex:
            self._index.reload(self._writer_conn)
            # rows acked in this commit after its scrub are still in the table: not in the index
            self._index.apply((), txn.removed)
        elif txn.added or txn.removed:
            self._index.apply(txn.added, txn.removed)
        boxes = self._boxes
        for mailbox, box in txn.touched.items():
            old = boxes.get(mailbox, _EMPTY)
            self._messages += box[_MESSAGES] - old[_MESSAGES]
            self._tombstones += box[_TOMBS] - old[_TOMBS]
            self._mailboxes += (box[_MESSAGES] > 0) - (old[_MESSAGES] > 0)
            self._state_digest ^= old[_DIGEST] ^ box[_DIGEST]
            if box[_MESSAGES] or box[_TOMBS]:
                boxes[mailbox] = box
            else:
                boxes.pop(mailbox, None)
        self._next_seq = txn.next_seq
        if txn.swept:
            self._unswept = txn.deferred
        else:
            self._unswept.extend(txn.deferred)

    # --- operations --------------------------------------------------------

    async def put_rows(self, rows: Sequence[Row]) -> PutResult:
        return await self._put(list(rows), self._quota)

    async def put_many(self, messages: Sequence[Message]) -> list[PutOutcome]:
        result = await self._put([wire.row_of(m) for m in messages], None)
        return [OUTCOME_OF_CODE[code] for code in result.codes]

    async def ack(self, mailbox: str, keys: Sequence[str]) -> int:
        key_list = list(keys)
        now_ms = self._clock_ms()
        return await self._write(lambda conn, txn: _tombstone(conn, txn, mailbox, [(k, now_ms) for k in key_list]))

    async def take_wire(self, mailbox: str, *, limit: int, bytes_max: int) -> list[bytes]:
        now_ms = self._clock_ms()
        index = self._index
        return await self._write(lambda conn, txn: _take(conn, txn, index, mailbox, limit, bytes_max, now_ms))

    async def take(self, mailbox: str, *, limit: int, bytes_max: int) -> list[Message]:
        return [wire.message_of_wire(w) for w in await self.take_wire(mailbox, limit=limit, bytes_max=bytes_max)]

    async def fetch_wire(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> WirePage:
        assert limit > 0
        index = self._index
        return await self._read(lambda conn: _fetch(conn, index, mailbox, after_seq, limit, bytes_max))

    async def fetch(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> FetchPage:
        page = await self.fetch_wire(mailbox, after_seq=after_seq, limit=limit, bytes_max=bytes_max)
        return FetchPage(
            messages=tuple(wire.message_of_wire(w) for w in page.wires),
            next_after_seq=page.next_after_seq,
            more=page.more,
        )

    async def counts(self) -> StoreCounts:
        if self._closed:
            raise StoreError("store is closed")
        return StoreCounts(messages=self._messages, mailboxes=self._mailboxes, tombstones=self._tombstones)

    async def usage(self, mailboxes: Sequence[str]) -> dict[str, MailboxUsage]:
        found = {}
        for mailbox in mailboxes:
            box = self._boxes.get(mailbox, _EMPTY)
            found[mailbox] = MailboxUsage(messages=box[_MESSAGES], body_bytes=box[_BYTES])
        return found

    async def digests(self, *, after_mailbox: str, limit: int, until_mailbox: str | None = None) -> list[MailboxDigest]:
        return await self._read(lambda conn: _digests(conn, after_mailbox, until_mailbox, limit))

    async def state_digest(self) -> int:
        return self._state_digest

    async def key_states(self, mailbox: str, *, after_key: str, limit: int) -> list[KeyState]:
        index = self._index
        return await self._read(lambda conn: _key_states(conn, index, mailbox, after_key, limit))

    async def apply_tombstones(self, mailbox: str, tombstones: Sequence[tuple[str, int]]) -> int:
        items = list(tombstones)
        return await self._write(lambda conn, txn: _tombstone(conn, txn, mailbox, items))

    async def purge_tombstones(self, *, deleted_before_ms: int, limit: int) -> int:
        return await self._write(lambda conn, txn: _purge(conn, txn, deleted_before_ms, limit))

    async def scrub(self, *, after_seq: int, limit: int) -> ScrubPage:
        now_ms = self._clock_ms()
        return await self._write(lambda conn, txn: _scrub(conn, txn, after_seq, limit, now_ms))

    async def tombstone_candidates(
        self, *, deleted_before_ms: int, after: TombstoneRef | None, limit: int
    ) -> list[TombstoneRef]:
        return await self._read(lambda conn: _tombstone_candidates(conn, deleted_before_ms, after, limit))

    async def forget_tombstones(self, tombstones: Sequence[TombstoneRef]) -> int:
        items = [(t.mailbox, t.key) for t in tombstones]
        return await self._write(lambda conn, txn: _forget_tombstones(conn, txn, items))

    async def get_queued_wire(self, mailbox: str, keys: Sequence[str]) -> list[bytes]:
        key_list = list(keys)
        return await self._read(lambda conn: _get_queued(conn, mailbox, key_list))

    async def get_queued(self, mailbox: str, keys: Sequence[str]) -> list[Message]:
        return [wire.message_of_wire(w) for w in await self.get_queued_wire(mailbox, keys)]

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


def _forget_rebuilding(conn: sqlite3.Connection, txn: _Txn) -> None:
    conn.execute("DELETE FROM meta WHERE name = 'rebuilding'")


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


# A mailbox without tombstones cannot hold a tombstoned key: its rows skip that lookup.
_INSERT = (
    "INSERT INTO messages (seq, mailbox, msg_key, digest, body_bytes, wire, checksum)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_UNLESS_TOMBSTONED = (
    "INSERT INTO messages (seq, mailbox, msg_key, digest, body_bytes, wire, checksum)"
    " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7"
    " WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE mailbox = ?2 AND msg_key = ?3)"
    " ON CONFLICT DO NOTHING"
)


def _put_group(conn: sqlite3.Connection, txn: _Txn, ops: list[_Op]) -> list[PutResult]:
    """Insert the rows of consecutive put operations; one PutResult per operation."""
    rows: list[Row] = []
    quotas: list[Quota | None] = []
    for op in ops:
        assert op.rows is not None
        rows += op.rows
        quotas += [op.quota] * len(op.rows)
    codes = [0] * len(rows)
    details: dict[int, str] = {}
    first_seq = txn.next_seq
    txn.next_seq += len(rows)  # row i gets first_seq + i; a row not inserted leaves a gap
    tight = _tight_mailboxes(txn, rows, quotas)
    plain: list[tuple[Any, ...]] = []
    checked: list[tuple[Any, ...]] = []
    fast: list[int] = []
    box_of = txn.box
    seq = first_seq - 1
    for i, (mailbox, key, digest, size, data) in enumerate(rows):
        seq += 1
        if tight and mailbox in tight:
            continue
        fast.append(i)
        params = (seq, mailbox, key, digest, size, data, row_checksum(mailbox, key, digest, size, data))
        (checked if box_of(mailbox)[_TOMBS] else plain).append(params)
    before = conn.total_changes
    if plain:
        conn.executemany(_INSERT, plain)
    if checked:
        conn.executemany(_INSERT_UNLESS_TOMBSTONED, checked)
    added = txn.added
    if conn.total_changes - before == len(fast):  # the common case: every row went in
        for i in fast:
            mailbox, key, _, size, _ = rows[i]
            box = box_of(mailbox)
            box[_MESSAGES] += 1
            box[_BYTES] += size
            box[_DIGEST] ^= key_hash(mailbox, "m", key)
            codes[i] = STORED
            added.append((mailbox, first_seq + i))
    else:
        present = {
            seq
            for (seq,) in conn.execute(
                "SELECT seq FROM messages WHERE seq >= ? AND seq < ?", (first_seq, first_seq + len(rows))
            )
        }
        for i in fast:
            mailbox, key, digest, size, _ = rows[i]
            if first_seq + i in present:
                _count_in(box_of(mailbox), mailbox, key, size)
                codes[i] = STORED
                added.append((mailbox, first_seq + i))
            else:
                outcome = _known_outcome(conn, mailbox, key, digest)
                assert outcome is not None, "insert skipped a key that is neither stored nor tombstoned"
                codes[i] = CODE_OF_OUTCOME[outcome]
    if tight:
        for i, row in enumerate(rows):
            if row[0] in tight:
                codes[i], detail = _put_one(conn, txn, row, first_seq + i, quotas[i])
                if detail:
                    details[i] = detail
    results = []
    start = 0
    for op in ops:
        assert op.rows is not None
        end = start + len(op.rows)
        results.append(
            PutResult(
                codes=tuple(codes[start:end]), details={i - start: d for i, d in details.items() if start <= i < end}
            )
        )
        start = end
    return results


def _tight_mailboxes(txn: _Txn, rows: list[Row], quotas: list[Quota | None]) -> set[str]:
    """Mailboxes whose quota would not hold every row put to them: those go one by one."""
    wanted: dict[str, tuple[Quota, list[int]]] = {}
    for (mailbox, _, _, size, _), quota in zip(rows, quotas, strict=True):
        if quota is None:
            continue
        need = wanted.setdefault(mailbox, (quota, [0, 0]))[1]
        need[0] += 1
        need[1] += size
    tight = set()
    for mailbox, (quota, (count, size)) in wanted.items():
        box = txn.box(mailbox)
        if quota.refusal(mailbox, messages=box[_MESSAGES] + count, body_bytes=box[_BYTES] + size) is not None:
            tight.add(mailbox)
    return tight


def _put_one(conn: sqlite3.Connection, txn: _Txn, row: Row, seq: int, quota: Quota | None) -> tuple[int, str]:
    """One row of a mailbox near its quota: what is already there first, then room, then insert."""
    mailbox, key, digest, size, data = row
    outcome = _known_outcome(conn, mailbox, key, digest)
    if outcome is not None:
        return CODE_OF_OUTCOME[outcome], ""
    box = txn.box(mailbox)
    if quota is not None:
        why = quota.refusal(mailbox, messages=box[_MESSAGES] + 1, body_bytes=box[_BYTES] + size)
        if why is not None:
            return QUOTA_EXCEEDED, why
    inserted = conn.execute(
        _INSERT_UNLESS_TOMBSTONED,
        (seq, mailbox, key, digest, size, data, row_checksum(mailbox, key, digest, size, data)),
    ).rowcount
    assert inserted == 1, "a key known to be absent was not inserted"
    _count_in(box, mailbox, key, size)
    txn.added.append((mailbox, seq))
    return STORED, ""


def _count_in(box: list[int], mailbox: str, key: str, size: int) -> None:
    box[_MESSAGES] += 1
    box[_BYTES] += size
    box[_DIGEST] ^= key_hash(mailbox, "m", key)


def _known_outcome(conn: sqlite3.Connection, mailbox: str, key: str, digest: str) -> PutOutcome | None:
    """ALREADY_STORED or CONFLICT if the mailbox holds the key (queued or tombstoned), else None."""
    stored = conn.execute("SELECT digest FROM messages WHERE mailbox = ? AND msg_key = ?", (mailbox, key)).fetchone()
    tomb = None
    if stored is None:
        tomb = conn.execute(
            "SELECT digest FROM tombstones WHERE mailbox = ? AND msg_key = ?", (mailbox, key)
        ).fetchone()
    return decide(
        new_digest=digest,
        stored_digest=stored[0] if stored else None,
        tombstone_digest=tomb[0] if tomb else None,
    )


def _save_state(conn: sqlite3.Connection, txn: _Txn, seq_before: int) -> None:
    """Write the touched mailboxes' state and the sequence high-water mark, in the commit's transaction."""
    keep = []
    drop = []
    for mailbox, box in txn.touched.items():
        assert min(box[_MESSAGES], box[_BYTES], box[_TOMBS]) >= 0, f"negative mailbox state {box}"
        if box[_MESSAGES] or box[_TOMBS]:
            keep.append((mailbox, *box))
        else:
            assert box[_DIGEST] == 0, "an empty mailbox must have an empty digest"
            assert box[_BYTES] == 0, "an empty mailbox must hold no bytes"
            drop.append((mailbox,))
    if keep:
        conn.executemany(
            "INSERT OR REPLACE INTO mailboxes (mailbox, messages, body_bytes, tombstones, digest)"
            " VALUES (?, ?, ?, ?, ?)",
            keep,
        )
    if drop:
        conn.executemany("DELETE FROM mailboxes WHERE mailbox = ?", drop)
    if txn.next_seq != seq_before:
        # seqs are never reused, not even those of acked rows: a Fetch cursor past them must not miss a message
        conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('seq_high', ?)", (str(txn.next_seq - 1),))


def _tombstone(conn: sqlite3.Connection, txn: _Txn, mailbox: str, tombstones: list[tuple[str, int]]) -> int:
    """Delete these keys from a mailbox, leaving tombstones (the earliest time wins); return how many were queued."""
    earliest: dict[str, int] = {}
    for key, deleted_ms in tombstones:
        earliest[key] = min(deleted_ms, earliest.get(key, deleted_ms))
    if not earliest:
        return 0
    keys_json = json.dumps(list(earliest))
    kept = {
        key
        for (key,) in conn.execute(
            "SELECT msg_key FROM tombstones WHERE mailbox = ? AND msg_key IN (SELECT value FROM json_each(?))",
            (mailbox, keys_json),
        )
    }
    # a row whose key has a tombstone was acked before and only waits for its sweep
    queued = {
        key: (digest, size, seq)
        for key, digest, size, seq in conn.execute(
            "SELECT msg_key, digest, body_bytes, seq FROM messages"
            " WHERE mailbox = ? AND msg_key IN (SELECT value FROM json_each(?))",
            (mailbox, keys_json),
        )
        if key not in kept
    }
    # an existing tombstone keeps its digest and the earliest deletion time
    conn.executemany(
        "INSERT INTO tombstones (mailbox, msg_key, digest, deleted_unix_ms) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET deleted_unix_ms = min(deleted_unix_ms, excluded.deleted_unix_ms)",
        [(mailbox, key, queued[key][0] if key in queued else UNKNOWN_DIGEST, ms) for key, ms in earliest.items()],
    )
    box = txn.box(mailbox)
    if queued:
        # the rows stay until a sweep (module docstring): their tombstones delete them now
        removed = txn.removed.setdefault(mailbox, set())
        for key, (_, size, seq) in queued.items():
            box[_MESSAGES] -= 1
            box[_BYTES] -= size
            box[_DIGEST] ^= key_hash(mailbox, "m", key)
            removed.add(seq)
            txn.deferred.append(seq)
    for key in earliest:
        if key not in kept:
            box[_TOMBS] += 1
            box[_DIGEST] ^= key_hash(mailbox, "t", key)
    return len(queued)


def _sweep_now(conn: sqlite3.Connection, txn: _Txn) -> None:
    """Delete every acked row still in the table, in this transaction."""
    seqs = [*txn.unswept, *txn.deferred]
    if seqs:
        conn.execute("DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),))
    txn.deferred = []
    txn.swept = True


def _sweep_at_open(conn: sqlite3.Connection) -> None:
    """Delete the rows whose key has a tombstone: acked rows a stop or crash left before their sweep."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        # one tombstone lookup per row still queued (a drained store holds far more tombstones than rows)
        conn.execute(
            "DELETE FROM messages WHERE EXISTS (SELECT 1 FROM tombstones"
            " WHERE tombstones.mailbox = messages.mailbox AND tombstones.msg_key = messages.msg_key)"
        )


def _purge(conn: sqlite3.Connection, txn: _Txn, deleted_before_ms: int, limit: int) -> int:
    _sweep_now(conn, txn)  # a tombstone must not go while the row it deletes is still there
    old = conn.execute(
        "SELECT mailbox, msg_key FROM tombstones WHERE deleted_unix_ms < ? LIMIT ?", (deleted_before_ms, limit)
    ).fetchall()
    conn.executemany("DELETE FROM tombstones WHERE mailbox = ? AND msg_key = ?", old)
    for mailbox, key in old:
        box = txn.box(mailbox)
        box[_TOMBS] -= 1
        box[_DIGEST] ^= key_hash(mailbox, "t", key)
    return len(old)


def _intact(mailbox: str, row: tuple[Any, ...]) -> bool:
    _, key, digest, size, data, checksum = row
    try:
        if isinstance(data, bytes) and row_checksum(mailbox, key, digest, size, data) == checksum:
            return True
    except (TypeError, ValueError):  # a damaged column may not even have its type
        pass
    log.error("event=store.damaged_row seq=%d", row[0])
    return False


def _rows_at(conn: sqlite3.Connection, mailbox: str, seqs: list[int]) -> list[tuple[Any, ...]]:
    """The rows of `mailbox` with these seqs, in seq order (a row deleted meanwhile is not there)."""
    if not seqs:
        return []
    return conn.execute(
        f"SELECT {_ROW_COLUMNS} FROM messages WHERE seq IN (SELECT value FROM json_each(?)) AND mailbox = ?"
        " ORDER BY seq",
        (json.dumps(seqs), mailbox),
    ).fetchall()


def _take(
    conn: sqlite3.Connection, txn: _Txn, index: MailboxIndex, mailbox: str, limit: int, bytes_max: int, now_ms: int
) -> list[bytes]:
    taken: list[bytes] = []
    keys: list[str] = []
    size = 0
    rows = _rows_at(conn, mailbox, index.after(mailbox, 0, limit))
    for row in rows:
        size += len(row[4])
        if taken and size > bytes_max:
            break
        if not _intact(mailbox, row):
            continue
        taken.append(row[4])
        keys.append(row[1])
    _tombstone(conn, txn, mailbox, [(key, now_ms) for key in keys])
    return taken


def _fetch(
    conn: sqlite3.Connection, index: MailboxIndex, mailbox: str, after_seq: int, limit: int, bytes_max: int
) -> WirePage:
    seqs = index.after(mailbox, after_seq, limit + 1)
    more = len(seqs) > limit
    rows = _rows_at(conn, mailbox, seqs[:limit])
    page: list[bytes] = []
    last = after_seq
    size = 0
    for row in rows:
        size += len(row[4])
        if page and size > bytes_max:
            more = True
            break
        last = row[0]
        # a row whose content no longer matches its checksum is damaged: never serve it
        if _intact(mailbox, row):
            page.append(row[4])
    return WirePage(wires=tuple(page), next_after_seq=last, more=more)


def _digests(conn: sqlite3.Connection, after: str, until: str | None, limit: int) -> list[MailboxDigest]:
    rows = conn.execute(
        "SELECT mailbox, digest, messages, tombstones FROM mailboxes"
        " WHERE mailbox > ? AND (? IS NULL OR mailbox <= ?) ORDER BY mailbox LIMIT ?",
        (after, until, until, limit),
    ).fetchall()
    return [MailboxDigest(*row) for row in rows]


def _key_states(
    conn: sqlite3.Connection, index: MailboxIndex, mailbox: str, after_key: str, limit: int
) -> list[KeyState]:
    rows = conn.execute(
        "SELECT msg_key, 0, 0 FROM messages"
        " WHERE seq IN (SELECT value FROM json_each(?)) AND mailbox = ? AND msg_key > ?"
        " UNION ALL SELECT msg_key, 1, deleted_unix_ms FROM tombstones WHERE mailbox = ? AND msg_key > ?"
        " ORDER BY 1 LIMIT ?",
        (json.dumps(index.all(mailbox)), mailbox, after_key, mailbox, after_key, limit),
    ).fetchall()
    return [KeyState(key, bool(tomb), deleted_ms) for key, tomb, deleted_ms in rows]


def _get_queued(conn: sqlite3.Connection, mailbox: str, keys: list[str]) -> list[bytes]:
    found = {
        row[1]: row
        for row in conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM messages WHERE mailbox = ? AND msg_key IN (SELECT value FROM json_each(?))"
            " AND NOT EXISTS (SELECT 1 FROM tombstones WHERE tombstones.mailbox = messages.mailbox"
            " AND tombstones.msg_key = messages.msg_key)",
            (mailbox, json.dumps(keys)),
        )
    }
    # a damaged copy must not spread
    return [found[key][4] for key in dict.fromkeys(keys) if key in found and _intact(mailbox, found[key])]


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


def _forget_tombstones(conn: sqlite3.Connection, txn: _Txn, items: list[tuple[str, str]]) -> int:
    _sweep_now(conn, txn)  # a tombstone must not go while the row it deletes is still there
    forgotten = 0
    for mailbox, key in dict.fromkeys(items):
        if conn.execute("DELETE FROM tombstones WHERE mailbox = ? AND msg_key = ?", (mailbox, key)).rowcount:
            box = txn.box(mailbox)
            box[_TOMBS] -= 1
            box[_DIGEST] ^= key_hash(mailbox, "t", key)
            forgotten += 1
    return forgotten


def _scrub(conn: sqlite3.Connection, txn: _Txn, after_seq: int, limit: int, now_ms: int) -> ScrubPage:
    _sweep_now(conn, txn)  # the state recomputed from the rows below must see only queued ones
    rows = conn.execute(
        f"SELECT mailbox, {_ROW_COLUMNS} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
    ).fetchall()
    if not rows:
        return ScrubPage(next_after_seq=after_seq, checked=0, moved_aside=0, done=True)
    damaged = [(row[1],) for row in rows if not _intact(row[0], row[1:])]
    if damaged:
        conn.execute(migrate.DAMAGED_ROWS)
        conn.executemany(
            "INSERT INTO damaged_rows SELECT seq, CAST(mailbox AS BLOB), CAST(msg_key AS BLOB), CAST(digest AS BLOB),"
            f" body_bytes, CAST(wire AS BLOB), CAST(checksum AS BLOB), {now_ms:d} FROM messages WHERE seq = ?",
            damaged,
        )
        conn.executemany("DELETE FROM messages WHERE seq = ?", damaged)
        # what a damaged row says (its mailbox, key, size) is not to be trusted: the
        # per-mailbox state is computed afresh from what is left
        txn.replace_all(migrate.mailbox_state(conn))
        log.error("event=store.damaged_rows_moved_aside n=%d", len(damaged))
    last_seq = rows[-1][1]
    return ScrubPage(next_after_seq=last_seq, checked=len(rows), moved_aside=len(damaged), done=len(rows) < limit)
