"""A stand-in `Session` with fixed values, so the app's snapshots are the same on every run.

Live behaviour (pushes, kills, sends) is tested against real replicas in test_tui.py;
this only pins what each screen looks like.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from grpc_messenger.client.subscribe import StreamState
from grpc_messenger.errors import Failure, Status
from grpc_messenger.model import Message, ReplicaOutcome, ReplicaState, ReplicaStatus, SendReport

SERVERS = ("r1.example.org:7001", "r2.example.org:7002", "r3.example.org:7003")
ME = "bob@example.org"
# 2026-01-05 09:00 UTC, and a minute apart after it
T0_MS = 1_767_603_600_000
DOWN = Failure(Status.UNAVAILABLE, "connection refused")


def msg(n: int, sender: str, recipient: str, body: str) -> Message:
    """Message number `n`: a fixed key and a fixed time."""
    return Message(
        key=f"0190c0de-0000-7000-8000-{n:012d}",
        sender=sender,
        recipient=recipient,
        body=body,
        created_unix_ms=T0_MS + n * 60_000,
    )


HISTORY = (
    msg(1, "alice@example.org", ME, "Are the three replicas up yet?"),
    msg(2, ME, "alice@example.org", "Two are. The third one is still copying its data."),
    msg(3, "carol@example.org", ME, "Lunch at noon?"),
    msg(4, "alice@example.org", ME, "A body with \x1b[31mterminal codes\x1b[0m is shown escaped.\nAnd a second line."),
)
LIVE = (
    msg(5, "dave@example.org", ME, "This one was pushed while you watched."),
    msg(6, "dave@example.org", ME, "And this one too."),
)


@dataclass
class FakeSession:
    """Fixed answers; `up` says which replicas answer the status check."""

    up: Sequence[bool] = (True, True, True)
    history_messages: Sequence[Message] = HISTORY
    live_messages: Sequence[Message] = LIVE
    owed: int = 0
    closed: bool = False
    sent: list[tuple[str, str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return ME

    @property
    def servers(self) -> tuple[str, ...]:
        return SERVERS

    async def history(self) -> list[Message]:
        return list(self.history_messages)

    async def incoming(self) -> AsyncIterator[Message]:
        for message in self.live_messages:
            yield message
        await asyncio.Event().wait()  # then nothing more, until the app stops

    async def send(self, recipient: str, body: str) -> tuple[Message, SendReport]:
        self.sent.append((recipient, body))
        message = msg(100 + len(self.sent), ME, recipient, body)
        outcomes = tuple(
            ReplicaOutcome(a, ReplicaState.STORED if ok else ReplicaState.FAILED, None if ok else DOWN)
            for a, ok in zip(SERVERS, self.up, strict=True)
        )
        return message, SendReport(key=message.key, write_quorum=1, replicas=outcomes)

    async def status(self) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(address=a, reachable=ok, serving=ok, latency_ms=1.5 + i, failure=None if ok else DOWN)
            for i, (a, ok) in enumerate(zip(SERVERS, self.up, strict=True))
        ]

    async def outbox_owed(self) -> int:
        return self.owed

    def streams(self) -> list[StreamState]:
        return [StreamState(replica=a, connected=ok) for a, ok in zip(SERVERS, self.up, strict=True)]

    def delivered_by(self, key: str) -> int:
        return sum(self.up)

    async def close(self) -> None:
        self.closed = True
