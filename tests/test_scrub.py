"""Damaged rows healed, not just skipped: the scrub moves them aside and repair restores the good copy."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from grpc_messenger import ClientConfig, Draft, Messenger
from grpc_messenger.model import Message, new_key
from grpc_messenger.server.scrub import scrub_pass
from grpc_messenger.store import SqliteStore
from tests.conftest import ReplicaFactory, queued_keys, wait_until

BOB = "bob@example.org"


def _message(body: str, recipient: str = BOB) -> Message:
    return Message(key=new_key(), sender="alice@example.org", recipient=recipient, body=body, created_unix_ms=1)


def _tamper(path: Path, key: str, column: str = "wire") -> None:
    """Change a stored row behind the store's back."""
    conn = sqlite3.connect(path)
    value = f"CAST({column} || 'X' AS BLOB)" if column == "wire" else f"{column} || 'X'"
    conn.execute(f"UPDATE messages SET {column} = {value} WHERE msg_key = ?", (key,))
    conn.commit()
    conn.close()


def test_scrub_moves_damaged_rows_aside_and_the_digests_forget_them(tmp_path: Path) -> None:
    damaged_path, clean_path = tmp_path / "damaged.sqlite3", tmp_path / "clean.sqlite3"
    messages = [_message(f"m{i}", recipient=f"r{i % 3}@x.org") for i in range(30)]
    bad = {messages[4].key: "wire", messages[11].key: "mailbox", messages[20].key: "msg_key"}

    async def fill(path: Path, items: list[Message]) -> None:
        store = SqliteStore(path)
        await store.put_many(items)
        await store.close()

    asyncio.run(fill(damaged_path, messages))
    asyncio.run(fill(clean_path, [m for m in messages if m.key not in bad]))
    for key, column in bad.items():
        _tamper(damaged_path, key, column)

    async def scrub_and_compare() -> None:
        damaged, clean = SqliteStore(damaged_path), SqliteStore(clean_path)
        try:
            stats = await scrub_pass(damaged, rows_per_s=1e6, chunk_rows=7)
            assert (stats.checked, stats.moved_aside) == (30, 3)
            assert (await damaged.counts()).messages == 27
            # repair compares digests: the damaged store now differs from a full copy only by what it lacks
            assert await damaged.digests(after_mailbox="", limit=100) == await clean.digests(
                after_mailbox="", limit=100
            )
            again = await scrub_pass(damaged, rows_per_s=1e6)
            assert again.moved_aside == 0
        finally:
            await damaged.close()
            await clean.close()

    asyncio.run(scrub_and_compare())
    conn = sqlite3.connect(damaged_path)
    assert conn.execute("SELECT count(*) FROM damaged_rows").fetchone()[0] == 3
    conn.close()


def test_a_damaged_row_comes_back_from_a_peer(replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=0.3)
    r1 = cluster.replicas[0]
    config = ClientConfig(servers=cluster.servers, data_dir=tmp_path / "sender", write_quorum=3, outbox=False)
    with Messenger(config) as m:
        reports = m.send_many(Draft("alice@x.org", mailbox, f"copy {i}") for i in range(20))
    keys = {r.key for r in reports}
    assert queued_keys(r1.address, mailbox) == keys
    r1.terminate()
    victim = sorted(keys)[7]
    _tamper(r1.data_dir / "replica.sqlite3", victim)
    r1.start()  # the scrub at open moves the row aside; repair pulls the good copy back
    wait_until(lambda: queued_keys(r1.address, mailbox) == keys, timeout_s=30)
