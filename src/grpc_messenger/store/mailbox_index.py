"""Which rows each mailbox holds, in arrival order: an index kept in memory.

A SQLite index on (mailbox, seq) puts each new row of a commit on the page of
its own mailbox: a commit of 64 rows to 50 mailboxes dirtied ~50 index pages,
each written to the WAL and fsynced, more than half of a commit's cost. Rows
are appended in seq order instead (their pages are the table's last ones), and
this index answers "the rows of mailbox M after seq S": per mailbox, an array
of seqs, ascending, 8 bytes a row. It is built from the table at open, and a
commit changes it only after COMMIT, so it never names a row that is not
durable. A reader may still find a seq here whose row a later commit deleted:
it selects by seq and the row is simply not there.
"""

from __future__ import annotations

import sqlite3
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable


class MailboxIndex:
    """Per mailbox, the seqs of its queued rows, ascending (see module docstring)."""

    def __init__(self) -> None:
        self._seqs: dict[str, array[int]] = {}
        # the writer changes it, the reader thread reads it
        self._lock = threading.Lock()

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> MailboxIndex:
        index = cls()
        index.reload(conn)
        return index

    def reload(self, conn: sqlite3.Connection) -> None:
        """Rebuild from the table (at open, and after rows were removed whose mailbox is not trusted)."""
        seqs: dict[str, array[int]] = {}
        for mailbox, seq in conn.execute("SELECT mailbox, seq FROM messages ORDER BY seq"):
            column = seqs.get(mailbox)
            if column is None:
                column = seqs[mailbox] = array("q")
            column.append(seq)
        with self._lock:
            self._seqs = seqs

    def after(self, mailbox: str, after_seq: int, count: int) -> list[int]:
        """Up to `count` seqs of `mailbox` greater than `after_seq`, ascending."""
        with self._lock:
            column = self._seqs.get(mailbox)
            if column is None:
                return []
            start = bisect_right(column, after_seq)
            return column[start : start + count].tolist()

    def all(self, mailbox: str) -> list[int]:
        with self._lock:
            column = self._seqs.get(mailbox)
            return column.tolist() if column is not None else []

    def apply(self, added: Iterable[tuple[str, int]], removed: dict[str, set[int]]) -> None:
        """A committed transaction's changes: rows added (in seq order) and rows removed, per mailbox."""
        with self._lock:
            for mailbox, seqs in removed.items():
                column = self._seqs.get(mailbox)
                if column is not None:
                    self._remove(mailbox, column, seqs)
            for mailbox, seq in added:
                column = self._seqs.get(mailbox)
                if column is None:
                    self._seqs[mailbox] = array("q", (seq,))
                elif not column or column[-1] < seq:
                    column.append(seq)
                else:  # never happens for new seqs; kept correct for any order
                    column.insert(bisect_left(column, seq), seq)

    def _remove(self, mailbox: str, column: array[int], seqs: set[int]) -> None:
        at = sorted(i for i in (bisect_left(column, s) for s in seqs) if i < len(column) and column[i] in seqs)
        if not at:
            return
        if at == list(range(len(at))):  # the oldest rows: what a reader acks, the common case
            del column[: len(at)]
        else:
            kept: array[int] = array("q")
            start = 0
            for i in at:
                kept.extend(column[start:i])
                start = i + 1
            kept.extend(column[start:])
            column = self._seqs[mailbox] = kept
        if not column:
            del self._seqs[mailbox]
