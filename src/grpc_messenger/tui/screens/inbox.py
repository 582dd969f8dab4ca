"""The main screen: conversations, the open conversation, writing, and the replicas.

Every network call runs in a worker (history, the live stream, sends, replica
checks), so the screen never waits on a replica, however many are down.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, OptionList

from grpc_messenger.errors import MessengerError
from grpc_messenger.model import Message, ReplicaStatus, normalize_address
from grpc_messenger.tui.conversations import Conversations
from grpc_messenger.tui.format import replicas_summary, send_outcome
from grpc_messenger.tui.session import Session
from grpc_messenger.tui.widgets.compose_box import ComposeBox
from grpc_messenger.tui.widgets.conversation_list import ConversationList
from grpc_messenger.tui.widgets.message_list import MessageList
from grpc_messenger.tui.widgets.replica_panel import ReplicaPanel
from grpc_messenger.tui.widgets.status_line import StatusLine

log = logging.getLogger(__name__)

# how often the replicas are checked (latency, up/down, outbox)
STATUS_EVERY_S = 2.0


class InboxScreen(Screen[None]):
    """Conversations by correspondent, live updates, compose and reply, replica panel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new", "New"),
        Binding("r", "reply", "Reply"),
        # not a priority binding: it then waits behind the keys typed before it, none is left out
        Binding("ctrl+s", "send", "Send"),
        Binding("escape", "back", "Back"),
        Binding("ctrl+r", "toggle_replicas", "Replicas"),
        Binding("f5", "check_replicas", "Check", show=False),
    ]

    def __init__(self, session: Session, *, check_every_s: float = STATUS_EVERY_S) -> None:
        super().__init__()
        self.session = session
        self.conversations = Conversations(session.address)
        self.open_with: str | None = None
        self._statuses: list[ReplicaStatus] | None = None
        self._last_send = ""
        self._check_every_s = check_every_s

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusLine(id="status-line")
        with Horizontal(id="panes"):
            yield ConversationList(id="conversations")
            with Vertical(id="middle"):
                yield MessageList(id="messages")
                yield ComposeBox(id="compose")
            yield ReplicaPanel(id="replicas")
        yield Footer()

    def on_mount(self) -> None:
        self.app.sub_title = self.session.address
        self.query_one(ConversationList).focus()
        self._redraw_replicas()
        self._start()
        self.set_interval(self._check_every_s, self.action_check_replicas)

    @work(group="history", exit_on_error=False)
    async def _start(self) -> None:
        # history first, then the live stream: a message in both is filed once
        try:
            for message in await self.session.history():
                self.conversations.add(message, unread=False)
        except MessengerError as exc:
            self._say(f"local inbox unreadable: {exc}")
        ordered = self.conversations.ordered()
        if ordered and self.open_with is None:
            self.open_with = ordered[0].correspondent  # open the latest conversation
            self._redraw_messages(follow=True)
        self._redraw_conversations()
        self._follow()
        self.action_check_replicas()

    @work(group="live", exclusive=True, exit_on_error=False)
    async def _follow(self) -> None:
        try:
            async for message in self.session.incoming():
                self._file(message)
        except MessengerError as exc:
            self._say(f"the replicas refuse to deliver: {exc}")
        except Exception as exc:  # the screen stays up and says so, whatever broke below it
            log.exception("event=tui.live_failed")
            self._say(f"live updates stopped: {exc}; sign in again to resume")

    def _file(self, message: Message) -> None:
        name = normalize_address(message.sender)
        if self.open_with is None:
            self.open_with = name  # the first conversation opens by itself
        conversation = self.conversations.add(message, unread=self.open_with != name)
        if conversation is None:
            return
        self._redraw_conversations()
        if self.open_with == conversation.correspondent:
            self._redraw_messages(follow=True)

    # --- actions ------------------------------------------------------------------

    def action_new(self) -> None:
        """Write to someone new."""
        self.query_one(ComposeBox).start("")

    def action_reply(self) -> None:
        """Write in the open conversation."""
        self.query_one(ComposeBox).start(self.open_with or "")

    def action_back(self) -> None:
        """Back to the conversations."""
        self.query_one(ConversationList).focus()

    def action_toggle_replicas(self) -> None:
        """Show or hide the replica panel."""
        panel = self.query_one(ReplicaPanel)
        panel.display = not panel.display

    def action_send(self) -> None:
        """Send what is in the compose box."""
        recipient, body = self.query_one(ComposeBox).draft()
        if not recipient:
            self._say_send("not sent: give a recipient")
            self.query_one(ComposeBox).start("")
            return
        if not body.strip():
            self._say_send("not sent: the message is empty")
            return
        self.query_one(ComposeBox).clear_body()
        self._say_send(f"sending to {recipient}…")
        self._send(recipient, body)

    @work(group="send", exit_on_error=False)
    async def _send(self, recipient: str, body: str) -> None:
        try:
            message, report = await self.session.send(recipient, body)
        except MessengerError as exc:
            self._say_send(f"not sent: {exc}")
            return
        except Exception as exc:  # never crash the app over one send
            log.exception("event=tui.send_failed")
            self._say_send(f"not sent: {exc}")
            return
        conversation = self.conversations.add(message, unread=False, report=report)
        self._say_send(send_outcome(report))
        if conversation is not None:
            self.open_with = conversation.correspondent
            self._redraw_conversations()
            self._redraw_messages(follow=True)

    def action_check_replicas(self) -> None:
        """Ask every replica how it is (in a worker; the previous check is dropped)."""
        self._check()

    @work(group="status", exclusive=True, exit_on_error=False)
    async def _check(self) -> None:
        try:
            self._statuses = await self.session.status()
            owed: int | None = await self.session.outbox_owed()
        except MessengerError as exc:
            log.info("event=tui.status_failed error=%r", str(exc))
            owed = None
        self._redraw_replicas(owed=owed)

    # --- events --------------------------------------------------------------------

    @on(OptionList.OptionHighlighted, "#conversations")
    def _open(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if name is None or name == self.open_with:
            return
        self.open_with = name
        self.conversations.mark_read(name)
        self._redraw_conversations()
        self._redraw_messages(follow=True)

    @on(OptionList.OptionSelected, "#conversations")
    def _enter(self, event: OptionList.OptionSelected) -> None:
        self.query_one(MessageList).focus()

    @on(OptionList.OptionHighlighted, "#messages")
    def _in_view(self, event: OptionList.OptionHighlighted) -> None:
        self._redraw_in_view()

    # --- drawing --------------------------------------------------------------------

    def _redraw_conversations(self) -> None:
        self.query_one(ConversationList).show(self.conversations.ordered(), selected=self.open_with)

    def _redraw_messages(self, *, follow: bool) -> None:
        conversation = self.conversations.get(self.open_with) if self.open_with else None
        self.query_one(MessageList).show(conversation, follow=follow)
        if conversation is not None:
            self.query_one(ComposeBox).set_recipient(conversation.correspondent)
        self._redraw_in_view()

    def _redraw_in_view(self) -> None:
        entry = self.query_one(MessageList).in_view()
        total = len(self.session.servers)
        if entry is None:
            text = "message in view: none"
        elif entry.report is not None:
            text = f"message in view: {send_outcome(entry.report)}"
        elif entry.mine:
            text = "message in view: sent by you"
        elif copies := self.session.delivered_by(entry.message.key):
            text = f"message in view: delivered by {copies} of {total} replicas, kept here, acked there"
        else:
            text = "message in view: in your local inbox (acked on the replicas)"
        self.query_one(ReplicaPanel).show_in_view(text)

    def _redraw_replicas(self, *, owed: int | None = None) -> None:
        streams = self.session.streams()
        panel = self.query_one(ReplicaPanel)
        panel.show(self.session.servers, self._statuses, streams)
        panel.show_outbox(owed)
        self._redraw_in_view()
        sentence, severity = replicas_summary(self._statuses)
        self.query_one(StatusLine).show(sentence, severity, last_send=self._last_send)

    def _say_send(self, text: str) -> None:
        self._last_send = text
        sentence, severity = replicas_summary(self._statuses)
        self.query_one(StatusLine).show(sentence, severity, last_send=text)

    def _say(self, text: str) -> None:
        self.query_one(StatusLine).show(text, "down", last_send=self._last_send)
