"""The client's local files (--home with inbox and outbox): checked before use, named when unusable.

Opening them is left to the library; this only turns "cannot" into one line that
names the file and what to do, instead of an OSError or sqlite3 traceback.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from grpc_messenger.client.inbox import INBOX_FILE
from grpc_messenger.client.outbox import OUTBOX_FILE
from grpc_messenger.errors import MessengerError

_WHAT = {INBOX_FILE: "local inbox", OUTBOX_FILE: "outbox"}
_LOST = {
    INBOX_FILE: "its local history is lost, unread mail is still on the replicas",
    OUTBOX_FILE: "deliveries it still owed are left to replica repair",
}


class LocalDataError(MessengerError):
    """--home or a file in it cannot be used; the message names the path and the fix."""


def check_home(home: Path) -> None:
    """Create `home` if needed and check it and the files in it; raise LocalDataError if unusable."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalDataError(
            f"cannot create the client home {home} ({exc.strerror or exc}); "
            "pass --home (or set MESSENGER_HOME) to a writable directory"
        ) from exc
    if not os.access(home, os.W_OK | os.X_OK):
        raise LocalDataError(
            f"the client home {home} is not writable; pass --home (or set MESSENGER_HOME) to a writable directory"
        )
    for name in (INBOX_FILE, OUTBOX_FILE):
        check_database(home / name)


def check_database(path: Path) -> None:
    """Raise LocalDataError if `path` exists and is not a readable SQLite database."""
    if not path.exists():
        return
    name = _WHAT.get(path.name, "database")
    try:
        # read-only: a check must never create or change what it checks
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        lost = _LOST.get(path.name, "its contents are lost")
        raise LocalDataError(
            f"the {name} file {path} is damaged ({exc}); move it aside (mv {path} {path}.damaged) and run again: {lost}"
        ) from exc


def describe(exc: OSError | sqlite3.Error, home: Path) -> LocalDataError:
    """A LocalDataError for a failure that got past the checks (e.g. a disk that filled meanwhile)."""
    return LocalDataError(f"cannot use the client home {home}: {exc}")
