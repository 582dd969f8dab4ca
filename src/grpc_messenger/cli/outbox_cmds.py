"""`messenger outbox`: deliveries the replicas are still owed; `flush` pushes them, `drop` forgets them."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from grpc_messenger.cli import exit_codes, render
from grpc_messenger.cli.local_files import check_database, check_home
from grpc_messenger.cli.session import client_session
from grpc_messenger.cli.settings import Globals, home_of
from grpc_messenger.client.outbox import OUTBOX_FILE, Outbox
from grpc_messenger.errors import InvalidInput

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=100,
    show_default=True,
    help="Most deliveries listed (the counts cover all).",
)
@click.pass_context
def outbox(ctx: click.Context, as_json: bool, limit: int) -> None:
    """Show deliveries the replicas are still owed (hinted hand-off); `flush` pushes them now, `drop` forgets some."""
    if ctx.invoked_subcommand is not None:
        return
    g: Globals = ctx.obj
    with client_session(g.client_config()) as messenger:
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
    with client_session(g.client_config()) as messenger:
        remaining = messenger.flush_outbox()
        _, expired = messenger.outbox_owed()
    if remaining:
        err.print(
            f"[yellow]{remaining} deliveries still owed[/] (replicas unreachable?); they are retried in the "
            "background; `messenger outbox drop --replica R` forgets those to a replica that is gone for good"
        )
        sys.exit(exit_codes.FAILED)
    out.print("[green]outbox flushed[/]: nothing owed" + (f", {expired} expired (under-replicated)" if expired else ""))


@outbox.command("drop")
@click.argument("key", required=False)
@click.option("--replica", metavar="HOST:PORT", help="Drop every delivery owed to this replica.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def outbox_drop(g: Globals, key: str | None, replica: str | None, as_json: bool) -> None:
    """Forget owed deliveries on purpose: those of message KEY, or all to --replica (or both at once).

    For deliveries that can never succeed, e.g. to a replica taken out of service
    (otherwise `outbox flush` keeps failing). The replicas that have the message
    keep it; replica repair (--peer) may still copy it elsewhere.
    """
    if key is None and replica is None:
        raise InvalidInput("say what to drop: a message KEY, --replica HOST:PORT, or both")
    home = home_of(g.client_config())
    check_home(home)
    check_database(home / OUTBOX_FILE)
    box = Outbox.in_dir(home)
    try:
        dropped = box.drop(key=key, replica=replica)
        owed, expired = box.counts()
    finally:
        box.close()
    if as_json:
        click.echo(render.to_json({"dropped": dropped, "owed": owed, "expired": expired}))
    elif dropped:
        out.print(f"dropped {dropped} owed deliveries; {owed} still owed, {expired} expired")
    else:
        err.print("[yellow]nothing dropped[/]: no owed delivery matches (see `messenger outbox`)")
    if not dropped:
        sys.exit(exit_codes.FAILED)
