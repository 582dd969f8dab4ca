"""The first screen: your address, the replicas (from config or env by default), a token when auth is on."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Static

from grpc_messenger.display import escape_control
from grpc_messenger.errors import MessengerError
from grpc_messenger.tui.session import SessionOpener, SignIn, parse_servers


class SignInScreen(Screen[None]):
    """Collects a `SignIn`, opens the session in a worker, then shows the inbox."""

    def __init__(self, defaults: SignIn, opener: SessionOpener, *, require_token: bool) -> None:
        super().__init__()
        self._defaults = defaults
        self._opener = opener
        self._require_token = require_token

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="sign-in"):
            yield Static("Sign in", id="sign-in-title")
            yield Label("Your address")
            yield Input(value=self._defaults.address, placeholder="you@example.org", id="address")
            yield Label("Replicas (HOST:PORT, comma-separated)")
            yield Input(value=",".join(self._defaults.servers), id="servers")
            token_hint = "required: paste your token" if self._require_token else "only if the replicas require one"
            yield Label(f"Token ({token_hint})")
            yield Input(value=self._defaults.token, password=True, placeholder="token", id="token")
            yield Button("Sign in", variant="primary", id="sign-in-button")
            yield Static(id="sign-in-error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#address", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "address" and not self.query_one("#servers", Input).value.strip():
            self.query_one("#servers", Input).focus()
            return
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._submit()

    def _submit(self) -> None:
        sign_in = SignIn(
            address=self.query_one("#address", Input).value.strip(),
            servers=parse_servers(self.query_one("#servers", Input).value),
            token=self.query_one("#token", Input).value.strip(),
        )
        if not sign_in.address:
            self.show_error("give your address")
            return
        if self._require_token and not sign_in.token:
            self.show_error("this app requires a token: paste the one issued for your address")
            return
        self.show_error("signing in…")
        self._open(sign_in)

    @work(exclusive=True, group="sign-in", exit_on_error=False)
    async def _open(self, sign_in: SignIn) -> None:
        from grpc_messenger.tui.screens.inbox import InboxScreen  # the next screen

        try:
            session = await self._opener(sign_in)
        except MessengerError as exc:
            self.show_error(str(exc))
            return
        self.app.switch_screen(InboxScreen(session))

    def show_error(self, text: str) -> None:
        """One line under the form (plain text: it may quote what was typed)."""
        self.query_one("#sign-in-error", Static).update(Text(escape_control(text)))
