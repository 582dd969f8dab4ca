"""What an operator watches: commit batch size and latency, store size and free space, repair lag
per peer, and logs as JSON for a log pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpc_messenger import ClientConfig, Draft, Messenger
from grpc_messenger.logs import parse_pairs
from tests.conftest import ReplicaFactory, ReplicaProcess, wait_until
from tests.test_metrics import scrape


def metrics_address(replica: ReplicaProcess) -> str:
    ready = json.loads((replica.data_dir / "ready.json").read_text())
    return str(ready.get("metrics_address") or ready["metrics"])


def test_metrics_show_commits_store_size_and_repair_lag_per_peer(
    replica_factory: ReplicaFactory, client_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSENGER_LOG_FORMAT", "json")  # the replicas inherit it
    peer = replica_factory.replica()
    watched = replica_factory.replica(extra_args=("--metrics-listen", "127.0.0.1:0"))
    watched.extra_args = (*watched.extra_args, "--peer", peer.address, "--repair-interval", "0.2")
    watched.restart()
    metrics = metrics_address(watched)
    with Messenger(ClientConfig(servers=(peer.address,), data_dir=client_home)) as m:
        reports = m.send_many(Draft("alice@example.org", "bob@example.org", f"lag {i}") for i in range(50))
    assert all(r.ok for r in reports)
    peer_label = f'peer="{peer.address}"'
    # repair copies the 50 from the peer: the lag gauge goes back to 0 with a recent success
    wait_until(
        lambda: (
            scrape(metrics).get(f"messenger_repair_mailboxes_differing{{{peer_label}}}") == 0.0
            and scrape(metrics).get("messenger_store_messages") == 50.0
        ),
        timeout_s=30,
    )
    samples = scrape(metrics)
    assert samples[f"messenger_repair_last_success_timestamp_seconds{{{peer_label}}}"] > 0
    assert samples["messenger_commit_ops_count"] >= 1
    assert samples["messenger_commit_seconds_count"] == samples["messenger_commit_ops_count"]
    assert samples["messenger_commit_ops_sum"] >= 1
    assert samples["messenger_store_bytes"] > 0
    assert samples["messenger_store_disk_free_bytes"] > 0
    assert samples["messenger_store_disk_full"] == 0

    # --log-format json: every line one object; the event's key=value pairs are fields
    lines = [ln for ln in watched.log_path.read_text().splitlines() if ln.startswith("{")]
    events = [json.loads(ln) for ln in lines]
    started = [e for e in events if e.get("event") == "replica.started"]
    assert started
    assert started[-1]["peers"] == peer.address
    assert {"ts", "level", "logger", "message"} <= started[-1].keys()


def test_log_pairs_parse_quoted_values() -> None:
    fields = parse_pairs("event=store.commit_failed error=OperationalError('disk is full') ops=3 note='a b'")
    assert fields == {
        "event": "store.commit_failed",
        "error": "OperationalError('disk is full')",
        "ops": "3",
        "note": "a b",
    }
