"""Pure helpers that turn library values into the short texts the app shows."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.text import Text

from grpc_messenger.display import escape_control
from grpc_messenger.model import Message, ReplicaState, ReplicaStatus, SendReport


def when(created_unix_ms: int) -> str:
    """A message's creation time in local time, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created_unix_ms / 1000))


def shown(text: str) -> str:
    """Text from the network as a person may see it: control characters escaped."""
    return escape_control(text)


def one_line(text: str, *, width_max: int = 60) -> str:
    """The first line of `text`, shortened to `width_max` characters."""
    first = escape_control(text.split("\n", 1)[0], keep_newlines=False)
    return first if len(first) <= width_max else first[: width_max - 1] + "…"


def send_outcome(report: SendReport) -> str:
    """ "stored on 3/3", "stored on 2/3, 1 owed", or "not stored yet: 0/3, 3 owed"."""
    total = len(report.replicas)
    owed = sum(1 for r in report.replicas if r.state in (ReplicaState.FAILED, ReplicaState.PENDING))
    refused = total - report.acknowledged - owed
    text = f"stored on {report.acknowledged}/{total}"
    if not report.ok:
        text = f"not stored yet: {report.acknowledged}/{total}"
    if owed:
        text += f", {owed} owed"
    if refused:
        text += f", {refused} refused"
    return text


def message_card(message: Message, *, outcome: str = "", mine: bool = False) -> Text:
    """A message as a two-part block: who and when, then the body (escaped)."""
    card = Text()
    card.append("you" if mine else shown(message.sender), style="bold")
    card.append(f"  {when(message.created_unix_ms)}", style="dim")
    if outcome:
        card.append(f"  {outcome}", style="italic dim")
    card.append("\n")
    card.append(shown(message.body))
    card.append("\n")  # a blank line between messages
    return card


def replicas_summary(statuses: Sequence[ReplicaStatus] | None) -> tuple[str, str]:
    """(one plain sentence about the replicas, severity: "ok", "degraded" or "down")."""
    if statuses is None:
        return "checking the replicas…", "ok"
    total = len(statuses)
    up = sum(1 for s in statuses if s.reachable)
    if up == total:
        return (f"all {total} replicas up" if total > 1 else "the replica is up"), "ok"
    if up == 0:
        return (f"no replica reachable (0 of {total}): new mail waits; sends are kept and delivered later", "down")
    return (f"{up} of {total} replicas up: still working; the others catch up when they return", "degraded")


def latency(status: ReplicaStatus) -> str:
    """A replica's round trip, or why there is none."""
    if not status.reachable:
        return "—"
    return f"{status.latency_ms:.1f} ms"
