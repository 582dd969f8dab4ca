"""The `messenger` command: a thin shell over the client library and the replica server.

Every failure is one clear line on stderr and a documented exit status
(cli/exit_codes.py, listed in `messenger --help`), never a traceback.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import Progress

from grpc_messenger import logs
from grpc_messenger._version import __version__
from grpc_messenger.cli import bulk, exit_codes, render, security_cmds
from grpc_messenger.cli import cluster as local_cluster
from grpc_messenger.cli.diagnose import tls_hint
from grpc_messenger.cli.local_files import LocalDataError, check_home
from grpc_messenger.cli.outbox_cmds import outbox
from grpc_messenger.cli.session import client_session
from grpc_messenger.cli.settings import Globals, client_default, default_config_path, home_of, load_file
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.config import DEFAULT_PORTS, DEFAULT_SERVERS, ClientConfig
from grpc_messenger.errors import InvalidInput, MessengerError
from grpc_messenger.launch import ServeProcess
from grpc_messenger.model import QuorumNotReached, SendReport, new_key, validate_address

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=exit_codes.HELP)
@click.version_option(__version__, prog_name="messenger")
@click.option(
    "--servers",
    envvar="MESSENGER_SERVERS",
    metavar="HOST:PORT,...",
    help="Replica addresses, comma-separated [env MESSENGER_SERVERS; config: servers; default: the local "
    f"cluster, {','.join(DEFAULT_SERVERS)}].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (servers, write_quorum, timeout_s, home, token, tls, tls_ca, client_cert, "
    "client_key) [env MESSENGER_CONFIG; default ~/.config/grpc-messenger/config.toml].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.01, max=300),
    help=f"Per-call deadline, seconds [config: timeout_s; default {client_default('timeout_s')}].",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MESSENGER_HOME",
    help="Where the local inbox and outbox live [env MESSENGER_HOME; config: home; "
    "default $XDG_DATA_HOME/grpc-messenger, i.e. ~/.local/share/grpc-messenger].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level; logs go to stderr as key=value events [default: info for serve, cluster, chaos and "
    "bench; error for the client commands, whose results and failures are their output].",
)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="kv",
    envvar="MESSENGER_LOG_FORMAT",
    show_default=True,
    help="Log lines as key=value events or as one JSON object each [env MESSENGER_LOG_FORMAT].",
)
@click.option(
    "--token",
    envvar="MESSENGER_TOKEN",
    metavar="TOKEN",
    help="Access token, sent as 'authorization: Bearer TOKEN' [env MESSENGER_TOKEN; config: token].",
)
@click.option(
    "--tls", "use_tls", is_flag=True, envvar="MESSENGER_TLS", help="Use TLS, trusting the system CAs [config: tls]."
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="MESSENGER_TLS_CA",
    help="Use TLS, trusting this CA (e.g. messenger-data/tls/ca.pem) [env MESSENGER_TLS_CA; config: tls_ca].",
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
    log_format: str,
    token: str | None,
    use_tls: bool,
    tls_ca: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
) -> None:
    """grpc-messenger: send to N replicas at once, read from all, lose nothing.

    Shell completion: eval "$(_MESSENGER_COMPLETE=bash_source messenger)" in ~/.bashrc
    (zsh_source, fish_source for the other shells).
    """
    if log_level is None:
        log_level = "info" if ctx.invoked_subcommand in _SERVICE_COMMANDS else "error"
    logs.configure(level=log_level, log_format=log_format)
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
@click.option("--replicas", "-n", type=click.IntRange(1, 9), default=3, show_default=True, help="How many replicas.")
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
@click.option(
    "--store",
    type=click.Choice(["sqlite", "memory"]),
    default="sqlite",
    show_default=True,
    help="Store of every replica (sqlite: durable; memory: lost on exit).",
)
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
    is_default = (base_port, replicas) == (DEFAULT_PORTS[0], len(DEFAULT_PORTS))
    default_note = "   (this is also the default)" if is_default else ""
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
@click.option(
    "--to",
    "recipient",
    metavar="ADDRESS",
    help="The recipient's address (required, except with --jsonl lines that each name one).",
)
@click.option(
    "--quorum",
    "-w",
    type=click.IntRange(1, 9),
    help=f"Replicas that must store it before success [config: write_quorum; default "
    f"{client_default('write_quorum')}].",
)
@click.option("--key", help="Message key, to resend safely (default: a new UUIDv7, printed on failure).")
@click.option(
    "--file",
    "lines_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Send one message per line of this file (blank lines skipped), in batches.",
)
@click.option(
    "--jsonl",
    "jsonl_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='Send one message per JSON line of this file: {"to": ..., "body": ..., "key": ...} ("key" optional; '
    '"to" defaults to --to).',
)
@click.option("--json", "as_json", is_flag=True, help="Print the report (or the bulk summary) as JSON.")
@click.argument("text", required=False)
@click.pass_obj
def send(
    g: Globals,
    sender: str,
    recipient: str | None,
    quorum: int | None,
    key: str | None,
    lines_file: Path | None,
    jsonl_file: Path | None,
    as_json: bool,
    text: str | None,
) -> None:
    """Send TEXT (or standard input, if TEXT is missing or "-") from one address to another.

    With --file or --jsonl, send many messages through the library's batching,
    with a progress bar and a summary.
    """
    if lines_file is not None or jsonl_file is not None:
        _send_bulk(g, sender, recipient, quorum, key, lines_file, jsonl_file, as_json, text)
        return
    if recipient is None:
        raise InvalidInput("say who it is for: --to ADDRESS")
    if text is None or text == "-":
        if sys.stdin.isatty():
            err.print("[dim]reading the message from standard input; end it with Ctrl-D[/]")
        text = sys.stdin.read()
        text = text.removesuffix("\n")
    # the key is known before sending, so a failure can always name it for a safe resend
    key = key or new_key()
    config = g.client_config(write_quorum=quorum)
    try:
        with client_session(config) as messenger:
            report = messenger.send(sender=sender, recipient=recipient, body=text, key=key, settle=True)
    except QuorumNotReached as exc:
        _send_failed(config, exc.report, as_json=as_json, resend=_resend_hint(key, sender, recipient, quorum))
        return
    except MessengerError as exc:
        if as_json:
            click.echo(render.to_json({"key": key, "ok": False, "queued": False, "error": str(exc)}))
        raise
    if as_json:
        click.echo(render.to_json(render.send_report_dict(report)))
    else:
        render.print_send_report(out, report)


def _resend_hint(key: str, sender: str, recipient: str, quorum: int | None) -> str:
    # quoted for the shell, so the hint can be pasted as it is whatever the addresses hold
    args = ["messenger", "send", "--key", key, "--from", sender, "--to", recipient]
    if quorum:
        args += ["--quorum", str(quorum)]
    return f"{shlex.join(args)} ..."


def _send_failed(config: ClientConfig, report: SendReport, *, as_json: bool, resend: str) -> None:
    queued = bulk.is_queued(report)
    hint = tls_hint(config) if report.acknowledged == 0 else None
    if as_json:
        click.echo(render.to_json({**render.send_report_dict(report), "queued": queued, "hint": hint}))
    else:
        render.print_send_report(out, report)
        render.print_send_failure(err, report, queued=queued, resend=render.shown(resend, keep_newlines=False))
        if hint is not None:
            render.print_hint(err, hint)
    sys.exit(exit_codes.QUEUED if queued else exit_codes.FAILED)


def _send_bulk(
    g: Globals,
    sender: str,
    recipient: str | None,
    quorum: int | None,
    key: str | None,
    lines_file: Path | None,
    jsonl_file: Path | None,
    as_json: bool,
    text: str | None,
) -> None:
    if lines_file is not None and jsonl_file is not None:
        raise InvalidInput("--file and --jsonl exclude each other")
    if text is not None or key is not None:
        raise InvalidInput("with --file or --jsonl the messages come from the file: no TEXT or --key")
    validate_address(sender, what="sender address")
    if lines_file is not None:
        if recipient is None:
            raise InvalidInput("--file needs --to ADDRESS")
        drafts = bulk.drafts_from_lines(lines_file, sender=sender, recipient=recipient)
    else:
        assert jsonl_file is not None
        drafts = bulk.drafts_from_jsonl(jsonl_file, sender=sender, recipient=recipient)
    if not drafts:
        raise InvalidInput(f"{lines_file or jsonl_file} holds no messages")
    config = g.client_config(write_quorum=quorum)
    with (
        client_session(config) as messenger,
        Progress(*Progress.get_default_columns(), console=err, transient=True, disable=not err.is_terminal) as bar,
    ):
        task = bar.add_task("sending", total=len(drafts))
        outcome = bulk.send_in_chunks(messenger.send_many, drafts, on_chunk=lambda n: bar.advance(task, n))
    queued, refused = outcome.queued, outcome.refused
    hint = tls_hint(config) if outcome.stored == 0 else None
    if as_json:
        click.echo(render.to_json(render.bulk_dict(outcome, hint=hint)))
    else:
        render.print_bulk_summary(out, err, outcome)
        if hint is not None:
            render.print_hint(err, hint)
    if refused:
        sys.exit(exit_codes.FAILED)
    if queued:
        sys.exit(exit_codes.QUEUED)


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
        home = home_of(config)
        check_home(home)
        local = LocalInbox.in_dir(home)
        try:
            history = local.history(address, limit=limit)
        finally:
            local.close()
        if as_json:
            click.echo(render.to_json({"messages": [render.message_dict(m) for m in history]}))
        else:
            render.print_messages(out, history, empty=f"no messages for {address} in the local inbox")
        return
    with client_session(config) as messenger:
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
    config = g.client_config()
    with client_session(config) as messenger:
        statuses = messenger.status()
    if as_json:
        click.echo(render.to_json(render.status_dict(statuses)))
    else:
        render.print_status(out, statuses)
    if not any(s.reachable for s in statuses):
        if not as_json and (hint := tls_hint(config)) is not None:
            render.print_hint(err, hint)
        sys.exit(exit_codes.FAILED)


cli.add_command(security_cmds.keys)
cli.add_command(security_cmds.token)
cli.add_command(security_cmds.certs)


def main() -> None:
    """Entry point: run the CLI, turn our errors into one line and an exit status."""
    try:
        cli.main(prog_name="messenger", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(exit_codes.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InvalidInput as exc:
        err.print(f"[red]error[/]: {render.shown(str(exc), keep_newlines=False)}")
        sys.exit(exit_codes.BAD_INPUT)
    except LocalDataError as exc:
        err.print(f"[red]error[/]: {render.shown(str(exc), keep_newlines=False)}")
        sys.exit(exit_codes.LOCAL_DATA)
    except MessengerError as exc:
        err.print(f"[red]error[/]: {render.shown(str(exc), keep_newlines=False)}")
        sys.exit(exit_codes.FAILED)
    except KeyboardInterrupt:
        sys.exit(exit_codes.INTERRUPTED)


from grpc_messenger.bench.command import bench  # noqa: E402  (registered last: keeps merges easy)
from grpc_messenger.cli.chaos import chaos_command  # noqa: E402

cli.add_command(chaos_command)
cli.add_command(bench)
cli.add_command(outbox)

from grpc_messenger.cli.watch import watch  # noqa: E402

cli.add_command(watch)
from grpc_messenger.cli.admin import admin  # noqa: E402

cli.add_command(admin)

from grpc_messenger.cli.tui import tui  # noqa: E402

cli.add_command(tui)

from grpc_messenger.cli.config_cmd import config_group  # noqa: E402
from grpc_messenger.cli.serve import serve  # noqa: E402

cli.add_command(serve)
cli.add_command(config_group)

from grpc_messenger.cli.web import web  # noqa: E402

cli.add_command(web)
