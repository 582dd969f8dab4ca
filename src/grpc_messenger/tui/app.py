"""`MessengerApp`: sign in, then the inbox. Keyboard-driven; F1 shows every key."""

from __future__ import annotations

from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from grpc_messenger.tui.screens.help import HelpScreen
from grpc_messenger.tui.screens.sign_in import SignInScreen
from grpc_messenger.tui.session import Session, SessionOpener, SignIn


class MessengerApp(App[None]):
    """The terminal app. `opener` turns a sign-in into a session (the library, or a stand-in in tests)."""

    CSS_PATH = "messenger.tcss"
    TITLE = "messenger"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help"),
        Binding("question_mark", "help", "Help", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, *, defaults: SignIn, opener: SessionOpener, require_token: bool = False) -> None:
        super().__init__()
        self._defaults = defaults
        self._opener = opener
        self._require_token = require_token
        self.session: Session | None = None

    def on_mount(self) -> None:
        self.push_screen(SignInScreen(self._defaults, self._open, require_token=self._require_token))

    async def _open(self, sign_in: SignIn) -> Session:
        # the app owns the session: it closes it when it stops, however it stops
        session = await self._opener(sign_in)
        self.session = session
        return session

    async def on_unmount(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    def action_help(self) -> None:
        """Show the keys (not over the help itself)."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
