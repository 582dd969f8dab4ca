"""Push to the reader: `subscribe()` and `messenger watch` on real replicas, through kills and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_messenger import wire
from grpc_messenger.client.core import AsyncMessenger
from grpc_messenger.client.outbox import BACKOFF_CAP_S
from grpc_messenger.client.subscribe import SubscribeOptions
from grpc_messenger.client.sync import Messenger
from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import PermissionDenied
from grpc_messenger.model import Message, build_message, new_key
from grpc_messenger.server.subscriptions import HEARTBEAT_S
from grpc_messenger.tui.session import SignIn, library_opener
from tests.conftest import Cluster, ReplicaFactory, queued_keys, wait_until
from tests.security_support import make_keys, stub_for

# a wait for a push returns as soon as the message is there; its bound stays under the replicas'
# heartbeat, at which a stream re-reads the store anyway: a bound past it could not tell a lost
# push from that re-read (test_subscribe tells them apart for certain, by the next page's content)
PUSH_WAIT_S = 0.8 * HEARTBEAT_S
FAST = SubscribeOptions(backoff_initial_s=0.05, backoff_max_s=0.5)


def config(cluster: Cluster, home: Path, **kw: object) -> ClientConfig:
    return ClientConfig(servers=cluster.servers, data_dir=home, timeout_s=PUSH_WAIT_S, **kw)  # type: ignore[arg-type]


def test_subscribe_yields_each_message_once_from_every_replica(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    """Three replicas push the same message; the reader sees it once, and every replica's copy is acked."""

    async def run() -> list[Message]:
        async with (
            AsyncMessenger(config(shared_cluster, client_home, write_quorum=3)) as m,
            m.subscribe(mailbox, options=FAST) as sub,
        ):
            await m.send(sender="ann@example.org", recipient=mailbox, body="hello", settle=True)
            first = await asyncio.wait_for(anext(sub), PUSH_WAIT_S)
            await m.send(sender="ann@example.org", recipient=mailbox, body="again", settle=True)
            second = await asyncio.wait_for(anext(sub), PUSH_WAIT_S)
            # every replica delivered its copies: nothing may come a second time
            await asyncio.to_thread(
                wait_until,
                lambda: all(not queued_keys(a, mailbox) for a in shared_cluster.servers),
                timeout_s=PUSH_WAIT_S,
            )
            try:
                extra = await asyncio.wait_for(anext(sub), 0.5)
            except TimeoutError:
                return [first, second]
            return [first, second, extra]

    got = asyncio.run(asyncio.wait_for(run(), 60))
    assert [m.body for m in got] == ["hello", "again"]


def test_subscribe_delivers_what_arrived_before_it_and_never_reshows_a_known_key(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    """Mail queued between a read and the subscription comes first; a key already in the inbox is acked, not shown."""
    with Messenger(config(shared_cluster, client_home, write_quorum=3)) as m:
        # already delivered by an earlier read, yet one replica missed that read's ack
        known = build_message(
            sender="ann@example.org", recipient=mailbox, body="read before", key=new_key(), created_unix_ms=1
        )
        m.inbox.store_new(mailbox, [known])
        assert [x.key for x in m.inbox.take_unshown(mailbox)] == [known.key]
        with stub_for(shared_cluster.servers[0]) as stub:
            stub.Send(wire.message_to_pb(known))
        assert known.key in queued_keys(shared_cluster.servers[0], mailbox)
        m.send(sender="ann@example.org", recipient=mailbox, body="between", settle=True)
        with m.subscribe(mailbox, options=FAST) as sub:
            first = sub.next(timeout_s=PUSH_WAIT_S)
            assert first is not None
            assert first.body == "between"
            wait_until(lambda: not queued_keys(shared_cluster.servers[0], mailbox), timeout_s=PUSH_WAIT_S)
            assert sub.next(timeout_s=0.3) is None
        # closing hands nothing out twice and loses nothing: the inbox holds both, once each
        assert sorted(x.body for x in m.inbox.history(mailbox)) == ["between", "read before"]


def test_watch_prints_a_message_once_while_a_replica_restarts(
    replica_factory: ReplicaFactory, client_home: Path, tmp_path: Path
) -> None:
    """`messenger watch` keeps following through a replica restart and prints a message sent meanwhile once."""
    cluster = replica_factory.cluster(3)
    mailbox = "watcher@example.org"
    watcher, pumps, lines, notes = _start_watching(cluster.servers, client_home, mailbox, "--json")
    try:
        _wait_for_note(notes, "following 3 of 3")
        victim = cluster.replicas[0]
        victim.kill()
        _wait_for_note(notes, "following 2 of 3")
        sender_home = tmp_path / "sender"
        # a deadline no live replica reaches on a loaded machine; the killed one is refused at once
        with Messenger(ClientConfig(servers=cluster.servers, data_dir=sender_home, timeout_s=PUSH_WAIT_S)) as m:
            report = m.send(sender="ann@example.org", recipient=mailbox, body="sent while one was down", settle=True)
            assert report.acknowledged == 2
            victim.start()  # same port and data directory
            # the sender's outbox hands the restarted replica its copy: a third copy to deduplicate
            wait_until(lambda: m.flush_outbox() == 0, timeout_s=PUSH_WAIT_S, interval_s=0.3)
        printed = json.loads(lines.get(timeout=PUSH_WAIT_S))
        assert printed["key"] == report.key
        assert printed["body"] == "sent while one was down"
        # every replica's copy, the restarted one's too, reached the watcher and was acked
        wait_until(lambda: all(not queued_keys(a, mailbox) for a in cluster.servers), timeout_s=PUSH_WAIT_S)
        _wait_for_note(notes, "following 3 of 3")
    finally:
        _stop_watching(watcher, pumps)
    rest = []
    while not lines.empty():
        rest.append(json.loads(lines.get_nowait()))
    assert [x["key"] for x in rest] == [], "a message was printed twice"


def test_watch_shows_what_its_homes_outbox_still_owes_until_delivered(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    """A send made with a replica down leaves a delivery owed; `watch` on that home says so, then delivers it."""
    cluster = replica_factory.cluster(2)
    down = cluster.replicas[1]
    down.kill()
    with Messenger(ClientConfig(servers=cluster.servers, data_dir=client_home, timeout_s=PUSH_WAIT_S)) as m:
        report = m.send(sender="ann@example.org", recipient="carol@example.org", body="owed", settle=True)
        assert m.outbox_owed() == (1, 0)
    watcher, pumps, _, notes = _start_watching(cluster.servers, client_home, "watcher@example.org")
    try:
        # not a push: the wait covers the watcher's start on a loaded machine
        owes = "following 1 of 2 replicas; down: " + down.address + "; outbox owes 1 delivery"
        _wait_for_note(notes, owes, timeout_s=PUSH_WAIT_S + BACKOFF_CAP_S)
        down.start()  # the watcher's own outbox loop hands it its copy (after a backoff of up to a minute)
        _wait_for_note(notes, "following 2 of 2 replicas\n", timeout_s=PUSH_WAIT_S + BACKOFF_CAP_S)
    finally:
        _stop_watching(watcher, pumps)
    assert queued_keys(down.address, "carol@example.org") == {report.key}


def _start_watching(
    servers: tuple[str, ...], home: Path, mailbox: str, *args: str
) -> tuple[subprocess.Popen[str], list[threading.Thread], queue.Queue[str], queue.Queue[str]]:
    """`messenger watch MAILBOX ARGS` on `home`; threads put its stdout lines and stderr notes in two queues."""
    env = {**os.environ, "MESSENGER_SERVERS": ",".join(servers), "MESSENGER_HOME": str(home)}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "grpc_messenger", "watch", mailbox, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue(maxsize=1000)
    notes: queue.Queue[str] = queue.Queue(maxsize=1000)

    def pump(stream: object, into: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.put(line, timeout=PUSH_WAIT_S)

    pumps = [
        threading.Thread(target=pump, args=(watcher.stdout, lines), daemon=True),
        threading.Thread(target=pump, args=(watcher.stderr, notes), daemon=True),
    ]
    for thread in pumps:
        thread.start()
    return watcher, pumps, lines, notes


def _stop_watching(watcher: subprocess.Popen[str], pumps: list[threading.Thread]) -> None:
    """Ctrl-C, as a person stops it (a kill if it does not stop), then the threads reading its output."""
    if watcher.poll() is None:
        watcher.send_signal(signal.SIGINT)
    try:
        watcher.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait(timeout=10)
    for thread in pumps:
        thread.join(timeout=5)


def _wait_for_note(notes: queue.Queue[str], text: str, *, timeout_s: float = PUSH_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            note = notes.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(note)
        if text in note:
            return
    raise AssertionError(f"watch never said {text!r}; it said {seen!r}")


def test_closing_the_messenger_ends_its_subscriptions(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    """A reader waiting on a subscription is let go, not left hanging, when the messenger closes."""

    async def run() -> None:
        m = AsyncMessenger(config(shared_cluster, client_home))
        async with m:
            subscription = m.subscribe(mailbox, options=FAST)
            waiting = asyncio.ensure_future(anext(subscription))
            await asyncio.sleep(0.2)
        assert subscription.closed
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, PUSH_WAIT_S)

    asyncio.run(asyncio.wait_for(run(), 60))


def test_a_token_for_another_address_is_refused_by_subscribe_and_by_the_web_sign_in(
    replica_factory: ReplicaFactory, client_home: Path, tmp_path: Path
) -> None:
    """Every replica refuses for good: subscribe raises instead of retrying; the checked sign-in shows nothing."""
    keys = make_keys(tmp_path / "keys")
    replica = replica_factory.replica(store="memory", extra_args=("--auth-public-key", str(keys.public_path)))
    wrong = ClientConfig(servers=(replica.address,), data_dir=client_home, token=keys.token("eve@example.org"))
    right = ClientConfig(servers=(replica.address,), data_dir=client_home, token=keys.token("bob@example.org"))

    async def run() -> None:
        async with AsyncMessenger(wrong) as m, m.subscribe("bob@example.org", options=FAST) as subscription:
            with pytest.raises(PermissionDenied):
                await asyncio.wait_for(anext(subscription), PUSH_WAIT_S)
            assert [s.refused for s in subscription.states()] == [True]
        sign_in = SignIn("bob@example.org", (replica.address,), token=wrong.token)
        with pytest.raises(PermissionDenied):
            await library_opener(wrong, check_token=True)(sign_in)
        session = await library_opener(right, check_token=True)(SignIn("bob@example.org", (replica.address,)))
        await session.close()

    asyncio.run(asyncio.wait_for(run(), 60))


@given(attempt=st.integers(min_value=0, max_value=10_000))
def test_resubscribe_backoff_grows_is_capped_and_jittered(attempt: int) -> None:
    options = SubscribeOptions(backoff_initial_s=0.1, backoff_max_s=2.0)
    ceiling_s = min(2.0, 0.1 * 2.0 ** min(attempt, 30))
    assert ceiling_s / 2 <= options.backoff_s(attempt) <= ceiling_s
