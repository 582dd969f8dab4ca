"""The `messenger` command: a thin shell over the client library and the replica server.

Every failure is one clear line on stderr and a non-zero exit status
(2: bad input, 1: anything else), never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from grpc_messenger._version import __version__
from grpc_messenger.cli import cluster as local_cluster
from grpc_messenger.cli import render, security_cmds
from grpc_messenger.cli.settings import FileSettings, default_config_path, load_file, resolve_servers
from grpc_messenger.client.inbox import LocalInbox, default_data_dir
from grpc_messenger.client.sync import Messenger
from grpc_messenger.config import DEFAULT_PORTS, ClientConfig
from grpc_messenger.errors import InvalidInput, MessengerError
from grpc_messenger.launch import ServeProcess
from grpc_messenger.model import validate_address

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass(frozen=True, slots=True)
class Globals:
    """Options shared by the client commands."""

    servers: str | None
    file: FileSettings
    timeout_s: float | None
    home: Path | None
    token: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def client_config(self, *, write_quorum: int | None = None) -> ClientConfig:
        servers = resolve_servers(self.servers, self.file)
        return ClientConfig(
            servers=servers,
            write_quorum=write_quorum or self.file.write_quorum or 1,
            timeout_s=self.timeout_s or self.file.timeout_s or 5.0,
            data_dir=self.home or self.file.home or default_data_dir(),
            token=self.token or self.file.token or "",
            tls=self.tls or bool(self.file.tls),
            tls_ca=self.tls_ca or self.file.tls_ca,
            tls_client_cert=self.client_cert or self.file.client_cert,
            tls_client_key=self.client_key or self.file.client_key,
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="messenger")
@click.option(
    "--servers",
    envvar="MESSENGER_SERVERS",
    metavar="HOST:PORT,...",
    help="Replica addresses [env MESSENGER_SERVERS; default: the local cluster, 127.0.0.1:50051-50053].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (servers, write_quorum, timeout_s, home) [env MESSENGER_CONFIG].",
)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.01, max=300), help="Per-call deadline, seconds.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MESSENGER_HOME",
    help="Where the local inbox lives [env MESSENGER_HOME; default ~/.local/share/grpc-messenger].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level; logs go to stderr as key=value events [default: info for serve, cluster, chaos and "
    "bench; warning for the client commands, whose results are their output].",
)
@click.option(
    "--token",
    envvar="MESSENGER_TOKEN",
    metavar="TOKEN",
    help="Access token, sent as 'authorization: Bearer TOKEN' [env MESSENGER_TOKEN; config: token].",
)
@click.option("--tls", "use_tls", is_flag=True, envvar="MESSENGER_TLS", help="Use TLS, trusting the system CAs.")
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_TLS_CA",
    help="Use TLS, trusting this CA (e.g. messenger-data/tls/ca.pem) [env MESSENGER_TLS_CA].",
)
@click.option(
    "--client-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_CLIENT_CERT",
    help="Client certificate for mutual TLS (with --client-key) [env MESSENGER_CLIENT_CERT].",
)
@click.option(
    "--client-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_CLIENT_KEY",
    help="Client key for mutual TLS [env MESSENGER_CLIENT_KEY].",
)
@click.pass_context
def cli(
    ctx: click.Context,
    servers: str | None,
    config_path: Path | None,
    timeout_s: float | None,
    home: Path | None,
    log_level: str | None,
    token: str | None,
    use_tls: bool,
    tls_ca: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
) -> None:
    """grpc-messenger: send to N replicas at once, read from all, lose nothing."""
    if log_level is None:
        log_level = "info" if ctx.invoked_subcommand in _SERVICE_COMMANDS else "warning"
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("grpc").setLevel(logging.ERROR)
    file = load_file(config_path or default_config_path(), required=config_path is not None)
    ctx.obj = Globals(
        servers=servers,
        file=file,
        timeout_s=timeout_s,
        home=home,
        token=token,
        tls=use_tls,
        tls_ca=tls_ca,
        client_cert=client_cert,
        client_key=client_key,
    )
    ctx.meta["log_level"] = log_level


_SERVICE_COMMANDS = ("serve", "cluster", "chaos", "bench")


# --- servers ------------------------------------------------------------------


@cli.command()
@click.option("--replicas", "-n", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the replicas listen on.")
@click.option(
    "--base-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORTS[0],
    show_default=True,
    help="First port; replicas take consecutive ports (0: any free ports).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("messenger-data"),
    show_default=True,
    help="One sub-directory per replica.",
)
@click.option("--store", type=click.Choice(["sqlite", "memory"]), default="sqlite", show_default=True)
@click.option("--auth", is_flag=True, help="Require tokens (key pair under DATA_DIR/keys, made on first start).")
@click.option("--secure", is_flag=True, help="Require tokens and use TLS (dev CA under DATA_DIR/tls).")
@click.pass_context
def cluster(
    ctx: click.Context, replicas: int, host: str, base_port: int, data_dir: Path, store: str, auth: bool, secure: bool
) -> None:
    """Start a local cluster of N replicas; Ctrl-C stops them all cleanly."""
    specs = local_cluster.plan(replicas=replicas, host=host, base_port=base_port, data_dir=data_dir)
    extra, client_env = local_cluster.security_args(data_dir=data_dir, host=host, auth=auth, secure=secure)
    running = local_cluster.start(specs, store=store, log_level=ctx.meta["log_level"], extra=extra)
    servers = ",".join(replica.address for replica in running)
    mode = "auth + TLS" if secure else "auth" if auth else "no auth, no TLS"
    out.print(f"[green]local cluster of {replicas} replicas is up[/] (store: {store}, data: {data_dir}, {mode})")
    for replica in running:
        replica_id = replica.ready.replica_id if replica.ready is not None else "?"
        out.print(f"  {replica.name}  {replica.address}  pid {replica.pid}  id {replica_id}")
    default_note = (
        "   (this is also the default)" if (base_port, replicas) == (DEFAULT_PORTS[0], len(DEFAULT_PORTS)) else ""
    )
    out.print(f"clients: export MESSENGER_SERVERS={servers}{default_note}")
    for line in client_env:
        out.print(f"         {line}")
    if auth or secure:
        keys = data_dir / "keys" / "signing.key"
        out.print(f"         export MESSENGER_TOKEN=$(messenger token issue you@example.org --key {keys})")
    out.print("Ctrl-C stops every replica.")

    def on_exit(replica: ServeProcess, code: int) -> None:
        restart = local_cluster.restart_hint(replica)
        err.print(f"[yellow]{replica.name} exited (code {code})[/]; the others go on. Restart it with: {restart}")

    try:
        local_cluster.supervise(running, on_exit=on_exit)
    finally:
        codes = local_cluster.stop(running)
        out.print("stopped: " + ", ".join(f"{name} (code {code})" for name, code in codes.items()))


# --- clients --------------------------------------------------------------------


@cli.command()
@click.option("--from", "sender", required=True, metavar="ADDRESS", help="Your address.")
@click.option("--to", "recipient", required=True, metavar="ADDRESS", help="The recipient's address.")
@click.option("--quorum", "-w", type=click.IntRange(1, 9), help="Replicas that must store it before success [1].")
@click.option("--key", help="Message key, to retry a send safely (default: a new UUIDv7).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("text", required=False)
@click.pass_obj
def send(
    g: Globals, sender: str, recipient: str, quorum: int | None, key: str | None, as_json: bool, text: str | None
) -> None:
    """Send TEXT (or standard input, if TEXT is missing or "-") from one address to another."""
    if text is None or text == "-":
        if sys.stdin.isatty():
            err.print("[dim]reading the message from standard input; end it with Ctrl-D[/]")
        text = sys.stdin.read()
        text = text.removesuffix("\n")
    with Messenger(g.client_config(write_quorum=quorum)) as messenger:
        report = messenger.send(sender=sender, recipient=recipient, body=text, key=key, settle=True)
    if as_json:
        click.echo(render.to_json(render.send_report_dict(report)))
    else:
        render.print_send_report(out, report)


@cli.command()
@click.argument("address")
@click.option("--all", "show_all", is_flag=True, help="Show the local history instead of fetching new mail.")
@click.option("--peek", is_flag=True, help="Show what the replicas hold without storing or acking it.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="With --all: how many of the latest messages.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def inbox(g: Globals, address: str, show_all: bool, peek: bool, limit: int, as_json: bool) -> None:
    """Fetch new mail for ADDRESS from every replica, keep it locally, print it once."""
    validate_address(address, what="mailbox address")
    if show_all and peek:
        raise InvalidInput("--all and --peek exclude each other")
    config = g.client_config()
    if show_all:
        assert config.data_dir is not None
        local = LocalInbox.in_dir(config.data_dir)
        try:
            history = local.history(address, limit=limit)
        finally:
            local.close()
        if as_json:
            click.echo(render.to_json({"messages": [render.message_dict(m) for m in history]}))
        else:
            render.print_messages(out, history, empty=f"no messages for {address} in the local inbox")
        return
    with Messenger(config) as messenger:
        report = messenger.fetch(address) if peek else messenger.receive(address)
    if as_json:
        click.echo(render.to_json(render.read_report_dict(report)))
        return
    render.print_read_warnings(err, report)
    render.print_messages(out, report.messages, empty=f"no new messages for {address}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(g: Globals, as_json: bool) -> None:
    """Show each replica: reachable, healthy, how many messages, how fast. Exit 1 if none answers."""
    with Messenger(g.client_config()) as messenger:
        statuses = messenger.status()
    if as_json:
        click.echo(render.to_json(render.status_dict(statuses)))
    else:
        render.print_status(out, statuses)
    if not any(s.reachable for s in statuses):
        sys.exit(1)


cli.add_command(security_cmds.keys)
cli.add_command(security_cmds.token)
cli.add_command(security_cmds.certs)


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.pass_context
def outbox(ctx: click.Context, as_json: bool, limit: int) -> None:
    """Show deliveries the replicas are still owed (hinted hand-off); `outbox flush` pushes them now."""
    if ctx.invoked_subcommand is not None:
        return
    g: Globals = ctx.obj
    with Messenger(g.client_config()) as messenger:
        counts = messenger.outbox_owed()
        owed = messenger.outbox_listing(limit=limit)
    if as_json:
        click.echo(
            render.to_json({"owed": counts[0], "expired": counts[1], "deliveries": [render.owed_dict(d) for d in owed]})
        )
    else:
        render.print_outbox(out, owed, counts)


@outbox.command("flush")
@click.pass_obj
def outbox_flush(g: Globals) -> None:
    """Try every owed delivery now; exit 1 if some replica still lacks a message."""
    with Messenger(g.client_config()) as messenger:
        remaining = messenger.flush_outbox()
        _, expired = messenger.outbox_owed()
    if remaining:
        err.print(
            f"[yellow]{remaining} deliveries still owed[/] (replicas unreachable?); they are retried in the background"
        )
        sys.exit(1)
    out.print("[green]outbox flushed[/]: nothing owed" + (f", {expired} expired (under-replicated)" if expired else ""))


def main() -> None:
    """Entry point: run the CLI, turn our errors into one line and an exit status."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InvalidInput as exc:
        err.print(f"[red]error[/]: {exc}")
        sys.exit(2)
    except MessengerError as exc:
        err.print(f"[red]error[/]: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


from grpc_messenger.bench.command import bench  # noqa: E402  (registered last: keeps merges easy)
from grpc_messenger.cli.chaos import chaos_command  # noqa: E402
from grpc_messenger.cli.config_cmd import config_group  # noqa: E402
from grpc_messenger.cli.serve import serve  # noqa: E402

cli.add_command(chaos_command)
cli.add_command(bench)
cli.add_command(serve)
cli.add_command(config_group)
