"""The left pane: one line per correspondent, newest activity first, with unread counts."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from grpc_messenger.tui.conversations import Conversation
from grpc_messenger.tui.format import shown


class ConversationList(OptionList):
    """Correspondents; highlighting one opens the conversation."""

    BORDER_TITLE = "Conversations"

    def show(self, conversations: list[Conversation], *, selected: str | None) -> None:
        """Redraw from `conversations`, keeping `selected` highlighted."""
        self.clear_options()
        self.add_options([Option(_label(c), id=c.correspondent) for c in conversations])
        names = [c.correspondent for c in conversations]
        if selected in names:
            self.highlighted = names.index(selected)
        unread = sum(c.unread for c in conversations)
        self.border_subtitle = f"{unread} unread" if unread else ""


def _label(conversation: Conversation) -> Text:
    label = Text(shown(conversation.correspondent), overflow="ellipsis", no_wrap=True)
    if conversation.unread:
        label.stylize("bold")
        label.append(f"  ({conversation.unread})", style="bold")
    return label
