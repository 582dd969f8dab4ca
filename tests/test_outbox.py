"""Hinted hand-off: deliveries a replica missed are kept durably and retried until it has them."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

from grpc_messenger import ClientConfig, Draft, Messenger, ReplicaState
from grpc_messenger.client.outbox import BACKOFF_CAP_S, EXPIRE_ATTEMPTS_MIN, Outbox, OwedDelivery, backoff_ms
from grpc_messenger.errors import Failure, Status
from grpc_messenger.model import Message, new_key
from tests.cli_support import messenger
from tests.conftest import ReplicaFactory, ReplicaProcess, queued_keys, wait_until

BOB = "bob@example.org"
DOWN = Failure(Status.UNAVAILABLE, "connection refused")
WAIT_S = 30.0  # a wait for a condition: it returns as soon as the condition holds
HELD_S = 120.0  # a deadline no test waits out: a held call stays unanswered, never failed
FLUSHES_MAX = 100


def message(body: str = "hi") -> Message:
    return Message(key=new_key(), sender="alice@example.org", recipient=BOB, body=body, created_unix_ms=1)


def queued(replica: ReplicaProcess, mailbox: str = BOB) -> set[str]:
    return queued_keys(replica.address, mailbox)


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


def test_outbox_records_retries_with_backoff_and_forgets_when_paid(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock_ms=clock)
    try:
        a, b = message("a"), message("b")
        outbox.owe([(a, "r1", DOWN), (a, "r2", DOWN), (b, "r1", DOWN)])
        outbox.owe([(a, "r1", Failure(Status.UNAVAILABLE, "again"))])  # owing twice is owing once
        assert outbox.counts() == (3, 0)
        due = outbox.due(limit=10)
        assert {(d.message.key, d.replica) for d in due} == {(a.key, "r1"), (a.key, "r2"), (b.key, "r1")}
        assert next(d for d in due if d.message.key == b.key).message == b
        outbox.retry_later([d for d in due if d.replica == "r1"], failure=Failure(Status.DEADLINE_EXCEEDED))
        assert [d.replica for d in outbox.due(limit=10)] == ["r2"]  # r1 backs off
        assert len(outbox.due(limit=10, all_pending=True)) == 3
        clock.now_ms += int(BACKOFF_CAP_S * 1000)
        assert len(outbox.due(limit=10)) == 3
        outbox.paid([(a.key, BOB, "r1"), (a.key, BOB, "r2")])
        assert [(d.message.key, d.attempts, d.last_error) for d in outbox.listing(limit=10)] == [
            (b.key, 1, "DEADLINE_EXCEEDED")
        ]
    finally:
        outbox.close()


def test_outbox_drop_forgets_by_key_by_replica_or_both(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock_ms=FakeClock())
    try:
        a, b = message("a"), message("b")
        outbox.owe([(a, "r1", "x"), (a, "r2", "x"), (b, "r1", "x"), (b, "r2", "x")])
        assert outbox.drop(key=a.key, replica="r9") == 0
        assert outbox.drop(key=a.key, replica="r1") == 1
        assert outbox.drop(replica="r2") == 2
        assert outbox.drop(key=b.key) == 1
        assert outbox.counts() == (0, 0)
    finally:
        outbox.close()


def test_outbox_expiry_reports_instead_of_dropping(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock_ms=clock)
    try:
        outbox.owe([(message(), "r1", DOWN)])
        assert outbox.expire(expiry_s=60) == 0
        for _ in range(EXPIRE_ATTEMPTS_MIN):
            outbox.retry_later(outbox.due(limit=10, all_pending=True), failure=DOWN)
        clock.now_ms += 61_000
        assert outbox.expire(expiry_s=60) == 1
        assert outbox.counts() == (0, 1)
        assert outbox.due(limit=10, all_pending=True) == []
        assert outbox.listing(limit=10)[0].expired
    finally:
        outbox.close()


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(7)
    steps = [backoff_ms(n, rng=rng) for n in range(30)]
    assert steps[0] <= 500
    assert steps[5] > steps[0]
    assert max(steps) <= BACKOFF_CAP_S * 1000


def config(servers: tuple[str, ...], home: Path, **kw: float) -> ClientConfig:
    return ClientConfig(servers=servers, data_dir=home, timeout_s=2.0, **kw)  # type: ignore[arg-type]


def test_a_replica_that_was_down_gets_its_copies_from_the_outbox(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    cluster = replica_factory.cluster(3)
    down = cluster.replicas[2]
    down.kill()
    with Messenger(config(cluster.servers, client_home, outbox_interval_s=0.1)) as m:
        reports = m.send_many(Draft("alice@example.org", BOB, f"m{i}") for i in range(50))
        assert all(r.ok for r in reports)
        wait_until(lambda: m.outbox_owed() == (50, 0), timeout_s=WAIT_S)
        down.start()
        # the background loop delivers without being asked
        wait_until(lambda: m.outbox_owed() == (0, 0), timeout_s=WAIT_S)
    assert queued(down) == {r.key for r in reports}


def test_owed_deliveries_survive_a_client_restart(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    down = cluster.replicas[1]
    down.kill()
    with Messenger(config(cluster.servers, client_home)) as m:
        report = m.send(sender="alice@example.org", recipient=BOB, body="owed", settle=True)
        assert report.replicas[1].state is ReplicaState.FAILED
    down.start()
    with Messenger(config(cluster.servers, client_home, outbox_interval_s=60)) as m:
        assert m.outbox_owed() == (1, 0)
        # gRPC may still hold the refused connection for its reconnect backoff (a second at most)
        wait_until(lambda: m.status()[1].reachable, timeout_s=15)
        assert m.flush_outbox() == 0
    assert queued(down) == {report.key}


def test_outbox_flush_keeps_what_still_cannot_be_delivered(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    cluster.replicas[1].kill()
    with Messenger(config(cluster.servers, client_home, outbox_interval_s=60)) as m:
        m.send(sender="alice@example.org", recipient=BOB, body="owed", settle=True)
        assert m.flush_outbox() == 1
        (owed,) = m.outbox_listing()
        assert owed.attempts == 1
        assert "UNAVAILABLE" in owed.last_error


def test_outbox_is_off_when_asked(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    cluster.replicas[1].kill()
    with Messenger(ClientConfig(servers=cluster.servers, data_dir=client_home, timeout_s=2, outbox=False)) as m:
        m.send(sender="alice@example.org", recipient=BOB, body="not owed", settle=True)
        assert m.outbox_owed() == (0, 0)
    assert not (client_home / "outbox.sqlite3").exists()


def test_cli_outbox_lists_and_flushes(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    down = cluster.replicas[1]
    down.kill()
    sent = messenger("--timeout", "2", "send", "--from", "a@example.org", "--to", BOB, "hi",
                     servers=cluster.servers, home=client_home)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    listing = json.loads(messenger("outbox", "--json", servers=cluster.servers, home=client_home).stdout)
    assert listing["owed"] == 1
    assert listing["deliveries"][0]["replica"] == down.address
    stuck = messenger("--timeout", "2", "outbox", "flush", servers=cluster.servers, home=client_home)
    assert stuck.returncode == 1
    assert "1 deliveries still owed" in stuck.stderr
    down.start()
    flushed = messenger("outbox", "flush", servers=cluster.servers, home=client_home)
    assert flushed.returncode == 0, flushed.stderr
    assert "nothing owed" in flushed.stdout
    assert "outbox empty" in messenger("outbox", servers=cluster.servers, home=client_home).stdout


def test_deliveries_unanswered_when_send_returns_are_owed_on_disk(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    """Found by `messenger chaos`: a sender dying right after a W=1 send left no hint for slow replicas."""
    from grpc_messenger import AsyncMessenger
    from grpc_messenger.chaos.proxy import FaultProxy, ProxyMode

    cluster = replica_factory.cluster(3)

    async def run() -> tuple[list[OwedDelivery], tuple[int, int]]:
        proxies = [FaultProxy(name=f"p{i}", upstream=r.address) for i, r in enumerate(cluster.replicas)]
        for proxy in proxies:
            await proxy.start()
        try:
            servers = tuple(p.address for p in proxies)
            config = ClientConfig(servers=servers, data_dir=client_home, timeout_s=HELD_S, outbox_interval_s=60)
            async with AsyncMessenger(config) as m:
                # connections up first: one silenced before its handshake is refused at once, one
                # silenced after it holds its calls unanswered (their deadline is far off)
                assert all(s.reachable for s in await m.status())
                proxies[1].set_mode(ProxyMode.DROP)
                proxies[2].set_mode(ProxyMode.DROP)
                report = await m.send(sender="alice@example.org", recipient=BOB, body="in doubt")
                assert [r.state for r in report.replicas][1:] == [ReplicaState.PENDING] * 2
                # what a fresh process would find if this one died now
                in_doubt = await _on_disk_once(client_home, owed=2, timeout_s=WAIT_S)
                assert sorted(d.replica for d in in_doubt) == sorted(servers[1:])
                # the held connections are reset: their calls fail now, not at their deadline
                for proxy in proxies:
                    proxy.set_mode(ProxyMode.PASS)
            # the next start (fresh connections) delivers what is owed
            async with AsyncMessenger(config) as m:
                for _ in range(FLUSHES_MAX):  # a connection the last process saw reset may still be backing off
                    if await m.flush_outbox() == 0:
                        break
                    await asyncio.sleep(0.2)
                return in_doubt, await m.outbox_owed()
        finally:
            for proxy in proxies:
                await proxy.close()

    in_doubt, after = asyncio.run(asyncio.wait_for(run(), timeout=3 * WAIT_S))
    # written while unanswered (in doubt), not once the calls failed
    assert [("no answer yet" in d.last_error, d.expired) for d in in_doubt] == [(True, False)] * 2, in_doubt
    assert after == (0, 0)
    assert all(len(queued(r)) == 1 for r in cluster.replicas)


async def _on_disk_once(home: Path, *, owed: int, timeout_s: float) -> list[OwedDelivery]:
    """What a new process opening `home` finds, once `owed` deliveries are there (or at timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await asyncio.to_thread(_listing_on_disk, home)
        if len(seen) >= owed or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


def _listing_on_disk(home: Path) -> list[OwedDelivery]:
    outbox = Outbox.in_dir(home)
    try:
        return outbox.listing(limit=100)
    finally:
        outbox.close()


def test_deliveries_answered_quickly_never_touch_the_outbox(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(3)
    with Messenger(config(cluster.servers, client_home)) as m:
        for i in range(20):
            m.send(sender="alice@example.org", recipient=BOB, body=f"quick {i}")
        time.sleep(0.3)
        outbox = Outbox.in_dir(client_home)
        try:
            assert outbox.counts() == (0, 0)
        finally:
            outbox.close()


def test_a_clock_stepped_back_does_not_stall_owed_deliveries(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock_ms=clock)
    try:
        outbox.owe([(message(), "r1", DOWN)])
        outbox.retry_later(outbox.due(limit=10), failure=DOWN)  # due again within a backoff
        clock.now_ms -= 2 * 3600 * 1000  # the wall clock goes two hours back
        assert len(outbox.due(limit=10)) == 1  # not two hours from now
    finally:
        outbox.close()


def test_a_clock_jumping_ahead_does_not_expire_deliveries_nobody_tried(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock_ms=clock)
    try:
        outbox.owe([(message(), "r1", DOWN)])
        clock.now_ms += 8 * 24 * 3600 * 1000  # past a 7-day expiry in one step
        assert outbox.expire(expiry_s=7 * 24 * 3600) == 0
        assert outbox.counts() == (1, 0)
    finally:
        outbox.close()
