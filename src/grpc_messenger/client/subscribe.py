"""Push: follow a mailbox on every replica at once and hand out each new message once.

A `Subscription` owns one task per replica. Each task holds that replica's
Subscribe stream open, stores every page in the local inbox (durably) and only
then acks the page's keys on that replica, exactly as `receive()` does; a key
already in the inbox is acked again but never shown twice, because the inbox
is the one place that decides what is new. The iterator hands out what the
inbox has not shown yet, in display order, so messages that an earlier read
stored but never showed come out too.

Cursors: a (re)subscription to a replica starts at position 0, which means
"everything still queued for me there", including whatever arrived between an
earlier read and this subscription; everything already acked is gone from the
queue, so this costs little. Only a stream the replica ended cleanly (its
lifetime ran out) resumes from its last position, since that replica process
is known to hold the same positions. A replica that drops is re-subscribed with
capped, jittered exponential backoff, for as long as the subscription is open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc

from grpc_messenger import wire
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.client.pages import ack_keys
from grpc_messenger.errors import MessengerError, Status
from grpc_messenger.grpc_errors import map_rpc_errors
from grpc_messenger.model import Message, normalize_address, validate_address
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

# A replica that refuses for one of these reasons will refuse again: stop following it.
_FINAL_CODES = frozenset({Status.UNAUTHENTICATED, Status.PERMISSION_DENIED, Status.INVALID_ARGUMENT})


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """How patient and how eager a subscription is."""

    # re-subscribe backoff: initial * 2**attempt, capped, times a random factor in [0.5, 1]
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    # replicas send a heartbeat page every 15 s; a stream silent for longer is dead
    idle_timeout_s: float = 40.0
    # replicas end a stream after 10 min; this deadline only bounds a stream that never ends
    stream_deadline_s: float = 900.0
    # messages taken from the inbox per read (one transaction each)
    batch_max: int = 100
    # how many recent keys remember which replicas delivered them (see Subscription.delivered_by)
    remembered_keys_max: int = 10_000

    def __post_init__(self) -> None:
        assert 0 < self.backoff_initial_s <= self.backoff_max_s
        assert self.idle_timeout_s > 0
        assert self.stream_deadline_s > 0
        assert 1 <= self.batch_max <= 10_000

    def backoff_s(self, attempt: int) -> float:
        """The pause before re-subscribe number `attempt` (0-based): capped, full of jitter."""
        capped: float = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(attempt, 30))
        return capped * random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class ReplicaStream:
    """What a subscription needs of one replica: its address and a stub on its channel."""

    address: str
    stub: pb_grpc.MessengerServiceAsyncStub


@dataclass(frozen=True, slots=True)
class StreamState:
    """One replica's stream as the subscription sees it now."""

    replica: str
    connected: bool
    # why it is not connected ("" while connected or before the first try)
    error: str = ""
    # how many times it was (re)opened
    opened: int = 0
    # it refused for good (authentication, permission): no more retries
    refused: bool = False


class Subscription:
    """Every new message of one mailbox, from every replica, once. Use as `async with ... as sub: async for m in sub`.

    The subscription owns its per-replica tasks: they start on `start()` (or the
    first iteration) and `aclose()` cancels and awaits them. Iteration ends when
    the subscription is closed; it raises the refusal if every replica refused
    for good (e.g. a bad token).
    """

    def __init__(
        self,
        *,
        address: str,
        replicas: Sequence[ReplicaStream],
        inbox: LocalInbox,
        metadata: Sequence[tuple[str, str]] = (),
        call_timeout_s: float = 5.0,
        options: SubscribeOptions | None = None,
    ) -> None:
        assert replicas, "a subscription needs at least one replica"
        self.address = normalize_address(validate_address(address, what="mailbox address"))
        self._replicas = tuple(replicas)
        self._inbox = inbox
        self._metadata = tuple(metadata) or None
        self._call_timeout_s = call_timeout_s
        self.options = options or SubscribeOptions()
        self._states = {r.address: StreamState(replica=r.address, connected=False) for r in self._replicas}
        self._refusals: dict[str, MessengerError] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._refill: asyncio.Task[int] | None = None
        self._buffer: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._delivered_by: OrderedDict[str, frozenset[str]] = OrderedDict()

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Open the stream of every replica (idempotent; needs a running loop)."""
        if self._tasks or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(replica), name=f"subscribe {replica.address}") for replica in self._replicas
        ]

    async def aclose(self) -> None:
        """Stop every stream and wait for its task; unhanded messages stay new in the inbox."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
        if self._buffer:
            # taken from the inbox but never handed out: the next read shows them
            keys = [m.key for m in self._buffer]
            self._buffer.clear()
            await asyncio.to_thread(self._inbox.mark_unshown, self.address, keys)

    async def __aenter__(self) -> Subscription:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once `aclose()` was called."""
        return self._closed

    def states(self) -> list[StreamState]:
        """Each replica's stream now, in configuration order."""
        return [self._states[r.address] for r in self._replicas]

    def delivered_by(self, key: str) -> frozenset[str]:
        """The replicas whose stream brought `key` (for recent keys; empty if unknown or forgotten)."""
        return self._delivered_by.get(key, frozenset())

    # --- handing out -----------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        """The next new message; waits for one. Safe to cancel (e.g. under a timeout): nothing is lost."""
        self.start()
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            if len(self._refusals) == len(self._replicas):
                raise next(iter(self._refusals.values()))
            self._wake.clear()  # before the read: a page stored during it wakes the wait below
            if self._refill is None or self._refill.done():
                self._refill = asyncio.get_running_loop().create_task(self._take_batch(), name="subscribe refill")
            # shielded: a caller that gives up mid-read leaves the batch in the buffer, not lost
            taken = await asyncio.shield(self._refill)
            if not taken and not self._buffer and not self._closed:
                await self._wake.wait()

    async def _take_batch(self) -> int:
        batch = await asyncio.to_thread(
            functools.partial(self._inbox.take_unshown, self.address, limit=self.options.batch_max)
        )
        self._buffer.extend(batch)
        return len(batch)

    # --- one replica -------------------------------------------------------------------

    async def _follow(self, replica: ReplicaStream) -> None:
        """Keep `replica`'s stream open until closed or refused for good."""
        attempt = 0
        after_seq = 0
        while not self._closed:
            self._set_state(replica.address, connected=False, opened_more=True)
            try:
                after_seq = await self._stream(replica, after_seq)
                attempt = 0  # ended cleanly by the replica: resume right away from where it was
                continue
            except MessengerError as error:
                if error.code in _FINAL_CODES:
                    self._refuse(replica.address, error)
                    return
                reason = f"{error.code.name}: {error}"
            except TimeoutError:
                reason = f"no page or heartbeat for {self.options.idle_timeout_s:g} s"
            except sqlite3.Error as exc:  # the inbox failed: nothing was acked that is not stored
                log.warning("event=subscribe.inbox_failed replica=%s error=%r", replica.address, str(exc))
                reason = f"local inbox: {exc}"
            after_seq = 0  # the replica may have restarted from a fresh store: start from its whole queue
            self._set_state(replica.address, connected=False, error=reason)
            log.info("event=subscribe.dropped replica=%s reason=%r attempt=%d", replica.address, reason, attempt)
            await asyncio.sleep(self.options.backoff_s(attempt))
            attempt += 1

    async def _stream(self, replica: ReplicaStream, after_seq: int) -> int:
        """Follow one stream until the replica ends it; return the position to resume at."""
        call = replica.stub.Subscribe(
            wire.subscribe_request(self.address, after_seq=after_seq),
            timeout=self.options.stream_deadline_s,
            metadata=self._metadata,
        )
        try:
            while True:
                async with asyncio.timeout(self.options.idle_timeout_s):
                    with map_rpc_errors():
                        page = await call.read()
                if page is grpc.aio.EOF:
                    return after_seq
                assert isinstance(page, pb.FetchResponse)
                self._set_state(replica.address, connected=True)
                if page.messages:
                    await self._store_and_ack(replica, page)
                after_seq = page.next_after_seq
        finally:
            call.cancel()

    async def _store_and_ack(self, replica: ReplicaStream, page: pb.FetchResponse) -> None:
        messages = [
            wire.stored_message_from_pb(m) for m in page.messages if normalize_address(m.dest_email) == self.address
        ]
        fresh = await asyncio.to_thread(self._inbox.store_new, self.address, messages)
        self._remember(replica.address, messages)
        # only now, with the copy on our disk, may the replica delete its own
        await ack_keys(
            replica.stub,
            self.address,
            [m.key for m in messages],
            timeout_s=self._call_timeout_s,
            metadata=self._metadata,
        )
        if fresh:
            log.debug("event=subscribe.stored replica=%s n=%d", replica.address, len(fresh))
            self._wake.set()

    def _remember(self, replica: str, messages: list[Message]) -> None:
        for message in messages:
            holders = self._delivered_by.pop(message.key, frozenset())
            self._delivered_by[message.key] = holders | {replica}
        while len(self._delivered_by) > self.options.remembered_keys_max:
            self._delivered_by.popitem(last=False)

    def _set_state(self, replica: str, *, connected: bool, error: str = "", opened_more: bool = False) -> None:
        state = self._states[replica]
        self._states[replica] = StreamState(
            replica=replica,
            connected=connected,
            error=error if not connected else "",
            opened=state.opened + opened_more,
            refused=state.refused,
        )

    def _refuse(self, replica: str, error: MessengerError) -> None:
        log.warning("event=subscribe.refused replica=%s code=%s", replica, error.code.name)
        self._refusals[replica] = error
        state = self._states[replica]
        self._states[replica] = StreamState(
            replica=replica, connected=False, error=f"{error.code.name}: {error}", opened=state.opened, refused=True
        )
        self._wake.set()


class BlockingSubscription:
    """The synchronous twin: a plain iterator over a `Subscription` run on the messenger's loop thread."""

    def __init__(self, subscription: Subscription, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._subscription = subscription
        self._run = run

    @property
    def address(self) -> str:
        """The mailbox followed."""
        return self._subscription.address

    def states(self) -> list[StreamState]:
        """See Subscription.states."""
        return self._subscription.states()

    def __iter__(self) -> BlockingSubscription:
        return self

    def __next__(self) -> Message:
        try:
            message: Message = self._run(self._subscription.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        return message

    def next(self, *, timeout_s: float) -> Message | None:
        """The next new message, or None if none came within `timeout_s`; raises StopIteration once closed."""

        async def one() -> Message | None:
            try:
                async with asyncio.timeout(timeout_s):
                    return await self._subscription.__anext__()
            except TimeoutError:
                return None

        try:
            message: Message | None = self._run(one())
        except StopAsyncIteration:
            raise StopIteration from None
        return message

    def close(self) -> None:
        """Stop every stream (see Subscription.aclose)."""
        self._run(self._subscription.aclose())

    def __enter__(self) -> BlockingSubscription:
        self._run(_start(self._subscription))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _start(subscription: Subscription) -> None:
    subscription.start()
