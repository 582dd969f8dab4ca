"""How CLI results look: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grpc_messenger.cli.bulk import BulkOutcome
from grpc_messenger.client.outbox import OwedDelivery
from grpc_messenger.display import escape_control
from grpc_messenger.model import Message, ReadReport, ReplicaState, ReplicaStatus, SendReport

_STATE_STYLE = {
    ReplicaState.STORED: "green",
    ReplicaState.ALREADY_STORED: "green",
    ReplicaState.PENDING: "yellow",
}


def shown(text: str, *, keep_newlines: bool = True) -> str:
    """Text from the network made safe to print: control characters escaped, rich markup inert."""
    return escape(escape_control(text, keep_newlines=keep_newlines))


def to_json(value: Any) -> str:
    """One JSON document, stable key order; control characters as \\u escapes, so it is safe on a terminal."""
    return _json_control(json.dumps(value, sort_keys=True, ensure_ascii=False))


def _json_control(text: str) -> str:
    # json escapes only C0 controls; C1 (e.g. \x9b, a CSI) and format characters pass raw otherwise.
    # They can only occur inside JSON strings, where a \u escape means the same character.
    out: list[str] = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            code = ord(ch)
            if code >= 0x10000:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as plain JSON values."""
    return {
        "key": message.key,
        "from": message.sender,
        "to": message.recipient,
        "body": message.body,
        "created_unix_ms": message.created_unix_ms,
        "legacy_id": message.legacy_id,
    }


def send_report_dict(report: SendReport) -> dict[str, Any]:
    """A send report as plain JSON values."""
    return {
        "key": report.key,
        "ok": report.ok,
        "acknowledged": report.acknowledged,
        "write_quorum": report.write_quorum,
        "replicas": [{"replica": r.replica, "state": r.state.value, "error": r.error} for r in report.replicas],
    }


def print_send_report(console: Console, report: SendReport) -> None:
    """A line per replica and a verdict."""
    table = Table(title=f"message {report.key}", title_justify="left")
    table.add_column("replica")
    table.add_column("outcome")
    table.add_column("detail", overflow="fold")
    for r in report.replicas:
        style = _STATE_STYLE.get(r.state, "red")
        table.add_row(r.replica, f"[{style}]{r.state.value}[/]", shown(r.error))
    console.print(table)
    if report.ok:
        console.print(
            f"[green]sent[/]: stored on {report.acknowledged} of {len(report.replicas)} replicas "
            f"(needed {report.write_quorum})"
        )


def print_hint(console: Console, hint: str) -> None:
    """One line saying what to try (plain text: brackets in it are not markup)."""
    console.print(f"[cyan]hint[/]: {shown(hint, keep_newlines=False)}")


def print_send_failure(console: Console, report: SendReport, *, queued: bool, resend: str) -> None:
    """Why a send fell short, and what happens next: queued for delivery, or nothing."""
    console.print(
        f"[red]error[/]: stored on {report.acknowledged} of {len(report.replicas)} replicas, "
        f"needed {report.write_quorum}"
    )
    if queued:
        console.print(
            f"[yellow]queued[/]: message {report.key} is in the outbox and will be delivered when the replicas "
            "answer (`messenger outbox` lists it)"
        )
        console.print(f"resending is safe with the same key; a new key would send a second copy: {resend}")
    else:
        console.print(f"not queued: no replica is owed message {report.key}; nothing more will happen")


def _when(message: Message) -> str:
    return datetime.fromtimestamp(message.created_unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_messages(console: Console, messages: list[Message] | tuple[Message, ...], *, empty: str) -> None:
    """Messages, oldest first, one block each."""
    if not messages:
        console.print(f"[dim]{empty}[/]")
        return
    for m in messages:
        console.print(f"[dim]{_when(m)}[/] [bold]{shown(m.sender, keep_newlines=False)}[/]: {shown(m.body)}")


def print_read_warnings(console: Console, report: ReadReport) -> None:
    """Replicas that did not answer (the read went on without them)."""
    for address, error in report.replicas_failed:
        console.print(f"[yellow]warning[/]: {address} did not answer ({shown(error)})")


def read_report_dict(report: ReadReport) -> dict[str, Any]:
    """A read report as plain JSON values."""
    return {
        "messages": [message_dict(m) for m in report.messages],
        "replicas_answered": list(report.replicas_answered),
        "replicas_failed": [{"replica": a, "error": e} for a, e in report.replicas_failed],
    }


def print_status(console: Console, statuses: list[ReplicaStatus]) -> None:
    """A row per replica (ids and versions are in --json)."""
    table = Table()
    digests = {s.state_digest for s in statuses if s.reachable}
    for column in ("replica", "up", "health", "store", "messages", "mailboxes", "rtt"):
        table.add_column(
            column, no_wrap=True, justify="right" if column in ("messages", "mailboxes", "rtt") else "left"
        )
    for s in statuses:
        if not s.reachable:
            table.add_row(s.address, "[red]no[/]", "[red]unreachable[/]", "-", "-", "-", "-")
            continue
        health = "[green]serving[/]" if s.serving else "[red]not serving[/]"
        table.add_row(
            s.address,
            "[green]yes[/]",
            f"{health}, [yellow]rebuilding[/]" if s.rebuilding else health,
            s.store,
            str(s.messages),
            str(s.mailboxes),
            f"{s.latency_ms:.1f} ms",
        )
    console.print(table)
    reachable = [s for s in statuses if s.reachable]
    if len(reachable) > 1:
        console.print(agreement_line(reachable, digests))
    for s in statuses:
        if s.error:
            console.print(f"[red]{s.address}[/]: {shown(s.error)}")
        if s.rebuilding:
            console.print(
                f"[yellow]{s.address}[/]: rebuilding: it started on an empty store and is still copying from its"
                " peers; until it is done, do not take down another replica's disk"
            )


def agreement_line(reachable: list[ReplicaStatus], digests: set[int]) -> str:
    """Whether the reachable replicas hold the same messages and tombstones, and how far apart."""
    if len(digests) == 1:
        return f"[green]in sync[/]: the {len(reachable)} reachable replicas hold the same messages and tombstones"
    spread_m = max(s.messages for s in reachable) - min(s.messages for s in reachable)
    spread_t = max(s.tombstones for s in reachable) - min(s.tombstones for s in reachable)
    return (
        f"[yellow]replicas differ[/] ({len(digests)} distinct states; queued counts differ by up to {spread_m}, "
        f"tombstones by up to {spread_t}); repair (--peer) and the senders' outboxes converge them"
    )


def status_dict(statuses: list[ReplicaStatus]) -> list[dict[str, Any]]:
    """Statuses as plain JSON values."""
    return [asdict(s) for s in statuses]


def owed_dict(owed: OwedDelivery) -> dict[str, Any]:
    """An owed delivery as plain JSON values."""
    return {
        "key": owed.message.key,
        "to": owed.message.recipient,
        "replica": owed.replica,
        "attempts": owed.attempts,
        "first_owed_unix_ms": owed.first_owed_ms,
        "next_due_unix_ms": owed.next_due_ms,
        "last_error": owed.last_error,
        "expired": owed.expired,
    }


def print_outbox(console: Console, owed: list[OwedDelivery], counts: tuple[int, int]) -> None:
    """What the replicas are still owed, and what expired unreplicated."""
    pending, expired = counts
    if not owed:
        console.print("[green]outbox empty[/]: every replica has every message sent from here")
        return
    table = Table()
    for column in ("key", "to", "replica", "tries", "state", "last error"):
        table.add_column(column, overflow="fold")
    for d in owed:
        state = "[red]expired[/]" if d.expired else "[yellow]owed[/]"
        table.add_row(d.message.key, shown(d.message.recipient), d.replica, str(d.attempts), state, shown(d.last_error))
    console.print(table)
    console.print(f"{pending} deliveries owed, {expired} expired (under-replicated)")


KEYS_LISTED_MAX = 20


def bulk_dict(outcome: BulkOutcome, *, hint: str | None) -> dict[str, Any]:
    """A bulk send as plain JSON values: the counts, then one report per message in file order."""
    return {
        "sent": len(outcome.reports),
        "stored": outcome.stored,
        "queued": len(outcome.queued),
        "refused": len(outcome.refused),
        "hint": hint,
        "reports": [send_report_dict(r) for r in outcome.reports],
    }


def print_bulk_summary(console: Console, errors: Console, outcome: BulkOutcome) -> None:
    """One summary line; the keys of messages short of the quorum, and what happens to them."""
    total = len(outcome.reports)
    queued, refused = outcome.queued, outcome.refused
    style = "green" if outcome.stored == total else "yellow"
    console.print(
        f"[{style}]sent {total} messages[/]: {outcome.stored} stored on the write quorum, "
        f"{len(queued)} queued for delivery, {len(refused)} refused"
    )
    if queued:
        errors.print(
            f"[yellow]queued[/]: {len(queued)} messages are in the outbox and will be delivered when the replicas "
            'answer (`messenger outbox` lists them); resend them only with the same keys (--jsonl with "key"):'
        )
        _print_keys(errors, queued)
    if refused:
        errors.print(f"[red]refused[/]: {len(refused)} messages were refused and will not be delivered:")
        _print_keys(errors, refused)


def _print_keys(console: Console, reports: tuple[SendReport, ...]) -> None:
    for report in reports[:KEYS_LISTED_MAX]:
        reasons = "; ".join(
            f"{r.replica}: {r.state.value} {shown(r.error, keep_newlines=False)}".strip()
            for r in report.replicas
            if not r.state.acknowledged
        )
        console.print(f"  {report.key}  {reasons}")
    if len(reports) > KEYS_LISTED_MAX:
        console.print(f"  ... and {len(reports) - KEYS_LISTED_MAX} more (--json lists every report)")
