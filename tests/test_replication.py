"""Client library against a real 3-replica cluster: quorum, merged reads, exactly-once delivery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from grpc_messenger import (
    AsyncMessenger,
    ClientConfig,
    Draft,
    KeyConflict,
    Messenger,
    QuorumNotReached,
    ReplicaState,
    Unavailable,
)
from tests.conftest import Cluster, ReplicaFactory, wait_until


def config(cluster: Cluster, home: Path, *, write_quorum: int = 1, timeout_s: float = 3.0) -> ClientConfig:
    return ClientConfig(servers=cluster.servers, data_dir=home, write_quorum=write_quorum, timeout_s=timeout_s)


def test_send_reaches_every_replica_and_receive_shows_it_once(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    with Messenger(config(shared_cluster, client_home, write_quorum=3)) as m:
        report = m.send(sender="alice@example.org", recipient=mailbox, body="hello", settle=True)
        assert report.ok
        assert [r.state for r in report.replicas] == [ReplicaState.STORED] * 3
        first = m.receive(mailbox)
        second = m.receive(mailbox)
    assert [msg.body for msg in first.messages] == ["hello"]
    assert first.messages[0].key == report.key
    assert first.complete
    assert second.messages == ()


def test_retry_with_same_key_is_already_stored_not_duplicated(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    with Messenger(config(shared_cluster, client_home, write_quorum=3)) as m:
        first = m.send(sender="alice@example.org", recipient=mailbox, body="once", settle=True)
        again = m.send(sender="alice@example.org", recipient=mailbox, body="once", key=first.key, settle=True)
        assert {r.state for r in again.replicas} == {ReplicaState.ALREADY_STORED}
        assert [msg.body for msg in m.receive(mailbox).messages] == ["once"]
        # after the ack, a late retry must not resurrect the message
        late = m.send(sender="alice@example.org", recipient=mailbox, body="once", key=first.key, settle=True)
        assert late.ok
        assert m.receive(mailbox).messages == ()


def test_same_key_with_other_content_is_a_conflict(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    with Messenger(config(shared_cluster, client_home, write_quorum=3)) as m:
        report = m.send(sender="alice@example.org", recipient=mailbox, body="original", settle=True)
        with pytest.raises(KeyConflict):
            m.send(sender="alice@example.org", recipient=mailbox, body="changed", key=report.key, settle=True)
        assert [msg.body for msg in m.fetch(mailbox).messages] == ["original"]


def test_messages_are_shown_in_creation_order(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    bodies = [f"message {i}" for i in range(30)]
    with Messenger(config(shared_cluster, client_home)) as m:
        for body in bodies:
            m.send(sender="alice@example.org", recipient=mailbox, body=body)
        shown = m.receive(mailbox).messages
    assert [msg.body for msg in shown] == bodies


def test_send_many_batches_and_reports_each(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    drafts = [Draft("alice@example.org", mailbox, f"bulk {i}") for i in range(1200)]
    with Messenger(config(shared_cluster, client_home, write_quorum=3)) as m:
        reports = m.send_many(drafts)
        assert all(r.ok for r in reports)
        assert len({r.key for r in reports}) == 1200
        shown = m.receive(mailbox).messages
    assert sorted(msg.body for msg in shown) == sorted(d.body for d in drafts)


def test_quorum_not_reached_reports_each_replica(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(3)
    cluster.replicas[2].kill()
    with Messenger(config(cluster, client_home, write_quorum=3)) as m:
        with pytest.raises(QuorumNotReached) as caught:
            m.send(sender="alice@example.org", recipient="bob@example.org", body="needs three")
        report = caught.value.report
        assert report.acknowledged == 2
        assert report.replicas[2].state is ReplicaState.FAILED
        assert "UNAVAILABLE" in report.replicas[2].error
        # W=2 still succeeds with one replica down
    with Messenger(config(cluster, client_home, write_quorum=2)) as m:
        assert m.send(sender="alice@example.org", recipient="bob@example.org", body="needs two").ok


def test_two_replicas_down_send_and_receive_still_work_exactly_once(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    cluster = replica_factory.cluster(3)
    bob = "bob@example.org"
    with Messenger(config(cluster, client_home)) as m:
        m.send(sender="alice@example.org", recipient=bob, body="before the outage", settle=True)
        cluster.replicas[1].kill()
        cluster.replicas[2].kill()
        report = m.send(sender="alice@example.org", recipient=bob, body="during the outage", settle=True)
        assert report.ok
        assert report.replicas[0].state is ReplicaState.STORED
        during = m.receive(bob)
        assert [msg.body for msg in during.messages] == ["before the outage", "during the outage"]
        assert len(during.replicas_failed) == 2
        # the two replicas come back still holding "before the outage": it is acked there, not shown again
        cluster.replicas[1].start()
        cluster.replicas[2].start()
        wait_until(lambda: all(s.reachable for s in m.status()), timeout_s=60)
        after = m.receive(bob)
        assert after.messages == ()
        assert after.complete
        # the outbox now hands "during the outage" to the returning replicas: a late
        # copy of a delivered message, recognised by key, acked and not shown again
        assert m.flush_outbox() == 0
        assert m.receive(bob).messages == ()
        assert m.fetch(bob).messages == ()


def test_read_with_every_replica_down_raises_unavailable(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    for replica in cluster.replicas:
        replica.kill()
    with Messenger(config(cluster, client_home, timeout_s=1.0)) as m:
        with pytest.raises(Unavailable):
            m.receive("bob@example.org")
        with pytest.raises(QuorumNotReached):
            m.send(sender="alice@example.org", recipient="bob@example.org", body="nobody home")


def test_async_client_concurrent_sends_coalesce_and_all_arrive(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    async def run() -> list[str]:
        async with AsyncMessenger(config(shared_cluster, client_home, write_quorum=2)) as m:
            reports = await asyncio.gather(
                *(m.send(sender="carol@example.org", recipient=mailbox, body=f"c{i}") for i in range(300))
            )
            assert all(r.ok for r in reports)
            read = await m.receive(mailbox)
            return [msg.body for msg in read.messages]

    bodies = asyncio.run(asyncio.wait_for(run(), timeout=60))
    assert sorted(bodies) == sorted(f"c{i}" for i in range(300))


def test_status_reports_each_replica(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    cluster.replicas[1].kill()
    # a deadline a loaded machine's live replica never reaches; the killed one is refused at once
    with Messenger(config(cluster, client_home, timeout_s=30.0)) as m:
        first, second = m.status()
    assert first.reachable
    assert first.serving
    assert first.store == "sqlite"
    assert first.replica_id.startswith("r-")
    assert not second.reachable
    assert "UNAVAILABLE" in second.error


def test_send_many_of_large_bodies_is_split_by_bytes(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    """500 bodies of 60 KiB are 30 MB: batches must stay under the replicas' frame limit."""
    drafts = [Draft("alice@example.org", mailbox, f"{i:04d}" + "x" * 60_000) for i in range(500)]
    with Messenger(config(shared_cluster, client_home, write_quorum=3, timeout_s=30)) as m:
        reports = m.send_many(drafts)
        assert all(r.ok for r in reports), next(r for r in reports if not r.ok)
        assert len(m.receive(mailbox).messages) == 500
