"""What a replica acknowledged survives kill -9; SIGTERM drains in-flight calls."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from grpc_messenger import AsyncMessenger, ClientConfig, Draft, Messenger, QuorumNotReached
from tests.conftest import ReplicaFactory, queued_keys


def test_kill_9_right_after_acks_loses_nothing(replica_factory: ReplicaFactory, client_home: Path) -> None:
    replica = replica_factory.replica()
    config = ClientConfig(servers=(replica.address,), data_dir=client_home, timeout_s=10)
    with Messenger(config) as m:
        reports = m.send_many(Draft("alice@example.org", "bob@example.org", f"durable {i}") for i in range(2000))
    acked = {r.key for r in reports if r.ok}
    assert len(acked) == 2000
    replica.kill()  # SIGKILL: no drain, no close, no checkpoint
    replica.start()
    assert queued_keys(replica.address, "bob@example.org") == acked


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_stop_during_concurrent_sends_keeps_every_acknowledged_message(
    replica_factory: ReplicaFactory, client_home: Path, signal_name: str
) -> None:
    replica = replica_factory.replica()
    stop_replica = replica.kill if signal_name == "SIGKILL" else replica.terminate
    acked: list[str] = []
    config = ClientConfig(servers=(replica.address,), data_dir=client_home, timeout_s=5)

    async def sender(m: AsyncMessenger, worker: int, stop: asyncio.Event) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            try:
                report = await m.send(sender="alice@example.org", recipient="bob@example.org", body=f"{worker}-{i}")
            except QuorumNotReached:
                stop.set()
                return
            acked.append(report.key)

    async def run() -> None:
        async with AsyncMessenger(config) as m:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(sender(m, w, stop)) for w in range(16)]
            # stop it mid-stream, from another thread, while group commits are running
            killer = threading.Timer(1.5, stop_replica)
            killer.start()
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
            finally:
                killer.cancel()
                # the stop may still be waiting for the process: while it does, another
                # thread's poll() cannot reap it and would see the replica as running
                killer.join(timeout=60)

    asyncio.run(run())
    assert len(acked) > 100, "the replica should have acknowledged messages before the stop"
    if signal_name == "SIGTERM":
        assert replica.terminate() == 0
        assert "event=replica.stopped" in replica.log_path.read_text()
    replica.start()
    stored = queued_keys(replica.address, "bob@example.org")
    assert set(acked) <= stored


def test_sigterm_drains_in_flight_sends_and_exits_cleanly(replica_factory: ReplicaFactory, client_home: Path) -> None:
    replica = replica_factory.replica()
    config = ClientConfig(servers=(replica.address,), data_dir=client_home, timeout_s=10)
    with Messenger(config) as m:
        reports = m.send_many(Draft("alice@example.org", "bob@example.org", f"drain {i}") for i in range(500))
        assert replica.terminate() == 0
    assert "event=replica.stopped" in replica.log_path.read_text()
    replica.start()
    assert queued_keys(replica.address, "bob@example.org") == {r.key for r in reports if r.ok}
