"""receive(limit=...) keeps memory bounded by the limit, not the mailbox, and still delivers exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from grpc_messenger import ClientConfig, Draft, InvalidInput, Messenger, Unavailable
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.model import Message, new_key
from tests.conftest import ReplicaFactory, wait_until


def test_receive_with_limit_delivers_everything_once_in_bounded_slices(
    replica_factory: ReplicaFactory, client_home: Path, mailbox: str
) -> None:
    cluster = replica_factory.cluster(3)
    config = ClientConfig(servers=cluster.servers, data_dir=client_home, write_quorum=3, timeout_s=10.0, page_size=200)
    bodies = [f"message {i:04d}" for i in range(1100)]
    with Messenger(config) as m:
        assert all(r.ok for r in m.send_many(Draft("alice@example.org", mailbox, b) for b in bodies))
        slices = []
        for _ in range(20):  # bounded: 1100 / 300 needs 4 slices
            report = m.receive(mailbox, limit=300)
            assert report.complete
            assert len(report.messages) <= 300
            slices.append([msg.body for msg in report.messages])
            if not report.more:  # the loop a reader writes: no extra, empty read at the end
                break
        last = m.receive(mailbox, limit=300)
        assert (last.messages, last.more) == ((), False)
        with pytest.raises(InvalidInput):
            m.receive(mailbox, limit=0)
        assert m.fetch(mailbox).messages == ()
    shown = [body for part in slices for body in part]
    assert [len(part) for part in slices] == [300, 300, 300, 200]
    assert sorted(shown) == bodies
    assert len(set(shown)) == len(shown)


def test_a_read_no_replica_answers_leaves_what_an_earlier_read_stored_for_the_next(
    replica_factory: ReplicaFactory, client_home: Path, mailbox: str
) -> None:
    cluster = replica_factory.cluster(2)
    # a read that stored this (and acked it) but died before showing it
    kept = Message(new_key(), "alice@example.org", mailbox, "kept", int(time.time() * 1000))
    inbox = LocalInbox.in_dir(client_home)
    inbox.store_new(mailbox, [kept])
    inbox.close()
    for replica in cluster.replicas:
        replica.kill()
    config = ClientConfig(servers=cluster.servers, data_dir=client_home, timeout_s=3.0)
    with Messenger(config) as m:
        with pytest.raises(Unavailable):
            m.receive(mailbox)
        for replica in cluster.replicas:
            replica.start()
        # reconnected first (a channel retries a refused replica after a backoff of up to a second)
        wait_until(lambda: all(s.reachable for s in m.status()), timeout_s=60)
        assert [x.key for x in m.receive(mailbox).messages] == [kept.key]
