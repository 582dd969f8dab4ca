"""The app's one door to the library: sign in, read, send, follow, and look at the replicas.

`Session` is what screens use; `LibrarySession` is it on top of `AsyncMessenger`.
Tests may hand the app another `Session` (fixed values for snapshots).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from grpc_messenger.client.core import AsyncMessenger
from grpc_messenger.client.subscribe import StreamState, Subscription
from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import InvalidInput, PermissionDenied, Unavailable
from grpc_messenger.model import (
    Message,
    QuorumNotReached,
    ReplicaStatus,
    SendReport,
    normalize_address,
    validate_address,
)

# the conversation history loaded at sign-in
HISTORY_MAX = 1000


@dataclass(frozen=True, slots=True)
class SignIn:
    """What the sign-in screen collects."""

    address: str
    servers: tuple[str, ...]
    token: str = ""


class Session(Protocol):
    """A signed-in reader and sender."""

    @property
    def address(self) -> str:
        """The signed-in address (normalized)."""

    @property
    def servers(self) -> tuple[str, ...]:
        """The replicas, in configuration order."""

    async def history(self) -> list[Message]:
        """Messages received earlier (from the local inbox), oldest first."""

    def incoming(self) -> AsyncIterator[Message]:
        """New messages as they arrive, each once."""

    async def send(self, recipient: str, body: str) -> tuple[Message, SendReport]:
        """Send; the message as sent, and the report of where it is stored (also below the quorum)."""

    async def status(self) -> list[ReplicaStatus]:
        """Each replica: reachable, latency."""

    async def outbox_owed(self) -> int:
        """Deliveries still owed to replicas that missed a message."""

    def streams(self) -> list[StreamState]:
        """Each replica's live stream."""

    def delivered_by(self, key: str) -> int:
        """How many replicas delivered this received message."""

    async def close(self) -> None:
        """Stop following and close every channel."""


SessionOpener = Callable[[SignIn], Awaitable[Session]]


class LibrarySession:
    """A `Session` on the client library."""

    def __init__(self, messenger: AsyncMessenger, address: str) -> None:
        self._messenger = messenger
        self._address = address
        self._subscription: Subscription = messenger.subscribe(address)
        self._subscription.start()

    @property
    def address(self) -> str:
        """See Session.address."""
        return self._address

    @property
    def servers(self) -> tuple[str, ...]:
        """See Session.servers."""
        return self._messenger.config.servers

    async def history(self) -> list[Message]:
        """See Session.history."""
        inbox = self._messenger.inbox
        return await asyncio.to_thread(functools.partial(inbox.history, self._address, limit=HISTORY_MAX))

    async def incoming(self) -> AsyncIterator[Message]:
        """See Session.incoming."""
        async for message in self._subscription:
            yield message

    async def send(self, recipient: str, body: str) -> tuple[Message, SendReport]:
        """See Session.send."""
        sent_at_ms = int(time.time() * 1000)  # about when the library stamped it; shown to the minute
        try:
            report = await self._messenger.send(sender=self._address, recipient=recipient, body=body, settle=True)
        except QuorumNotReached as exc:
            report = exc.report  # queued in the outbox: the report says so
        message = Message(
            key=report.key, sender=self._address, recipient=recipient, body=body, created_unix_ms=sent_at_ms
        )
        return message, report

    async def status(self) -> list[ReplicaStatus]:
        """See Session.status."""
        return await self._messenger.status()

    async def outbox_owed(self) -> int:
        """See Session.outbox_owed."""
        owed, _ = await self._messenger.outbox_owed()
        return owed

    def streams(self) -> list[StreamState]:
        """See Session.streams."""
        return self._subscription.states()

    def delivered_by(self, key: str) -> int:
        """See Session.delivered_by."""
        return len(self._subscription.delivered_by(key))

    async def close(self) -> None:
        """See Session.close."""
        try:
            await self._subscription.aclose()
        finally:
            await self._messenger.close(grace_s=2.0)


def library_opener(base: ClientConfig, *, check_token: bool = False) -> SessionOpener:
    """Open a `LibrarySession` from `base` with the sign-in's servers and token.

    With `check_token` (the web app with --auth), the replicas must accept the
    token for the address before anything is shown, the local inbox included.
    """

    async def open_session(sign_in: SignIn) -> Session:
        address = normalize_address(validate_address(sign_in.address.strip(), what="your address"))
        if not sign_in.servers:
            raise InvalidInput("give at least one replica address (HOST:PORT, comma-separated)")
        config = replace(base, servers=sign_in.servers, token=sign_in.token.strip() or base.token)
        messenger = AsyncMessenger(config)
        messenger.connect()
        try:
            if check_token:
                await _check_token(messenger, address)
            return LibrarySession(messenger, address)
        except BaseException:
            await messenger.close()
            raise

    return open_session


async def _check_token(messenger: AsyncMessenger, address: str) -> None:
    """Raise unless some replica accepts this client's token for `address` (an Ack of no keys changes nothing)."""
    answers = await messenger.ack(address, [])
    failures = [failure for failure in answers.values() if failure is not None]
    refusals = [failure for failure in failures if failure.denied]
    if refusals:
        raise PermissionDenied(f"the replicas refuse this token for {address}: {refusals[0]}")
    if len(failures) == len(answers):
        raise Unavailable("no replica answered, so your token could not be checked; try again")


def parse_servers(text: str) -> tuple[str, ...]:
    """`host:port, host:port` as a tuple, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())
