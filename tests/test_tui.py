"""The terminal app, driven headless with Textual's pilot: live between two instances, through a kill; snapshots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from grpc_messenger.config import ClientConfig
from grpc_messenger.model import Message, ReplicaOutcome, ReplicaState, SendReport
from grpc_messenger.server.subscriptions import HEARTBEAT_S
from grpc_messenger.tui.app import MessengerApp
from grpc_messenger.tui.conversations import Conversations
from grpc_messenger.tui.format import message_card, send_outcome
from grpc_messenger.tui.screens.help import HelpScreen
from grpc_messenger.tui.screens.inbox import InboxScreen
from grpc_messenger.tui.session import LibrarySession, SignIn, library_opener
from grpc_messenger.tui.widgets.message_list import MessageList
from grpc_messenger.tui.widgets.replica_panel import ReplicaPanel
from grpc_messenger.tui.widgets.status_line import StatusLine
from tests.conftest import ReplicaFactory
from tests.tui_support import ME, SERVERS, FakeSession, msg

SIZE = (120, 32)
# a wait for something on screen returns as soon as it shows; the bound is for a loaded machine
WAIT_S = 60.0
RUN_S = 100.0  # one whole app run, inside pytest's own timeout
PUSH_S = 0.8 * HEARTBEAT_S  # under the replicas' heartbeat, at which a stream re-reads the store anyway


async def wait_for(pilot: Pilot[None], condition: object, *, timeout_s: float = WAIT_S) -> float:
    """Let the app run until `condition()` holds; return how long it took."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await pilot.pause(0.02)
    return time.monotonic() - started


async def sign_in(pilot: Pilot[None]) -> InboxScreen:
    await pilot.press("enter")  # address and replicas are filled in from the defaults
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, InboxScreen))
    screen = pilot.app.screen
    assert isinstance(screen, InboxScreen)
    return screen


def status_text(screen: InboxScreen) -> str:
    return str(screen.query_one(StatusLine).render())


def test_two_apps_talk_live_and_the_panel_shows_a_killed_replica(
    replica_factory: ReplicaFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ann types a message, Bob's app shows it pushed, with no refresh; then a replica dies mid-session."""
    cluster = replica_factory.cluster(3)
    history_reads: list[str] = []
    read_history = LibrarySession.history

    async def counted_history(self: LibrarySession) -> list[Message]:
        history_reads.append(self.address)
        return await read_history(self)

    monkeypatch.setattr(LibrarySession, "history", counted_history)

    def app(address: str, home: str) -> MessengerApp:
        # a deadline no send of a loaded machine reaches: a replica killed is refused at once
        config = ClientConfig(servers=cluster.servers, data_dir=tmp_path / home, timeout_s=30.0)
        return MessengerApp(defaults=SignIn(address, cluster.servers), opener=library_opener(config))

    ann, bob = app("ann@example.org", "ann"), app("bob@example.org", "bob")

    async def run() -> None:
        async with ann.run_test(size=SIZE) as pa, bob.run_test(size=SIZE) as pb:
            ann_screen, bob_screen = await sign_in(pa), await sign_in(pb)
            await wait_for(pb, lambda: all(s.connected for s in bob_screen.session.streams()))
            await pa.press("n", *"bob@example.org", "tab", *"hello bob", "enter", *"second line", "ctrl+s")
            await wait_for(pa, lambda: "last send: stored on 3/3" in status_text(ann_screen))
            # pushed: shown within less than a heartbeat, and Bob's app read its history once, at
            # sign-in (before Ann wrote), and was asked nothing since
            await wait_for(pb, lambda: bob_screen.conversations.get("ann@example.org") is not None, timeout_s=PUSH_S)
            assert history_reads.count("bob@example.org") == 1
            entry = bob_screen.query_one(MessageList).in_view()
            assert entry is not None
            assert entry.message.body == "hello bob\nsecond line"

            cluster.replicas[0].kill()
            await pa.press("f5")
            await wait_for(pa, lambda: "2 of 3 replicas up" in status_text(ann_screen))
            table = ann_screen.query_one(ReplicaPanel).query_one("#replica-table")
            assert "down" in str(table.get_row_at(0)[1])  # type: ignore[attr-defined]
            # still working with a replica down: the reply arrives, the outcome says what is owed
            await pb.press("r", *"got it", "ctrl+s")
            await wait_for(pb, lambda: "last send: stored on 2/3, 1 owed" in status_text(bob_screen))
            await wait_for(pa, lambda: len(ann_screen.conversations.get("bob@example.org").entries) == 2)  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(run(), RUN_S))
    # both sessions closed when their apps stopped
    assert ann.session is None
    assert bob.session is None


# --- what each screen looks like (fixed values, fixed size, UTC) -----------------------


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def fake_app(session: FakeSession) -> MessengerApp:
    async def opener(_: SignIn) -> FakeSession:
        return session

    return MessengerApp(defaults=SignIn(ME, SERVERS), opener=opener)  # type: ignore[arg-type]


async def steady(pilot: Pilot[None]) -> None:
    """No blinking cursors: a snapshot must not depend on when it was taken."""
    for widget in pilot.app.screen.query("Input, TextArea"):
        widget.cursor_blink = False  # type: ignore[attr-defined]
    await pilot.pause()


async def settled(pilot: Pilot[None]) -> None:
    screen = await sign_in(pilot)
    await wait_for(pilot, lambda: screen.conversations.get("dave@example.org") is not None)
    await wait_for(pilot, lambda: screen._statuses is not None)
    await steady(pilot)


def test_snapshot_sign_in(snap_compare: object, utc: None) -> None:
    assert snap_compare(fake_app(FakeSession()), terminal_size=SIZE, run_before=steady)  # type: ignore[operator]


def test_snapshot_inbox(snap_compare: object, utc: None) -> None:
    """Conversations by correspondent with unread counts; the first conversation open."""
    assert snap_compare(fake_app(FakeSession()), terminal_size=SIZE, run_before=settled)  # type: ignore[operator]


def test_snapshot_conversation(snap_compare: object, utc: None) -> None:
    """A conversation with a multi-line body whose terminal codes are shown escaped."""

    async def run_before(pilot: Pilot[None]) -> None:
        await settled(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, InboxScreen)
        assert screen.open_with == "alice@example.org"  # the latest conversation of the history opened itself
        await pilot.press("enter")  # into its messages
        await wait_for(pilot, lambda: isinstance(pilot.app.focused, MessageList))
        await pilot.press("up")  # the message in view: alice's question
        await steady(pilot)

    assert snap_compare(fake_app(FakeSession()), terminal_size=SIZE, run_before=run_before)  # type: ignore[operator]


def test_snapshot_replicas_with_two_down(snap_compare: object, utc: None) -> None:
    """One replica of three up: the app says so plainly, and a send says what is owed."""

    async def run_before(pilot: Pilot[None]) -> None:
        await settled(pilot)
        await pilot.press("r", *"still here?", "ctrl+s")
        screen = pilot.app.screen
        assert isinstance(screen, InboxScreen)
        await wait_for(pilot, lambda: "2 owed" in status_text(screen))
        await steady(pilot)

    session = FakeSession(up=(True, False, False), owed=2)
    assert snap_compare(fake_app(session), terminal_size=SIZE, run_before=run_before)  # type: ignore[operator]


def test_help_opens_from_anywhere_and_closes_with_escape(utc: None) -> None:
    """F1 shows every key over the current screen; esc goes back to where you were."""
    session = FakeSession()

    async def run() -> None:
        app = fake_app(session)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await settled(pilot)
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, InboxScreen)
        assert session.closed

    asyncio.run(asyncio.wait_for(run(), RUN_S))


# --- the view model and texts, without a screen ---------------------------------------


def test_conversations_group_by_correspondent_count_unread_and_file_each_key_once() -> None:
    convs = Conversations("Bob@Example.org")
    a1 = msg(1, "alice@example.org", ME, "hi")
    assert convs.add(a1, unread=False) is not None
    assert convs.add(a1, unread=True) is not None  # history, then the stream: now it counts as unread
    assert convs.add(a1, unread=True) is None
    convs.add(msg(2, ME, "Alice@example.org", "hello"), unread=True)
    convs.add(msg(3, "carol@example.org", ME, "lunch?"), unread=True)
    assert [c.correspondent for c in convs.ordered()] == ["carol@example.org", "alice@example.org"]
    alice = convs.get("alice@example.org")
    assert alice is not None
    assert [e.mine for e in alice.entries] == [False, True]
    assert alice.unread == 1  # my own message is never unread
    assert convs.unread_total == 2
    convs.mark_read("alice@example.org")
    assert convs.unread_total == 1


def test_send_outcome_and_cards_read_plainly() -> None:
    def report(*states: ReplicaState) -> SendReport:
        outcomes = tuple(ReplicaOutcome(f"r{i}", s) for i, s in enumerate(states))
        return SendReport(key="k", write_quorum=1, replicas=outcomes)

    stored, failed = ReplicaState.STORED, ReplicaState.FAILED
    assert send_outcome(report(stored, stored, stored)) == "stored on 3/3"
    assert send_outcome(report(stored, stored, failed)) == "stored on 2/3, 1 owed"
    assert send_outcome(report(ReplicaState.FAILED, ReplicaState.PENDING)) == "not stored yet: 0/2, 2 owed"
    card = message_card(msg(1, "eve@example.org", ME, "\x1b]0;pwned\x07\x1b[2J"))
    assert "\x1b" not in card.plain
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in card.plain
