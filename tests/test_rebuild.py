"""A replica that lost its data says it is rebuilding until it has copied every peer.

Real replicas: one is wiped and restarted while a peer is down; it must report
itself rebuilding (Info, `messenger status`, metrics) for as long as that peer
has not been repaired from, also across a kill -9, and stop once it has.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from grpc_messenger.model import new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.cli_support import messenger
from tests.conftest import ReplicaFactory, ReplicaProcess, queued_keys, wait_until

REPAIR_S = 0.2
SETTLE_S = 60.0
BOB = "bob@example.org"


def info(replica: ReplicaProcess) -> pb.InfoResponse:
    with grpc.insecure_channel(replica.address) as channel:
        return pb_grpc.MessengerServiceStub(channel).Info(pb.InfoRequest(), timeout=10)


def send_to(replica: ReplicaProcess, n: int) -> set[str]:
    requests = [
        pb.SendRequest(key=new_key(), msg=f"message {i}", self_email="alice@example.org", dest_email=BOB)
        for i in range(n)
    ]
    with grpc.insecure_channel(replica.address) as channel:
        pb_grpc.MessengerServiceStub(channel).SendBatch(pb.SendBatchRequest(messages=requests), timeout=30)
    return {r.key for r in requests}


def wipe(replica: ReplicaProcess) -> None:
    replica.kill()
    for path in replica.data_dir.iterdir():
        if path.name.startswith("replica.sqlite3"):
            path.unlink()


def test_a_replica_without_peers_is_not_rebuilding(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica()
    assert not info(replica).rebuilding
    replica.restart()
    assert not info(replica).rebuilding


def test_a_wiped_replica_rebuilds_from_every_peer_and_says_so_until_done(
    replica_factory: ReplicaFactory, tmp_path: Path
) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=REPAIR_S)
    a, b, c = cluster.replicas
    # a new cluster starts empty: each replica is rebuilt once it has met both peers
    wait_until(lambda: not any(info(r).rebuilding for r in cluster.replicas), timeout_s=SETTLE_S)
    keys = send_to(a, 300)
    wait_until(lambda: queued_keys(b.address, BOB) == keys == queued_keys(c.address, BOB), timeout_s=SETTLE_S)

    # a replica restarted with its data is not rebuilding
    a.restart()
    assert not info(a).rebuilding

    # c loses its disk while b is down: it copies a's messages but has not met b
    b.kill()
    wipe(c)
    c.start()
    wait_until(lambda: queued_keys(c.address, BOB) == keys, timeout_s=SETTLE_S)
    assert info(c).rebuilding
    shown = messenger("status", servers=(a.address, c.address), home=tmp_path / "home")
    assert "rebuilding" in shown.stdout, shown.stdout
    # the flag is on disk: a kill -9 mid-rebuild does not forget it
    c.restart()
    assert info(c).rebuilding

    b.start()
    wait_until(lambda: not info(c).rebuilding, timeout_s=SETTLE_S)
    assert queued_keys(c.address, BOB) == keys
    c.restart()
    assert not info(c).rebuilding  # and being rebuilt is on disk too
    assert "event=repair.rebuilt" in c.log_path.read_text()


def test_a_replica_whose_damaged_store_was_set_aside_rebuilds(replica_factory: ReplicaFactory) -> None:
    cluster = replica_factory.cluster(2, repair_interval_s=REPAIR_S)
    a, b = cluster.replicas
    wait_until(lambda: not any(info(r).rebuilding for r in cluster.replicas), timeout_s=SETTLE_S)
    keys = send_to(a, 50)
    wait_until(lambda: queued_keys(b.address, BOB) == keys, timeout_s=SETTLE_S)
    b.kill()
    a.kill()  # no peer to rebuild from while b comes back
    store = b.data_dir / "replica.sqlite3"
    for suffix in ("-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    store.write_bytes(b"this is not a database" * 100)
    b.start()
    assert info(b).rebuilding
    assert any(p.name.startswith("replica.sqlite3.damaged") for p in b.data_dir.iterdir())
    a.start()
    wait_until(lambda: not info(b).rebuilding, timeout_s=SETTLE_S)
    assert queued_keys(b.address, BOB) == keys
