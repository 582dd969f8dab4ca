"""The middle pane: the open conversation, one block per message; the highlighted one is "in view"."""

from __future__ import annotations

from textual.widgets import OptionList
from textual.widgets.option_list import Option

from grpc_messenger.tui.conversations import Conversation, Entry
from grpc_messenger.tui.format import message_card, send_outcome


class MessageList(OptionList):
    """Messages of one conversation, oldest first; the newest is highlighted when new mail arrives."""

    BORDER_TITLE = "Messages"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.entries: list[Entry] = []

    def show(self, conversation: Conversation | None, *, follow: bool) -> None:
        """Redraw from `conversation`; with `follow`, highlight the newest message."""
        keep = self.highlighted
        self.entries = list(conversation.entries) if conversation else []
        self.clear_options()
        self.add_options(
            [
                Option(message_card(e.message, mine=e.mine, outcome=send_outcome(e.report) if e.report else ""))
                for e in self.entries
            ]
        )
        self.border_title = f"Messages with {conversation.correspondent}" if conversation else "Messages"
        if self.entries:
            last = len(self.entries) - 1
            self.highlighted = last if follow or keep is None else min(keep, last)

    def in_view(self) -> Entry | None:
        """The highlighted message, if any."""
        index = self.highlighted
        if index is None or not 0 <= index < len(self.entries):
            return None
        return self.entries[index]
