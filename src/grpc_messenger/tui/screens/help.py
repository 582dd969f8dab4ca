"""The help screen: every key the app answers to."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# Keys

| key | where | what |
| --- | --- | --- |
| `n` | inbox | write a new message (recipient first) |
| `r` | inbox | reply to the open conversation |
| `ctrl+s` | writing | send (the outcome shows in the status line: "stored on 3/3", "2/3, 1 owed") |
| `esc` | anywhere | back to the conversations |
| `tab` / `shift+tab` | anywhere | next / previous pane |
| `up` / `down` | lists | move; the highlighted message is the one "in view" |
| `ctrl+r` | inbox | show or hide the replica panel |
| `f5` | inbox | check the replicas now (they are checked every few seconds anyway) |
| `ctrl+p` | anywhere | command palette: themes, quit, ... |
| `f1` / `?` | anywhere | this help |
| `ctrl+q` | anywhere | quit |

New mail appears as it arrives on any replica, each message once. With some
replicas down the app keeps working: sends are stored on the replicas that are
up and delivered to the others when they return (the outbox).
"""


class HelpScreen(ModalScreen[None]):
    """A modal over the current screen; any of esc, q, f1 closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("f1", "dismiss", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Markdown(HELP)
