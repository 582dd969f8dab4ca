"""Deletes stay deleted without trusting the clock: a tombstone goes only when every peer holds it.

A replica away longer than the tombstone grace comes back with its old copies
of messages acked meanwhile. Its peers must not have forgotten those
tombstones (they cannot confirm it holds them while it is away), and repair
must hand it every tombstone for a key it holds queued, however old: else the
acked messages come back to life.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_messenger import ClientConfig, Draft, Messenger
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.tombstones import purge_confirmed
from grpc_messenger.store import MemoryStore, SqliteStore, Store
from tests.conftest import ReplicaFactory, queued_keys, wait_until

GRACE_S = 1.0
MESSAGES = 30


def _tombstones(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.MessengerServiceStub(channel).Info(pb.InfoRequest(), timeout=10).tombstones


def test_a_replica_back_after_the_grace_brings_no_acked_message_back(
    replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str
) -> None:
    cluster = replica_factory.cluster(3, repair_interval_s=0.3)
    for replica in cluster.replicas:
        replica.extra_args = (*replica.extra_args, "--tombstone-grace", str(GRACE_S))
        replica.restart()
    r1, r2, r3 = cluster.replicas
    send = ClientConfig(servers=cluster.servers, data_dir=tmp_path / "sender", write_quorum=3, outbox=False)
    with Messenger(send) as m:
        reports = m.send_many(Draft("old@x.org", mailbox, f"acked while r3 was away {i}") for i in range(MESSAGES))
    keys = {r.key for r in reports}
    assert all(r.ok for r in reports)
    assert queued_keys(r3.address, mailbox) == keys

    r3.kill()  # away, with its copies
    read = ClientConfig(servers=(r1.address, r2.address), data_dir=tmp_path / "reader", outbox=False, timeout_s=5)
    with Messenger(read) as m:
        assert {msg.key for msg in m.receive(mailbox).messages} == keys
    time.sleep(GRACE_S * 4)  # well past the grace and several purge passes
    # r3 cannot confirm it holds these tombstones, so r1 and r2 keep them
    assert _tombstones(r1.address) >= MESSAGES
    assert _tombstones(r2.address) >= MESSAGES

    r3.start()  # back with its old data: every acked message still queued there
    wait_until(lambda: not queued_keys(r3.address, mailbox), timeout_s=30)
    for replica in cluster.replicas:
        assert not queued_keys(replica.address, mailbox)
    fresh = ClientConfig(servers=cluster.servers, data_dir=tmp_path / "new-device", outbox=False, timeout_s=5)
    with Messenger(fresh) as m:
        assert m.receive(mailbox).messages == ()
    # now every peer holds them: the tombstones go everywhere, and still nothing returns
    wait_until(lambda: all(_tombstones(r.address) == 0 for r in cluster.replicas), timeout_s=30)
    for replica in cluster.replicas:
        assert not queued_keys(replica.address, mailbox)


# --- the purge pass on its own: both stores, a stand-in for the peers --------------------------


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def make() -> Store:
        path = tmp_path / f"s-{len(opened)}.sqlite3"
        made: Store = SqliteStore(path) if request.param == "sqlite" else MemoryStore()
        opened.append(made)
        return made

    try:
        yield make
    finally:
        for made in opened:
            asyncio.run(made.close())


def _acked(store: Store, mailbox: str, keys: list[str], deleted_ms: int) -> None:
    asyncio.run(store.apply_tombstones(mailbox, [(k, deleted_ms) for k in keys]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(held=st.sets(st.integers(0, 19)), chunk=st.integers(1, 7))
def test_purge_forgets_exactly_the_old_tombstones_no_peer_still_holds(
    make_store: Callable[[], Store], held: set[int], chunk: int
) -> None:
    store = make_store()
    old = [f"k{i:02d}" for i in range(20)]
    new = [f"n{i:02d}" for i in range(5)]
    _acked(store, "a@x.org", old[:10], deleted_ms=1_000)
    _acked(store, "b@x.org", old[10:], deleted_ms=2_000)
    _acked(store, "a@x.org", new, deleted_ms=9_000)  # within the grace: never a candidate
    held_keys = {old[i] for i in held}

    async def held_elsewhere(mailbox: str, keys: Sequence[str]) -> set[str]:
        return {k for k in keys if k in held_keys}

    async def go() -> tuple[int, int]:
        stats = await purge_confirmed(
            store, deleted_before_ms=5_000, held_elsewhere=held_elsewhere, chunk=chunk, chunks_max=100
        )
        return stats.purged, (await store.counts()).tombstones

    purged, left = asyncio.run(go())
    assert purged == 20 - len(held_keys)
    assert left == len(held_keys) + len(new)


def test_purge_keeps_everything_when_a_peer_does_not_answer(make_store: Callable[[], Store]) -> None:
    store = make_store()
    _acked(store, "a@x.org", ["k1", "k2"], deleted_ms=1_000)

    async def unreachable(mailbox: str, keys: Sequence[str]) -> set[str]:
        return set(keys)

    stats = asyncio.run(
        purge_confirmed(store, deleted_before_ms=5_000, held_elsewhere=unreachable, chunk=10, chunks_max=10)
    )
    assert (stats.candidates, stats.purged, stats.kept_unconfirmed) == (2, 0, 2)
