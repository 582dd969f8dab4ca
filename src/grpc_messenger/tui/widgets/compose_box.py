"""The bottom pane: recipient and a multi-line body; Ctrl+S sends."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, TextArea


class ComposeBox(Vertical):
    """Where a message is written."""

    BORDER_TITLE = "Write"
    BORDER_SUBTITLE = "ctrl+s send · esc back"

    def compose(self) -> ComposeResult:
        yield Input(placeholder="to: name@example.org", id="to")
        yield TextArea(id="body", soft_wrap=True, show_line_numbers=False, tab_behavior="focus")

    def draft(self) -> tuple[str, str]:
        """(recipient, body) as typed."""
        return self.query_one("#to", Input).value.strip(), self.query_one("#body", TextArea).text

    def clear_body(self) -> None:
        """Empty the body after a send."""
        self.query_one("#body", TextArea).clear()

    def set_recipient(self, recipient: str) -> None:
        """Address the message to `recipient` without moving the focus."""
        self.query_one("#to", Input).value = recipient

    def start(self, recipient: str) -> None:
        """Address a message to `recipient` ("" for a new one) and focus where to type next."""
        self.query_one("#to", Input).value = recipient
        (self.query_one("#body", TextArea) if recipient else self.query_one("#to", Input)).focus()
