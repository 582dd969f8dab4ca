"""`messenger admin backup|check|compact` against real replicas, and a restore that resurrects nothing."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import grpc

from grpc_messenger import ClientConfig, Draft, Messenger
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.store.maintenance import store_file
from tests.conftest import ReplicaFactory, ReplicaProcess, queued_keys, wait_until
from tests.test_cli import messenger

ACKED_AFTER = "acked-after-backup@example.org"
KEPT = "kept@example.org"
LOAD = "load@example.org"
LOAD_SENDS_MAX = 5000


def send(m: Messenger, mailbox: str, n: int, tag: str) -> set[str]:
    """Send n messages that every replica stores (settled), return their keys."""
    reports = m.send_many(Draft("alice@example.org", mailbox, f"{tag} {i}") for i in range(n))
    assert all(r.ok for r in reports)
    return {r.key for r in reports}


def state_digest(replica: ReplicaProcess) -> int:
    with grpc.insecure_channel(replica.address) as channel:
        return int(pb_grpc.MessengerServiceStub(channel).Info(pb.InfoRequest(), timeout=10).state_digest)


def test_backup_under_load_restores_and_repair_brings_the_rest_without_resurrecting(
    replica_factory: ReplicaFactory, client_home: Path, tmp_path: Path
) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=0.3)
    restored = cluster.replicas[0]
    config = ClientConfig(servers=cluster.servers, data_dir=client_home, write_quorum=3, timeout_s=10)
    backup_path = tmp_path / "backup.sqlite3"
    with Messenger(config) as m:
        acked_later = send(m, ACKED_AFTER, 100, "before")
        kept_before = send(m, KEPT, 100, "before")

        # the backup is taken while another client keeps sending
        stop = threading.Event()

        def load() -> None:
            with Messenger(ClientConfig(servers=cluster.servers, data_dir=tmp_path / "loader")) as loader:
                for i in range(LOAD_SENDS_MAX):
                    if stop.is_set():
                        return
                    loader.send(sender="carol@example.org", recipient=LOAD, body=f"load {i}")

        loader = threading.Thread(target=load)
        loader.start()
        try:
            time.sleep(0.5)
            done = messenger("admin", "backup", "--data-dir", str(restored.data_dir), str(backup_path), "--json")
        finally:
            stop.set()
            loader.join(timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] is True

        kept_after = send(m, KEPT, 100, "after")
        # read and ack one mailbox on every replica: its tombstones must beat the backup's copies
        got = m.receive(ACKED_AFTER)
        assert {msg.key for msg in got.messages} == acked_later

    restored.terminate()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_file(restored.data_dir)}{suffix}").unlink(missing_ok=True)
    store_file(restored.data_dir).write_bytes(backup_path.read_bytes())
    restored.start()
    # right after the restore it holds what the backup held
    assert kept_before <= queued_keys(restored.address, KEPT)

    wait_until(lambda: len({state_digest(r) for r in cluster.replicas}) == 1, timeout_s=60, interval_s=0.5)
    assert queued_keys(restored.address, ACKED_AFTER) == set(), "acked after the backup, resurrected by the restore"
    assert queued_keys(restored.address, KEPT) == kept_before | kept_after
    assert queued_keys(restored.address, LOAD) == queued_keys(cluster.replicas[1].address, LOAD)
    checked = messenger("admin", "check", "--data-dir", str(restored.data_dir))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_check_finds_a_damaged_row_and_compact_purges_expired_tombstones_only_when_stopped(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    replica = replica_factory.replica()
    with Messenger(ClientConfig(servers=(replica.address,), data_dir=client_home)) as m:
        acked = send(m, ACKED_AFTER, 30, "acked")
        assert len(m.receive(ACKED_AFTER).messages) == 30  # acked: 30 tombstones
        kept = send(m, KEPT, 20, "check")
    healthy = messenger("admin", "check", "--data-dir", str(replica.data_dir), "--json")  # live
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert json.loads(healthy.stdout)["rows_checked"] == 20
    refused = messenger("admin", "compact", "--data-dir", str(replica.data_dir), "--tombstone-grace", "1")
    assert refused.returncode == 1
    assert "in use" in refused.stderr

    assert replica.terminate() == 0
    victim = sorted(kept)[3]
    with closing(sqlite3.connect(store_file(replica.data_dir))) as conn, conn:
        conn.execute("UPDATE messages SET wire = CAST(wire || 'tampered' AS BLOB) WHERE msg_key = ?", (victim,))
    damaged = messenger("admin", "check", "--data-dir", str(replica.data_dir), "--json")
    assert damaged.returncode == 1
    report = json.loads(damaged.stdout)
    assert report["ok"] is False
    assert [row["key"] for row in report["damaged"]] == [victim]

    time.sleep(1.1)  # the tombstones are older than a 1 s grace now
    # a peer that does not answer confirms nothing: every tombstone stays
    compact = ("admin", "compact", "--data-dir", str(replica.data_dir), "--tombstone-grace", "1", "--json")
    unconfirmed = messenger(*compact, "--peer", "127.0.0.1:9")
    assert unconfirmed.returncode == 0, unconfirmed.stderr
    assert json.loads(unconfirmed.stdout)["tombstones_purged"] == 0
    done = messenger(*compact)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tombstones_purged"] == len(acked)
    replica.start()  # the replica starts on the compacted file, sets the damaged row aside, serves the rest
    assert queued_keys(replica.address, KEPT) == kept - {victim}
    assert queued_keys(replica.address, ACKED_AFTER) == set()
