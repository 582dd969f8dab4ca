"""The sender's durable outbox: (message, replica) deliveries still owed (hinted hand-off).

When a replica fails to store a message that the send reported anyway (W was
reached elsewhere), the library records the delivery here and keeps retrying
it with capped exponential backoff and jitter, in the background while the
process lives and again on the next start, until that replica has the message
or the expiry passes. An expired delivery stays listed as under-replicated: it
is reported, never silently dropped.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from grpc_messenger.errors import Failure
from grpc_messenger.model import Message

OUTBOX_FILE = "outbox.sqlite3"
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0
# The wall clock may be stepped. A delivery due further ahead than any backoff can
# only come from a clock that went back: it is due now, not hours later. And a
# delivery expires only after this many failed attempts as well as after the
# expiry, so a clock that jumps ahead cannot expire deliveries nobody tried.
DUE_AHEAD_MAX_MS = int(2 * BACKOFF_CAP_S * 1000)
EXPIRE_ATTEMPTS_MIN = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    msg_key TEXT NOT NULL,
    recipient TEXT NOT NULL,
    replica TEXT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    legacy_id INTEGER NOT NULL,
    first_owed_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_due_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    expired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (msg_key, recipient, replica)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (expired, next_due_ms);
"""
_COLUMNS = (
    "msg_key, recipient, replica, sender, body, created_unix_ms, legacy_id,"
    " first_owed_ms, attempts, next_due_ms, last_error, expired"
)


@dataclass(frozen=True, slots=True)
class OwedDelivery:
    """One message one replica does not have yet (as far as this sender knows)."""

    message: Message
    replica: str
    attempts: int
    first_owed_ms: int
    next_due_ms: int
    last_error: str
    expired: bool


def backoff_ms(attempts: int, *, rng: random.Random) -> int:
    """Capped exponential backoff with jitter (half to full of the step)."""
    step_s = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempts, 20))
    return int(step_s * rng.uniform(0.5, 1.0) * 1000)


class Outbox:
    """Owed deliveries in one SQLite file; safe for threads of one process and for several processes."""

    def __init__(self, path: Path | str, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, data_dir: Path) -> Outbox:
        """The outbox file inside a data directory."""
        return cls(data_dir / OUTBOX_FILE)

    def _transaction(self, statements: Callable[[sqlite3.Connection], object]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                statements(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def owe(self, deliveries: Sequence[tuple[Message, str, Failure]], *, due_in_ms: int = 0) -> None:
        """Record (message, replica, why) deliveries as owed, first due after `due_in_ms`; one transaction."""
        now = self._clock_ms()
        due = now + due_in_ms

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0)"
                " ON CONFLICT DO UPDATE SET last_error = excluded.last_error",
                [
                    (m.key, m.recipient, replica, m.sender, m.body, m.created_unix_ms, m.legacy_id, now, due, str(why))
                    for m, replica, why in deliveries
                ],
            )

        self._transaction(write)

    def paid(self, deliveries: Sequence[tuple[str, str, str]]) -> None:
        """Forget (key, recipient, replica) deliveries: that replica has the message."""
        self._transaction(
            lambda conn: conn.executemany(
                "DELETE FROM outbox WHERE msg_key = ? AND recipient = ? AND replica = ?", deliveries
            )
        )

    def retry_later(self, deliveries: Sequence[OwedDelivery], *, failure: Failure) -> None:
        """Count a failed attempt and schedule the next one with backoff (`failure` kept for display)."""
        now = self._clock_ms()
        rows = [
            (str(failure), now + backoff_ms(d.attempts, rng=self._rng), d.message.key, d.message.recipient, d.replica)
            for d in deliveries
        ]
        self._transaction(
            lambda conn: conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_due_ms = ?"
                " WHERE msg_key = ? AND recipient = ? AND replica = ?",
                rows,
            )
        )

    def due(self, *, limit: int, all_pending: bool = False) -> list[OwedDelivery]:
        """Unexpired deliveries whose next attempt is due (or all of them), oldest first."""
        now = self._clock_ms() if not all_pending else 1 << 62
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE expired = 0 AND (next_due_ms <= ? OR next_due_ms > ?)"
                " ORDER BY next_due_ms LIMIT ?",
                (now, now + DUE_AHEAD_MAX_MS, limit),
            ).fetchall()
        return [_owed(row) for row in rows]

    def expire(self, *, expiry_s: float) -> int:
        """Mark deliveries owed for longer than `expiry_s` (and tried often enough) as expired; return how many."""
        cutoff = self._clock_ms() - int(expiry_s * 1000)
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE outbox SET expired = 1 WHERE expired = 0 AND first_owed_ms < ? AND attempts >= ?",
                (cutoff, EXPIRE_ATTEMPTS_MIN),
            )
        return cursor.rowcount

    def listing(self, *, limit: int) -> list[OwedDelivery]:
        """Every delivery still owed or expired, oldest first (for `messenger outbox`)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM outbox ORDER BY first_owed_ms, msg_key, replica LIMIT ?", (limit,)
            ).fetchall()
        return [_owed(row) for row in rows]

    def counts(self) -> tuple[int, int]:
        """(owed, expired)."""
        with self._lock:
            owed, expired = self._conn.execute(
                "SELECT count(*) - coalesce(sum(expired), 0), coalesce(sum(expired), 0) FROM outbox"
            ).fetchone()
        return int(owed), int(expired)

    def drop(self, *, key: str | None = None, replica: str | None = None) -> int:
        """Forget owed deliveries on purpose (of message `key`, or to `replica`, or both); return how many.

        For deliveries that can never succeed, e.g. to a replica taken out of service.
        """
        assert key is not None or replica is not None, "drop needs a key or a replica"
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM outbox WHERE (? IS NULL OR msg_key = ?) AND (? IS NULL OR replica = ?)",
                (key, key, replica, replica),
            )
        return cursor.rowcount

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()


def _owed(row: tuple[str, str, str, str, str, int, int, int, int, int, str, int]) -> OwedDelivery:
    key, recipient, replica, sender, body, created, legacy_id, first, attempts, due, error, expired = row
    message = Message(
        key=key, sender=sender, recipient=recipient, body=body, created_unix_ms=created, legacy_id=legacy_id
    )
    return OwedDelivery(message, replica, attempts, first, due, error, bool(expired))
