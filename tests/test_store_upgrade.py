"""Stores written by the previous schema are upgraded at open: rows, tombstones, digests, quotas, cursors."""

from __future__ import annotations

import asyncio
import hashlib
import operator
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from grpc_messenger.model import Message, PutOutcome
from grpc_messenger.store import MemoryStore, SqliteStore
from grpc_messenger.store.base import key_hash

T = TypeVar("T")

# The schema-3 tables and triggers, as that version wrote them.
V3_SCHEMA = """
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


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=30)

    return asyncio.run(bounded())


def _v3_digest(key: str, sender: str, recipient: str, body: str) -> str:
    return hashlib.sha256(f"{key}\0{sender}\0{recipient}\0{body}".encode()).hexdigest()


def _write_v3_store(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.create_function("key_hash", 3, key_hash, deterministic=True)
    conn.create_function("xor62", 2, operator.xor, deterministic=True)
    conn.executescript(V3_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('replica_id', 'r-old'), ('schema_version', '3'), ('mailbox_usage', '1')")
    rows = [
        ("bob@x.org", "k-1", "alice@x.org", "one"),
        ("Bob@X.org", "k-2", "alice@x.org", "two, to a capitalised address"),
        ("BOB@x.org", "k-1", "alice@x.org", "one"),  # the same message under another spelling
        ("Bob@X.org", "k-3", "alice@x.org", "acked under the other spelling"),
        ("carol@x.org", "k-4", "alice@x.org", "will be damaged"),
        ("carol@x.org", "k-5", "alice@x.org", "five"),
        ("carol@x.org", "k-last", "alice@x.org", "the highest seq, acked"),
    ]
    for mailbox, key, sender, body in rows:
        conn.execute(
            "INSERT INTO messages (msg_key, sender, mailbox, body, created_unix_ms, legacy_id, digest)"
            " VALUES (?, ?, ?, ?, 1000, 0, ?)",
            (key, sender, mailbox, body, _v3_digest(key, sender, mailbox, body)),
        )
    conn.execute("UPDATE messages SET body = 'tampered' WHERE msg_key = 'k-4'")
    acked_digest = _v3_digest("k-3", "alice@x.org", "bob@x.org", "acked under the other spelling")
    for mailbox, key, digest in (
        ("bob@x.org", "k-3", acked_digest),
        ("carol@x.org", "k-last", "d"),
        ("Dave@x.org", "k-6", "d"),
    ):
        conn.execute(
            "INSERT INTO tombstones (mailbox, msg_key, digest, deleted_unix_ms) VALUES (?, ?, ?, 5)",
            (mailbox, key, digest),
        )
        conn.execute("DELETE FROM messages WHERE mailbox = ? AND msg_key = ?", (mailbox, key))
    conn.close()


def test_a_schema_3_store_is_upgraded_with_exact_digests_usage_and_cursors(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    _write_v3_store(path)
    store = SqliteStore(path)
    try:
        assert store.replica_id == "r-old"
        bob = run(store.fetch("bob@x.org", after_seq=0, limit=100, bytes_max=10**6))
        # one copy of k-1; k-3 stays deleted (the tombstone under the other spelling wins)
        assert [(m.key, m.body) for m in bob.messages] == [("k-1", "one"), ("k-2", "two, to a capitalised address")]
        assert bob.messages[1].recipient == "Bob@X.org"  # the form the sender typed is kept for display
        carol = run(store.fetch("carol@x.org", after_seq=0, limit=100, bytes_max=10**6))
        assert [m.key for m in carol.messages] == ["k-5"]  # the damaged row is left out, for repair to restore
        usage = run(store.usage(["bob@x.org", "carol@x.org"]))
        assert (usage["bob@x.org"].messages, usage["bob@x.org"].body_bytes) == (2, 3 + 29)
        assert usage["carol@x.org"].messages == 1
        # the same keys in a fresh store give the same repair digests
        fresh = MemoryStore()
        run(fresh.put_many([*bob.messages, *carol.messages]))
        run(fresh.apply_tombstones("bob@x.org", [("k-3", 5)]))
        run(fresh.apply_tombstones("carol@x.org", [("k-last", 5)]))
        run(fresh.apply_tombstones("dave@x.org", [("k-6", 5)]))
        assert run(store.digests(after_mailbox="", limit=100)) == run(fresh.digests(after_mailbox="", limit=100))
        assert run(store.state_digest()) == run(fresh.state_digest())
        counts = run(store.counts())
        assert (counts.messages, counts.mailboxes, counts.tombstones) == (3, 2, 3)
        # retries of old messages are recognised, whatever the spelling; tombstones still hold
        retry = Message("k-2", "alice@x.org", "bob@x.org", "two, to a capitalised address", 1000)
        assert run(store.put_many([retry])) == [PutOutcome.ALREADY_STORED]
        late = Message("k-3", "alice@x.org", "bob@x.org", "acked under the other spelling", 1000)
        assert run(store.put_many([late])) == [PutOutcome.ALREADY_STORED]
        # a new message gets a seq above every seq ever used, even the acked highest one
        new = Message("k-new", "alice@x.org", "carol@x.org", "after the upgrade", 2000)
        assert run(store.put_many([new])) == [PutOutcome.STORED]
        after = run(store.fetch("carol@x.org", after_seq=carol.next_after_seq, limit=10, bytes_max=10**6))
        assert [m.key for m in after.messages] == ["k-new"]
        assert after.next_after_seq > 7
    finally:
        run(store.close())
    conn = sqlite3.connect(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & {"mailbox_usage", "mailbox_digest", "messages_v3", "tombstones_v3"}
        assert not conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == ("5",)
    finally:
        conn.close()
    reopened = SqliteStore(path)  # and it opens again as it is
    try:
        assert run(reopened.counts()).messages == 4
    finally:
        run(reopened.close())
