"""Anti-entropy between real replicas: copies spread, tombstones win, lost or damaged disks are rebuilt."""

from __future__ import annotations

from pathlib import Path

import grpc

from grpc_messenger.model import new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import ReplicaFactory, ReplicaProcess, queued_keys, wait_until

REPAIR_S = 0.2
SETTLE_S = 30.0
BOB = "bob@example.org"


def stub(replica: ReplicaProcess) -> tuple[grpc.Channel, pb_grpc.MessengerServiceStub]:
    channel = grpc.insecure_channel(replica.address)
    return channel, pb_grpc.MessengerServiceStub(channel)


def send_to(replica: ReplicaProcess, bodies: list[str], mailbox: str = BOB) -> list[str]:
    requests = [
        pb.SendRequest(key=new_key(), msg=b, self_email="alice@example.org", dest_email=mailbox) for b in bodies
    ]
    channel, s = stub(replica)
    with channel:
        s.SendBatch(pb.SendBatchRequest(messages=requests), timeout=10)
    return [r.key for r in requests]


def queued(replica: ReplicaProcess, mailbox: str = BOB) -> set[str]:
    return queued_keys(replica.address, mailbox)


def info(replica: ReplicaProcess) -> pb.InfoResponse:
    channel, s = stub(replica)
    with channel:
        return s.Info(pb.InfoRequest(), timeout=10)


def agree(replicas: list[ReplicaProcess]) -> bool:
    return len({info(r).state_digest for r in replicas}) == 1


def test_a_message_stored_on_one_replica_reaches_the_others(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    a, b, c = cluster.replicas
    keys = set(send_to(a, [f"only on a {i}" for i in range(700)]))  # more than one pull chunk
    wait_until(lambda: queued(b) == keys and queued(c) == keys, timeout_s=SETTLE_S)
    assert agree(cluster.replicas)


def test_tombstones_win_over_copies(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    a, b, c = cluster.replicas
    keys = send_to(a, ["read on a", "still queued"])
    wait_until(lambda: queued(c) == set(keys), timeout_s=SETTLE_S)
    channel, s = stub(a)
    with channel:
        s.Ack(pb.AckRequest(self_email=BOB, keys=[keys[0]]), timeout=10)
    wait_until(lambda: queued(b) == {keys[1]} and queued(c) == {keys[1]}, timeout_s=SETTLE_S)
    wait_until(lambda: agree(cluster.replicas), timeout_s=SETTLE_S)
    assert info(b).tombstones == 1


def test_a_replica_with_a_lost_disk_is_rebuilt_and_spreads_no_gaps(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    a, _b, c = cluster.replicas
    keys = send_to(a, [f"m{i}" for i in range(50)])
    channel, s = stub(a)
    with channel:
        s.Ack(pb.AckRequest(self_email=BOB, keys=keys[:10]), timeout=10)
    wait_until(lambda: agree(cluster.replicas), timeout_s=SETTLE_S)
    c.kill()
    for store_file in c.data_dir.glob("replica.sqlite3*"):  # the disk is gone, WAL and all
        store_file.unlink()
    c.start()
    wait_until(lambda: agree(cluster.replicas), timeout_s=SETTLE_S)
    assert queued(c) == set(keys[10:])  # acked messages did not come back
    assert queued(a) == set(keys[10:])  # and the empty replica deleted nothing elsewhere


def damage(path: Path) -> None:
    """Overwrite 8 KiB in the middle of the file with garbage (the replica is down)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = bytes((i * 37 + 11) % 256 for i in range(8192))
    path.write_bytes(bytes(data))


def test_a_damaged_store_is_set_aside_and_rebuilt_from_peers(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    a, _b, c = cluster.replicas
    keys = set(send_to(a, [f"payload {i} " + "x" * 200 for i in range(400)]))
    wait_until(lambda: queued(c) == keys, timeout_s=SETTLE_S)
    assert c.terminate() == 0  # clean stop: the WAL is checkpointed into the main file
    store_file = c.data_dir / "replica.sqlite3"
    damage(store_file)
    c.start()
    assert list(c.data_dir.glob("replica.sqlite3.damaged-*")), "the damaged file is kept for inspection"
    assert "event=store.set_aside" in c.log_path.read_text()
    wait_until(lambda: queued(c) == keys, timeout_s=SETTLE_S)
    assert queued(a) == keys


def test_repair_survives_a_peer_going_down(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    a, b, c = cluster.replicas
    b.kill()
    keys = set(send_to(a, ["while b is down"]))
    wait_until(lambda: queued(c) == keys, timeout_s=SETTLE_S)
    b.start()
    wait_until(lambda: queued(b) == keys, timeout_s=SETTLE_S)
    assert a.alive
    assert c.alive


def test_tombstones_are_purged_everywhere_after_the_grace_period(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    for replica in cluster.replicas:
        replica.extra_args = (*replica.extra_args, "--tombstone-grace", "3")
        replica.restart()
    a, b, c = cluster.replicas
    keys = send_to(a, ["read soon"])
    wait_until(lambda: queued(c) == set(keys), timeout_s=SETTLE_S)
    channel, s = stub(b)
    with channel:
        s.Ack(pb.AckRequest(self_email=BOB, keys=keys), timeout=10)
    wait_until(
        lambda: all(info(r).tombstones == 1 and info(r).messages == 0 for r in cluster.replicas), timeout_s=SETTLE_S
    )
    # after the grace period every replica forgets it, and repair does not hand it back
    wait_until(lambda: all(info(r).tombstones == 0 for r in cluster.replicas), timeout_s=SETTLE_S)
    assert all(info(r).messages == 0 for r in cluster.replicas)
    assert agree(cluster.replicas)
