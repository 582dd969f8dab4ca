"""The SQLite store's schema, and the upgrade of stores written by earlier versions.

Schema 5 keeps, per message, the SendRequest served to readers (as bytes) and a
checksum over the row; per mailbox, the state that quotas, Info and repair need
(written by the store once per commit, no triggers, no SQL functions). Schema 5
is schema 4 without the messages index by mailbox (it lives in memory now):
opening a schema-4 store drops it, and nothing else changes. Mailboxes
are named by their normalized address (see model.normalize_address).

Upgrading a schema-3 store (columns per field, triggers calling Python) happens
once, at open, in one transaction: every row is checked against its old digest
(a damaged row is left out, so repair brings it back from a peer: missing is
never taken as deleted), mailboxes are normalized (copies of one key under two
spellings of an address become one; a tombstone still wins), and the per-mailbox
state is computed afresh.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3

from grpc_messenger.model import content_digest, normalize_address
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.store.base import UNKNOWN_DIGEST, key_hash, row_checksum

log = logging.getLogger(__name__)

SCHEMA_VERSION = "5"
_COPY_CHUNK = 10_000

# Rows that failed their checksum, kept as they were found (raw bytes, no constraints).
DAMAGED_ROWS = """CREATE TABLE IF NOT EXISTS damaged_rows (
    seq INTEGER, mailbox BLOB, msg_key BLOB, digest BLOB, body_bytes INTEGER, wire BLOB, checksum BLOB,
    found_unix_ms INTEGER NOT NULL
)"""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID""",
    # seq: arrival order here and Fetch's cursor, assigned by the store and never
    # reused (its high-water mark is meta.seq_high). mailbox: normalized address.
    # digest: content digest (model.content_digest), the message's identity under its
    # key. wire: the SendRequest readers are served. checksum: base.row_checksum.
    # Key first in the unique index: keys are UUIDv7 (time-ordered), so new entries
    # land on the last page of this index whatever their mailbox.
    """CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    mailbox TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    body_bytes INTEGER NOT NULL,
    wire BLOB NOT NULL,
    checksum BLOB NOT NULL,
    UNIQUE (msg_key, mailbox)
)""",
    # No index by mailbox: its entries would land on one page per mailbox, a commit
    # dirtying a page for nearly every row; store.mailbox_index keeps it in memory.
    "DROP INDEX IF EXISTS messages_by_mailbox",
    """CREATE TABLE IF NOT EXISTS tombstones (
    mailbox TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    deleted_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (mailbox, msg_key)
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS tombstones_by_age ON tombstones (deleted_unix_ms)",
    # Per mailbox: queued messages and their body bytes (quotas), tombstones, and the
    # repair digest (XOR of key_hash over queued keys and tombstones). A mailbox with
    # neither messages nor tombstones has no row.
    """CREATE TABLE IF NOT EXISTS mailboxes (
    mailbox TEXT PRIMARY KEY,
    messages INTEGER NOT NULL,
    body_bytes INTEGER NOT NULL,
    tombstones INTEGER NOT NULL,
    digest INTEGER NOT NULL
) WITHOUT ROWID""",
)


def upgrade(conn: sqlite3.Connection) -> None:
    """Create the schema, upgrading an older store first; one transaction."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        if "body" in columns:
            _from_v3(conn)
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))


def _old_digest(key: str, sender: str, recipient: str, body: str) -> str:
    # schema 3's content digest: the recipient as typed
    data = f"{key}\0{sender}\0{recipient}\0{body}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _from_v3(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')  # they call Python functions this version no longer registers
    conn.execute("DROP INDEX IF EXISTS messages_by_mailbox")
    conn.execute("DROP INDEX IF EXISTS tombstones_by_age")
    conn.execute("ALTER TABLE messages RENAME TO messages_v3")
    conn.execute("ALTER TABLE tombstones RENAME TO tombstones_v3")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'damaged_rows'").fetchone():
        conn.execute("ALTER TABLE damaged_rows RENAME TO damaged_rows_v3")  # kept for inspection, as found
    for statement in _SCHEMA:
        conn.execute(statement)
    damaged, renamed = _copy_messages(conn)
    renamed |= _copy_tombstones(conn)
    if renamed:
        # a mailbox spelled two ways may hold a tombstone for a key queued under the other: tombstones win
        conn.execute(
            "DELETE FROM messages WHERE EXISTS"
            " (SELECT 1 FROM tombstones t WHERE t.mailbox = messages.mailbox AND t.msg_key = messages.msg_key)"
        )
    high = conn.execute("SELECT coalesce(max(seq), 0) FROM messages_v3").fetchone()[0]
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages_v3'").fetchone()
        high = max(high, row[0] if row else 0)
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('seq_high', ?)", (str(high),))
    for table in ("messages_v3", "tombstones_v3", "mailbox_usage", "mailbox_digest"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute("DELETE FROM meta WHERE name = 'mailbox_usage'")
    conn.execute("DELETE FROM mailboxes")
    _fill_mailboxes(conn)
    log.info("event=store.upgraded to_schema=%s damaged_rows_left_out=%d", SCHEMA_VERSION, damaged)


def _copy_messages(conn: sqlite3.Connection) -> tuple[int, bool]:
    damaged = 0
    renamed = False
    after = -1
    while True:
        chunk = conn.execute(
            "SELECT seq, mailbox, msg_key, sender, body, created_unix_ms, legacy_id, digest FROM messages_v3"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, _COPY_CHUNK),
        ).fetchall()
        if not chunk:
            return damaged, renamed
        rows = []
        for seq, recipient, key, sender, body, created, legacy_id, digest in chunk:
            if digest != _old_digest(key, sender, recipient, body):
                damaged += 1  # left out: repair restores it from a peer
                continue
            mailbox = normalize_address(recipient)
            renamed |= mailbox != recipient
            new_digest = content_digest(key=key, sender=sender, recipient=mailbox, body=body)
            size = len(body.encode("utf-8", "surrogatepass"))
            data = pb.SendRequest(
                id=legacy_id, msg=body, self_email=sender, dest_email=recipient, key=key, created_unix_ms=created
            ).SerializeToString()
            rows.append((seq, mailbox, key, new_digest, size, data, row_checksum(mailbox, key, new_digest, size, data)))
        conn.executemany(
            "INSERT INTO messages (seq, mailbox, msg_key, digest, body_bytes, wire, checksum)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",  # one key under two spellings: the first stays
            rows,
        )
        after = chunk[-1][0]


def _copy_tombstones(conn: sqlite3.Connection) -> bool:
    renamed = False
    rows = []
    for mailbox, key, digest, deleted_ms in conn.execute(
        "SELECT mailbox, msg_key, digest, deleted_unix_ms FROM tombstones_v3"
    ):
        normalized = normalize_address(mailbox)
        if normalized != mailbox:
            # its digest was taken over the recipient as typed; unknown matches any retry
            renamed = True
            digest = UNKNOWN_DIGEST
        rows.append((normalized, key, digest, deleted_ms))
    conn.executemany(
        "INSERT INTO tombstones (mailbox, msg_key, digest, deleted_unix_ms) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET deleted_unix_ms = min(deleted_unix_ms, excluded.deleted_unix_ms),"
        " digest = CASE WHEN digest = excluded.digest THEN digest ELSE '' END",
        rows,
    )
    return renamed


def _fill_mailboxes(conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT INTO mailboxes (mailbox, messages, body_bytes, tombstones, digest) VALUES (?, ?, ?, ?, ?)",
        [(mailbox, *box) for mailbox, box in mailbox_state(conn).items()],
    )


def mailbox_state(conn: sqlite3.Connection) -> dict[str, list[int]]:
    """Per-mailbox [messages, body_bytes, tombstones, digest] computed from the rows (a full scan)."""
    boxes: dict[str, list[int]] = {}
    for mailbox, key, size in conn.execute("SELECT mailbox, msg_key, body_bytes FROM messages"):
        box = boxes.setdefault(mailbox, [0, 0, 0, 0])
        box[0] += 1
        box[1] += size
        box[3] ^= key_hash(mailbox, "m", key)
    for mailbox, key in conn.execute("SELECT mailbox, msg_key FROM tombstones"):
        box = boxes.setdefault(mailbox, [0, 0, 0, 0])
        box[2] += 1
        box[3] ^= key_hash(mailbox, "t", key)
    return boxes
