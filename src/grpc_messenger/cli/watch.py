"""`messenger watch ADDRESS`: print new messages as they arrive, across replica restarts.

A thin shell over `AsyncMessenger.subscribe`: each message is stored in the
local inbox and acked like `messenger inbox` does, and printed once. Bodies
are data: control characters are shown escaped (the JSON lines are ASCII
only, so no byte of them can drive a terminal either).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Protocol

import click
from rich.console import Console
from rich.markup import escape

from grpc_messenger.cli import render
from grpc_messenger.client.core import AsyncMessenger
from grpc_messenger.client.subscribe import StreamState, Subscription
from grpc_messenger.config import ClientConfig
from grpc_messenger.display import escape_control
from grpc_messenger.model import Message, validate_address

# how often the replica streams are looked at for the "following N of M" line
_STATE_POLL_S = 0.5


class _Settings(Protocol):
    def client_config(self, *, write_quorum: int | None = None) -> ClientConfig: ...


@click.command("watch")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message (JSON lines).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many messages [default: run until Ctrl-C].")
@click.pass_obj
def watch(g: _Settings, address: str, as_json: bool, count: int | None) -> None:
    """Print new mail for ADDRESS as it arrives on any replica, each message once, until Ctrl-C.

    Messages are kept in the local inbox and acked, as `messenger inbox` does; a
    replica that goes away is followed again when it comes back. Which replicas
    are followed, and how many deliveries this home's outbox still owes (sent
    earlier, retried meanwhile), is reported on standard error.
    """
    validate_address(address, what="mailbox address")
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        asyncio.run(_watch(g.client_config(), address, as_json=as_json, count=count, out=out, err=err))
    except KeyboardInterrupt:
        err.print("stopped")


async def _watch(
    config: ClientConfig, address: str, *, as_json: bool, count: int | None, out: Console, err: Console
) -> None:
    async with AsyncMessenger(config) as messenger, messenger.subscribe(address) as subscription:
        err.print(f"[dim]watching {escape(address)} on {len(config.servers)} replicas; Ctrl-C stops[/]")
        shown = 0
        last_line = ""
        while count is None or shown < count:
            try:
                async with asyncio.timeout(_STATE_POLL_S):
                    message = await anext(subscription)
            except TimeoutError:
                last_line = await _report_state(err, messenger, subscription, last_line)
                continue
            except StopAsyncIteration:
                return
            if as_json:
                click.echo(json.dumps(render.message_dict(message), sort_keys=True, ensure_ascii=True))
            else:
                out.print(_line(message))
            shown += 1
            last_line = await _report_state(err, messenger, subscription, last_line)


async def _report_state(err: Console, messenger: AsyncMessenger, subscription: Subscription, last_line: str) -> str:
    """Print the followed replicas and the outbox's depth whenever they change; return the line now in force."""
    owed, expired = await messenger.outbox_owed()
    line = status_line(subscription.states(), owed=owed, expired=expired)
    if line != last_line:
        err.print(f"[dim]{escape(line)}[/]")
    return line


def status_line(states: list[StreamState], *, owed: int, expired: int) -> str:
    """The line on standard error: "following 2 of 3 replicas; down: HOST:PORT; outbox owes 4 deliveries".

    Each part after the first only when it applies; the outbox parts say what this
    home's earlier sends still owe replicas that missed them, and what expired.
    """
    up = [s for s in states if s.connected]
    line = f"following {len(up)} of {len(states)} replicas"
    down = [s for s in states if not s.connected and s.error]
    if down:
        line += "; down: " + ", ".join(s.replica for s in down)
    if owed:
        line += f"; outbox owes {owed} {'delivery' if owed == 1 else 'deliveries'}"
    if expired:
        line += f"; {expired} expired (see messenger outbox)"
    return line


def _line(message: Message) -> str:
    when = datetime.fromtimestamp(message.created_unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    sender = escape(escape_control(message.sender))
    body = escape(escape_control(message.body))
    return f"[dim]{when}[/] [bold]{sender}[/]: {body}"
