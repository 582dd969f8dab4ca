"""`messenger tui`: the terminal app (needs the `tui` extra: pip install 'grpc-messenger[tui]')."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Protocol

import click

from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import InvalidInput

TUI_LOG_FILE = "tui.log"


class _Settings(Protocol):
    def client_config(self, *, write_quorum: int | None = None) -> ClientConfig: ...


@click.command("tui")
@click.option(
    "--address", envvar="MESSENGER_ADDRESS", default="", help="Your address, filled in on the sign-in screen."
)
@click.option(
    "--require-token",
    is_flag=True,
    help="Sign-in needs a token typed in, never one from the config or environment (`messenger web --auth`).",
)
@click.pass_obj
def tui(g: _Settings, address: str, require_token: bool) -> None:
    """The terminal app: conversations, live mail, compose and reply, and the replicas as you use them.

    Replicas and token come from the usual options, config and environment and
    can be changed on the sign-in screen. F1 shows every key.
    """
    run_app(g.client_config(), address=address, require_token=require_token)


def run_app(config: ClientConfig, *, address: str, require_token: bool) -> None:
    """Run the app in this terminal until it quits."""
    try:
        from grpc_messenger.tui.app import MessengerApp
        from grpc_messenger.tui.session import SignIn, library_opener
    except ImportError as exc:
        raise InvalidInput(f"the terminal app needs the tui extra: pip install 'grpc-messenger[tui]' ({exc})") from exc
    if require_token:
        config = dataclasses.replace(config, token="")
    _log_to_file(config.data_dir)
    defaults = SignIn(address=address, servers=config.servers, token=config.token)
    opener = library_opener(config, check_token=require_token)
    MessengerApp(defaults=defaults, opener=opener, require_token=require_token).run()


def _log_to_file(data_dir: Path | None) -> None:
    # log lines on stderr would scribble over the screen: send them to a file instead
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if data_dir is None:
        root.addHandler(logging.NullHandler())
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(data_dir / TUI_LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root.addHandler(handler)
