"""The client reads one mailbox however its address is capitalised."""

from __future__ import annotations

from pathlib import Path

from grpc_messenger import ClientConfig, Messenger
from tests.conftest import Cluster


def test_receive_fetch_and_ack_ignore_the_capitals_of_the_address(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    config = ClientConfig(servers=shared_cluster.servers, data_dir=client_home, write_quorum=3, timeout_s=10.0)
    shouted = mailbox.upper()
    with Messenger(config) as m:
        sent = [m.send(sender="alice@example.org", recipient=mailbox, body=f"hi {i}").key for i in range(3)]
        assert sorted(msg.key for msg in m.fetch(shouted).messages) == sorted(sent)
        acked = m.ack(shouted, sent[:1])
        assert all(failure is None for failure in acked.values())
        first = m.receive(shouted)
        again = m.receive(mailbox)
        assert sorted(msg.key for msg in first.messages) == sorted(sent[1:])
        assert again.messages == ()
        # one local inbox for every spelling
        assert m.inbox.count(mailbox) == m.inbox.count(shouted) == 2
        assert {msg.recipient for msg in m.inbox.history(shouted)} == {mailbox}


def test_an_inbox_written_with_capitalised_owners_is_folded_once_and_shows_nothing_twice(tmp_path: Path) -> None:
    """Older versions kept the owner as typed: at open, every spelling becomes one inbox."""
    import sqlite3

    from grpc_messenger.client.inbox import LocalInbox

    path = tmp_path / "inbox.sqlite3"
    LocalInbox(path).close()  # today's schema, then rows as an older version wrote them
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 0")
        rows = [
            ("Bob@Example.org", "k-shown-once", 1),  # shown under one spelling ...
            ("bob@example.org", "k-shown-once", 0),  # ... stored again under another: must not show again
            ("Bob@Example.org", "k-new", 0),
            ("BOB@EXAMPLE.ORG", "k-new", 0),
            ("BOB@EXAMPLE.ORG", "k-old", 1),
        ]
        conn.executemany(
            "INSERT INTO inbox (owner, msg_key, sender, body, created_unix_ms, legacy_id, received_unix_ms, shown)"
            " VALUES (?, ?, 'alice@example.org', 'hi', 1, 0, 1, ?)",
            rows,
        )
    inbox = LocalInbox(path)
    try:
        assert inbox.count("bob@example.org") == 3
        assert [m.key for m in inbox.take_unshown("Bob@example.org")] == ["k-new"]
        assert {m.key for m in inbox.history("bob@example.org")} == {"k-shown-once", "k-new", "k-old"}
    finally:
        inbox.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM inbox WHERE owner != lower(owner)").fetchone() == (0,)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
