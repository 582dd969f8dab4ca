"""The reader's durable local inbox: what was delivered, stored before it is acked.

A message is shown to its reader when its key first enters the inbox; a key
already there is never shown again, however many replicas (or later reads)
return it. That is what makes delivery exactly-once on the reader's side.
Owners are normalized addresses: one inbox however the address is capitalised.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from grpc_messenger.errors import InboxError
from grpc_messenger.model import Message, normalize_address

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    owner TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    legacy_id INTEGER NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0,  -- handed to the reader by receive()
    PRIMARY KEY (owner, msg_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_time ON inbox (owner, created_unix_ms, sender, msg_key);
CREATE INDEX IF NOT EXISTS inbox_unshown ON inbox (owner, shown, created_unix_ms, sender, msg_key);
"""
INBOX_FILE = "inbox.sqlite3"
# PRAGMA user_version: 1 = owners are normalized addresses (older files are folded once at open)
_OWNERS_NORMALIZED = 1
# Older inboxes kept each owner as typed. Fold every spelling into the lower-case owner: a
# key held under several spellings stays once, and shown if any copy was shown, so nothing
# is shown twice and nothing shown is shown again.
_FOLD_OWNERS = (
    "UPDATE OR IGNORE inbox SET owner = lower(owner) WHERE owner != lower(owner)",
    "UPDATE inbox SET shown = 1 WHERE owner = lower(owner) AND shown = 0 AND EXISTS"
    " (SELECT 1 FROM inbox AS other WHERE other.owner != lower(other.owner)"
    " AND lower(other.owner) = inbox.owner AND other.msg_key = inbox.msg_key AND other.shown = 1)",
    "DELETE FROM inbox WHERE owner != lower(owner)",
)


def default_data_dir() -> Path:
    """$MESSENGER_HOME, else $XDG_DATA_HOME/grpc-messenger, else ~/.local/share/grpc-messenger."""
    if home := os.environ.get("MESSENGER_HOME"):
        return Path(home)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "grpc-messenger"


# One transaction's work: runs on the connection inside BEGIN IMMEDIATE ... COMMIT.
_Work = Callable[[sqlite3.Connection], Any]
T = TypeVar("T")


class LocalInbox:
    """Delivered messages in one SQLite file, shared safely by threads of one process.

    Writes are group-committed: the calls of concurrent readers (each on its own
    thread) that arrive while a commit is under way go into the next transaction
    together, one fsync for all, and each call returns only after that commit.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the connection: one user at a time
        self._queue_lock = threading.Lock()
        self._queued: list[tuple[_Work, Future[Any]]] = []
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # stored before acked must mean on disk
            self._conn.executescript(_SCHEMA)
            self._fold_owners()
        except sqlite3.Error as exc:  # no file descriptor left, a full disk, a read-only home
            raise InboxError(
                f"cannot open the local inbox {self.path} ({exc}); nothing was read or acknowledged"
            ) from exc

    def _fold_owners(self) -> None:
        """Once per file: owners written as typed by older versions become normalized addresses."""
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version >= _OWNERS_NORMALIZED:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _FOLD_OWNERS:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {_OWNERS_NORMALIZED}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    @classmethod
    def in_dir(cls, data_dir: Path) -> LocalInbox:
        """The inbox file inside a data directory."""
        return cls(data_dir / INBOX_FILE)

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction, with whatever other threads queued meanwhile; return once committed.

        The first caller to get the connection commits everything queued so far; a caller
        whose work a commit already covered returns at once. A SQLite error fails every call
        of that transaction (it was rolled back as a whole); any other error fails only its
        own call (rolled back to its savepoint).
        """
        done: Future[T] = Future()
        with self._queue_lock:
            self._queued.append((work, done))
        with self._lock:
            if not done.done():
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                self._commit(batch)
        return done.result()

    def _commit(self, batch: list[tuple[_Work, Future[Any]]]) -> None:
        conn = self._conn
        results: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work, done in batch:
                conn.execute("SAVEPOINT work")
                try:
                    result = work(conn)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # this call's own failure: undo it alone
                    conn.execute("ROLLBACK TO work")
                    results.append((done, None, exc))
                else:
                    results.append((done, result, None))
                conn.execute("RELEASE work")
            conn.execute("COMMIT")
        except BaseException as exc:
            # SQLite has already rolled back after some errors (a full disk): a second
            # ROLLBACK would raise "no transaction is active" and hide the real cause
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = self._error(exc) if isinstance(exc, sqlite3.Error) else exc
            for _, done in batch:
                done.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for done, result, failure in results:
            if failure is None:
                done.set_result(result)
            else:
                done.set_exception(failure)

    def _error(self, exc: sqlite3.Error) -> InboxError:
        error = InboxError(
            f"the local inbox {self.path} cannot be written ({exc}); nothing was acknowledged that it"
            " does not hold, so nothing is lost: free space and read again"
        )
        error.__cause__ = exc
        return error

    def store_new(self, owner: str, messages: Sequence[Message]) -> list[Message]:
        """Durably store the messages not yet in the inbox (as not shown); return exactly those.

        One lookup of the keys already held and one executemany of the rest, however
        many messages, in a transaction shared with other threads' concurrent calls.
        """
        return self._write(_storing(normalize_address(owner), messages))

    def take_unshown(self, owner: str, *, limit: int | None = None) -> list[Message]:
        """Stored messages of `owner` not yet shown, in display order (the first `limit`); mark them shown.

        Includes messages stored by an earlier read that died before showing them.
        """
        assert limit is None or limit >= 1
        return self._write(_taking(normalize_address(owner), limit))

    def store_and_take(
        self, owner: str, messages: Sequence[Message], *, limit: int | None = None
    ) -> tuple[list[Message], list[Message]]:
        """`store_new` then `take_unshown`, in one transaction (one fsync); return what each returned.

        Either both happen or neither: a crash before the commit leaves nothing stored and
        nothing marked shown, one after it leaves the messages stored and the taken ones shown.
        """
        assert limit is None or limit >= 1
        owner = normalize_address(owner)
        store = _storing(owner, messages)
        take = _taking(owner, limit)

        def work(conn: sqlite3.Connection) -> tuple[list[Message], list[Message]]:
            return store(conn), take(conn)

        return self._write(work)

    def mark_unshown(self, owner: str, keys: Sequence[str]) -> None:
        """Mark `keys` as not shown again: taken by a reader that stopped before handing them out."""

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE inbox SET shown = 0 WHERE owner = ? AND msg_key = ?", [(owner, key) for key in keys]
            )

        self._write(work)

    def history(self, owner: str, *, limit: int = 1000) -> list[Message]:
        """The most recent `limit` delivered messages of `owner`, oldest first."""
        owner = normalize_address(owner)
        with self._lock:
            rows = self._conn.execute(
                "SELECT msg_key, sender, body, created_unix_ms, legacy_id FROM inbox WHERE owner = ?"
                " ORDER BY created_unix_ms DESC, sender DESC, msg_key DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
        return [_message(owner, row) for row in reversed(rows)]

    def count(self, owner: str) -> int:
        """How many messages `owner` has received in all."""
        owner = normalize_address(owner)
        with self._lock:
            (n,) = self._conn.execute("SELECT count(*) FROM inbox WHERE owner = ?", (owner,)).fetchone()
        return int(n)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()


def _message(owner: str, row: tuple[str, str, str, int, int]) -> Message:
    key, sender, body, created_unix_ms, legacy_id = row
    return Message(
        key=key, sender=sender, recipient=owner, body=body, created_unix_ms=created_unix_ms, legacy_id=legacy_id
    )


def _storing(owner: str, messages: Sequence[Message]) -> Callable[[sqlite3.Connection], list[Message]]:
    """The work of storing `messages` not yet held by `owner` (normalized) as not shown; it returns those."""
    now_ms = int(time.time() * 1000)
    keys = json.dumps([m.key for m in messages])

    def work(conn: sqlite3.Connection) -> list[Message]:
        if not messages:
            return []
        held = {
            key
            for (key,) in conn.execute(
                "SELECT msg_key FROM inbox WHERE owner = ? AND msg_key IN (SELECT value FROM json_each(?))",
                (owner, keys),
            )
        }
        fresh: list[Message] = []
        for m in messages:
            if m.key not in held:
                held.add(m.key)  # a key twice in one call is stored once
                fresh.append(m)
        conn.executemany(
            "INSERT INTO inbox (owner, msg_key, sender, body, created_unix_ms, legacy_id, received_unix_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(owner, m.key, m.sender, m.body, m.created_unix_ms, m.legacy_id, now_ms) for m in fresh],
        )
        return fresh

    return work


def _taking(owner: str, limit: int | None) -> Callable[[sqlite3.Connection], list[Message]]:
    """The work of taking the first `limit` unshown messages of `owner` (normalized) and marking them shown."""

    def work(conn: sqlite3.Connection) -> list[Message]:
        rows = conn.execute(
            "SELECT msg_key, sender, body, created_unix_ms, legacy_id FROM inbox"
            " WHERE owner = ? AND shown = 0 ORDER BY created_unix_ms, sender, msg_key LIMIT ?",
            (owner, -1 if limit is None else limit),
        ).fetchall()
        if limit is None:
            conn.execute("UPDATE inbox SET shown = 1 WHERE owner = ? AND shown = 0", (owner,))
        else:
            conn.execute(
                "UPDATE inbox SET shown = 1 WHERE owner = ? AND msg_key IN (SELECT value FROM json_each(?))",
                (owner, json.dumps([r[0] for r in rows])),
            )
        return [_message(owner, row) for row in rows]

    return work
