"""Repair logs state changes (peer lost, peer back, repaired N), not a line every round a peer is down."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cli_support import messenger
from tests.conftest import ReplicaFactory, ReplicaProcess, wait_until

REPAIR_S = 0.1
DOWN_FOR_S = 1.5  # about 15 rounds at REPAIR_S: once the old way, a line each
SETTLE_S = 30.0


def log_since(replica: ReplicaProcess, offset: int) -> str:
    return replica.log_path.read_text()[offset:]


def test_repair_logs_a_lost_peer_once_and_its_return_once(replica_factory: ReplicaFactory, client_home: Path) -> None:
    a, b = replica_factory.cluster(2, repair_interval_s=REPAIR_S).replicas
    # the cluster restarts each replica once to give it its peers; a may have seen b go and come back
    wait_until(lambda: log_since(a, 0).count("peer_lost") == log_since(a, 0).count("peer_back"), timeout_s=SETTLE_S)
    start_a = len(a.log_path.read_text())
    b.kill()
    start_b = len(b.log_path.read_text())
    wait_until(lambda: "event=repair.peer_lost" in log_since(a, start_a), timeout_s=SETTLE_S)
    sent = messenger("send", "--from", "alice@example.org", "--to", "bob@example.org", "while b was away",
                     servers=(a.address,), home=client_home)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    time.sleep(DOWN_FOR_S)  # rounds keep failing meanwhile; none of them may log again
    b.start()
    wait_until(lambda: "event=repair.peer_back" in log_since(a, start_a), timeout_s=SETTLE_S)
    wait_until(lambda: "event=repair.repaired" in log_since(b, start_b), timeout_s=SETTLE_S)
    log_a = log_since(a, start_a)
    assert log_a.count("event=repair.peer_lost") == 1
    assert log_a.count("event=repair.peer_back") == 1
    assert "event=repair.peer_failed" not in log_a
    repaired = [line for line in log_since(b, start_b).splitlines() if "event=repair.repaired" in line]
    assert len(repaired) == 1
    assert "pulled=1 " in repaired[0]
