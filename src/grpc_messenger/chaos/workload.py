"""The workload: senders and readers over the public client library, every step in the history.

Senders choose their own keys (`send(key=...)`, the documented way to retry
safely), so the history names a message before the call is made, and a key
is never reused. Each mailbox has exactly one reader; a reader's local inbox
is what makes its delivery exactly-once. `RawReader` is the reader without
that defence (Fetch, merge by key within one read, Ack, no durable inbox):
with it, the checker sees duplicates.

Beyond the public API, `RawReader` uses the client's per-replica paged Fetch
and Ack (grpc_messenger.client.pages) over generated stubs: the public client
always keeps a local inbox, and the point of this reader is not to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence

import grpc

from grpc_messenger import AsyncMessenger, MessengerError, QuorumNotReached
from grpc_messenger.chaos.history import History
from grpc_messenger.client.pages import ack_keys, fetch_pages
from grpc_messenger.model import Message
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SENDS_IN_FLIGHT_MAX = 16  # per sender: what lets the client batch
DRAIN_ROUNDS_MAX = 20
READ_PAGES_MAX = 200
FETCH_PAGE_SIZE = 500
BODY_PAD_CHARS_MAX = 200


def mailbox_names(n: int) -> list[str]:
    """The mailboxes of a run."""
    return [f"mb{i:03d}@chaos.test" for i in range(n)]


class Sender:
    """Sends at a steady rate to random mailboxes, several sends in flight."""

    def __init__(
        self,
        *,
        name: str,
        run_tag: str,
        messenger: AsyncMessenger,
        mailboxes: Sequence[str],
        rng: random.Random,
        history: History,
        rate_per_s: float,
        in_flight_max: int = SENDS_IN_FLIGHT_MAX,
    ) -> None:
        assert rate_per_s > 0
        assert in_flight_max >= 1
        self._in_flight_max = in_flight_max
        self.name = name
        self.address = f"{name}@chaos.test"
        self._tag = run_tag
        self.messenger = messenger
        self._mailboxes = mailboxes
        self._rng = rng
        self._history = history
        self._interval_s = 1.0 / rate_per_s
        self._in_flight: set[asyncio.Task[None]] = set()
        self.sent = 0

    async def run(self, stop: asyncio.Event, *, messages_max: int) -> None:
        """Send until `stop` is set (or messages_max), then wait for sends in flight."""
        slots = asyncio.Semaphore(self._in_flight_max)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            for n in range(messages_max):
                if stop.is_set():
                    break
                next_at += self._interval_s
                delay_s = next_at - loop.time()
                if delay_s > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay_s)
                        break
                    except TimeoutError:
                        pass
                else:
                    next_at = loop.time()  # behind schedule: do not burst to catch up
                await slots.acquire()
                task = asyncio.create_task(self._send_one(n, slots))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _send_one(self, n: int, slots: asyncio.Semaphore) -> None:
        key = f"{self._tag}-{self.name}-{n}"
        mailbox = self._rng.choice(self._mailboxes)
        body = f"{key} " + "x" * self._rng.randrange(BODY_PAD_CHARS_MAX)
        self._history.record("invoke", process=self.name, key=key, mailbox=mailbox, body=body)
        self.sent += 1
        try:
            report = await self.messenger.send(sender=self.address, recipient=mailbox, body=body, key=key)
        except QuorumNotReached as exc:
            self._history.record("fail", process=self.name, key=key, error=str(exc)[:200])
        except MessengerError as exc:
            self._history.record("info", process=self.name, key=key, error=f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:  # recorded, never silent: the checker counts it as unknown
            self._history.record("info", process=self.name, key=key, error=f"{type(exc).__name__}: {exc}"[:200])
            log.warning("event=chaos.send_crashed key=%s error=%r", key, exc)
        else:
            # which replicas (r1.. in the configured order) held it when send() returned: a loss
            # can then be traced to the disks those replicas lost afterwards
            by = "".join(str(i + 1) for i, r in enumerate(report.replicas) if r.state.acknowledged)
            self._history.record("ok", process=self.name, key=key, acked=report.acknowledged, by=by)
        finally:
            slots.release()


class Reader:
    """Reads its own mailboxes with AsyncMessenger.receive (local inbox on)."""

    def __init__(
        self, *, name: str, messenger: AsyncMessenger, mailboxes: Sequence[str], rng: random.Random, history: History
    ) -> None:
        self.name = name
        self.messenger = messenger
        self.mailboxes = list(mailboxes)
        self._rng = rng
        self._history = history
        self.reads = 0  # numbers each receive() so the checker can judge the order within one

    async def receive(self, mailbox: str) -> int:
        """One read of one mailbox; record what was shown; return how many."""
        try:
            report = await self.messenger.receive(mailbox)
        except MessengerError as exc:
            self._history.record("read_fail", process=self.name, mailbox=mailbox, error=str(exc)[:200])
            return 0
        except Exception as exc:  # recorded and logged, never silent; the run goes on
            error = f"{type(exc).__name__}: {exc}"[:200]
            self._history.record("read_fail", process=self.name, mailbox=mailbox, error=error)
            log.warning("event=chaos.receive_crashed mailbox=%s error=%r", mailbox, exc)
            return 0
        self.reads += 1
        for m in report.messages:
            self._history.record(
                "deliver",
                process=self.name,
                mailbox=mailbox,
                key=m.key,
                body=m.body,
                sender=m.sender,
                created_unix_ms=m.created_unix_ms,
                read=self.reads,
            )
        return len(report.messages)

    async def run(self, stop: asyncio.Event, *, pause_s: tuple[float, float]) -> None:
        """Read a random own mailbox, pause, repeat until `stop`."""
        while not stop.is_set():
            await self.receive(self._rng.choice(self.mailboxes))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._rng.uniform(*pause_s))

    async def drain(self) -> int:
        """Read every own mailbox until a round shows nothing; return how many were shown."""
        total = 0
        for _ in range(DRAIN_ROUNDS_MAX):
            shown = 0
            for mailbox in self.mailboxes:
                shown += await self.receive(mailbox)
            total += shown
            if shown == 0:
                break
        return total

    async def close(self) -> None:
        """Close the messenger."""
        await self.messenger.close()


class RawReader(Reader):
    """A reader without the local inbox: Fetch from every replica, merge by key in this read, Ack.

    It remembers nothing between reads, so a copy that survives an ack (a replica
    that was unreachable, or got the message later) is shown again.
    """

    def __init__(
        self,
        *,
        name: str,
        servers: Sequence[str],
        mailboxes: Sequence[str],
        rng: random.Random,
        history: History,
        timeout_s: float,
    ) -> None:
        self.name = name
        self.mailboxes = list(mailboxes)
        self._rng = rng
        self._history = history
        self._timeout_s = timeout_s
        self._channels = [grpc.aio.insecure_channel(s) for s in servers]
        self._stubs = [pb_grpc.MessengerServiceStub(c) for c in self._channels]

    async def receive(self, mailbox: str) -> int:
        pages = await asyncio.gather(*(self._fetch_all(stub, mailbox) for stub in self._stubs))
        merged: dict[str, Message] = {}
        for found in pages:
            for m in found or ():
                merged.setdefault(m.key, m)
        if all(p is None for p in pages):
            self._history.record("read_fail", process=self.name, mailbox=mailbox, error="no replica answered")
            return 0
        for key, m in merged.items():
            self._history.record("deliver", process=self.name, mailbox=mailbox, key=key, body=m.body)
        if merged:
            keys = list(merged)
            await asyncio.gather(*(self._ack(stub, mailbox, keys) for stub in self._stubs))
        return len(merged)

    async def _fetch_all(self, stub: pb_grpc.MessengerServiceAsyncStub, mailbox: str) -> list[Message] | None:
        found: list[Message] = []
        try:
            async for page in fetch_pages(
                stub, mailbox, page_size=FETCH_PAGE_SIZE, timeout_s=self._timeout_s, pages_max=READ_PAGES_MAX
            ):
                found.extend(page.messages())
        except MessengerError:
            return None
        return found

    async def _ack(self, stub: pb_grpc.MessengerServiceAsyncStub, mailbox: str, keys: list[str]) -> None:
        try:
            await ack_keys(stub, mailbox, keys, timeout_s=self._timeout_s)
        except MessengerError as exc:
            log.debug("event=chaos.raw_ack_failed error=%r", str(exc))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels))
