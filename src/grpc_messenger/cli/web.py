"""`messenger web`: the terminal app as a web page (textual-serve), one app process per browser tab.

Bound to loopback by default. Beyond loopback it is refused unless `--auth`:
then every visitor signs in with their own token, which the replicas check
before the app shows anything, and no token of this host is ever offered.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Protocol

import click

from grpc_messenger.config import ClientConfig, parse_listen
from grpc_messenger.errors import InvalidInput
from grpc_messenger.security.exposure import is_loopback


class _Settings(Protocol):
    def client_config(self, *, write_quorum: int | None = None) -> ClientConfig: ...


@click.command("web")
@click.option(
    "--listen",
    default="127.0.0.1:8000",
    show_default=True,
    metavar="HOST:PORT",
    envvar="MESSENGER_WEB_LISTEN",
    help="Where the web page is served [env MESSENGER_WEB_LISTEN].",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Every visitor signs in with their own token, checked with the replicas (needed beyond loopback).",
)
@click.option("--insecure", is_flag=True, help="Serve beyond loopback without --auth (anyone reaching it is you).")
@click.option("--public-url", metavar="URL", help="The URL browsers use, when behind a proxy (e.g. https://...).")
@click.pass_obj
def web(g: _Settings, listen: str, auth: bool, insecure: bool, public_url: str | None) -> None:
    """Serve the terminal app as a web page; each browser tab runs its own app.

    The page is plain HTTP: beyond this host, put it behind a TLS proxy and use
    --auth with --public-url. Local inbox and outbox live in --home, as for
    every client command.
    """
    host, port = parse_listen(listen)
    warning = check_web_exposure(host, auth=auth, insecure=insecure)
    try:
        from textual_serve.server import Server
    except ImportError as exc:
        raise InvalidInput(f"messenger web needs the tui extra: pip install 'grpc-messenger[tui]' ({exc})") from exc
    config = g.client_config()
    if auth:
        os.environ.pop("MESSENGER_TOKEN", None)  # never offered to a visitor
    elif config.token:
        os.environ["MESSENGER_TOKEN"] = config.token  # to the app processes, kept off their command line
    if warning:
        click.echo(warning, err=True)
    command = app_command(config, require_token=auth)
    server = Server(command, host=host, port=port, title="messenger", public_url=public_url)
    server.serve()


def check_web_exposure(host: str, *, auth: bool, insecure: bool) -> str | None:
    """Refuse a non-loopback address without --auth; return a warning if --insecure forces it."""
    if is_loopback(host) or auth:
        return None
    if not insecure:
        raise InvalidInput(
            f"refusing to serve the web app on {host} without --auth: anyone who can reach it could read and send "
            "as the addresses this host holds. Listen on 127.0.0.1, add --auth (visitors sign in with their own "
            "token), or pass --insecure to accept the risk"
        )
    return f"INSECURE: serving the web app on {host} without --auth (--insecure)"


def app_command(config: ClientConfig, *, require_token: bool) -> str:
    """The shell command textual-serve runs per browser tab: `messenger tui` with this client's settings."""
    args = [sys.executable, "-m", "grpc_messenger", "--servers", ",".join(config.servers)]
    args += ["--timeout", repr(config.timeout_s)]
    if config.data_dir is not None:
        args += ["--home", str(config.data_dir)]
    if config.tls:
        args.append("--tls")
    if config.tls_ca is not None:
        args += ["--tls-ca", str(config.tls_ca)]
    if config.tls_client_cert is not None and config.tls_client_key is not None:
        args += ["--client-cert", str(config.tls_client_cert), "--client-key", str(config.tls_client_key)]
    args.append("tui")
    if require_token:
        args.append("--require-token")
    return shlex.join(args)
