"""Wake-ups for Subscribe streams: a put wakes the streams of its recipients' mailboxes.

Bounded: at most `subscribers_max` streams on a replica and `per_mailbox_max`
per mailbox; beyond that a new Subscribe gets RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from grpc_messenger.errors import ResourceExhausted

SUBSCRIBERS_MAX = 256
PER_MAILBOX_MAX = 8
# A stream answers at least this often (an empty page), so dead clients are noticed.
HEARTBEAT_S = 15.0
# Then the replica ends it; the client resumes with its last position.
LIFETIME_S = 600.0
# A client that does not take a page within this time loses its stream (and its slot).
WRITE_TIMEOUT_S = 10.0
PAGE_MESSAGES_MAX = 100
PAGE_BYTES_MAX = 256 * 1024


@dataclass(frozen=True, slots=True)
class SubscribeLimits:
    """How many streams, how long, how patient."""

    subscribers_max: int = SUBSCRIBERS_MAX
    per_mailbox_max: int = PER_MAILBOX_MAX
    heartbeat_s: float = HEARTBEAT_S
    lifetime_s: float = LIFETIME_S
    write_timeout_s: float = WRITE_TIMEOUT_S


class MailboxSignals:
    """One asyncio.Event per open stream, set when its mailbox receives a message."""

    def __init__(self, limits: SubscribeLimits) -> None:
        self.limits = limits
        self._events: dict[str, set[asyncio.Event]] = {}
        self._count = 0

    @contextmanager
    def listen(self, mailbox: str) -> Iterator[asyncio.Event]:
        """Register a stream for `mailbox` for the duration of the block."""
        events = self._events.get(mailbox, set())
        if self._count >= self.limits.subscribers_max:
            raise ResourceExhausted("too many open Subscribe streams on this replica; retry later")
        if len(events) >= self.limits.per_mailbox_max:
            raise ResourceExhausted(f"too many open Subscribe streams for this mailbox (max {len(events)})")
        event = asyncio.Event()
        self._events.setdefault(mailbox, set()).add(event)
        self._count += 1
        try:
            yield event
        finally:
            self._count -= 1
            box = self._events[mailbox]
            box.discard(event)
            if not box:
                del self._events[mailbox]
            assert self._count >= 0

    def notify(self, mailboxes: Iterable[str]) -> None:
        """Wake every stream of these mailboxes."""
        for mailbox in set(mailboxes):
            for event in self._events.get(mailbox, ()):
                event.set()

    @property
    def open_streams(self) -> int:
        """How many streams are registered now."""
        return self._count
