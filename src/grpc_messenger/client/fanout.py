"""Fan-out: one coalescer for all replicas, each batch serialized once, tallied once per replica.

Sends from many callers are gathered into batches the way Nagle's algorithm
gathers bytes: with no batch in flight a message leaves on the next loop tick;
while one is in flight, messages wait for it to reach its quorum (bounded by a
stall cap derived from the latency observed), then leave together. Each batch
is serialized once and the same bytes go to every replica.

A batch keeps one answer per replica: a replica that stored every message
costs a counter increment, not a callback per message. Only a replica whose
answers differ message by message is tallied message by message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from grpc_messenger import wire
from grpc_messenger.errors import Failure, MessengerError, Status
from grpc_messenger.grpc_errors import map_rpc_errors
from grpc_messenger.model import Message, ReplicaOutcome, ReplicaState, SendReport

log = logging.getLogger(__name__)

# Well under any replica's receive limit (one full batch of maximal messages) and the
# client's own 16 MiB frame limit, whatever the body sizes.
BATCH_BYTES_MAX = 4 * 1024 * 1024
# Per message on the wire besides its strings (tags, lengths, time, id).
_ENVELOPE_BYTES = 64

# Sends one serialized SendBatchRequest to one replica; returns its response (grpc errors raise).
SendBytes = Callable[[bytes], Awaitable[wire.SendBatchResponse]]


class Observer(Protocol):
    """Who hears of every batch's progress (the hinted hand-off)."""

    def on_answer(
        self, token: int, messages: Sequence[Message], replica: str, answers: Sequence[ReplicaOutcome]
    ) -> None:
        """`replica` answered for batch `token` (one outcome per message, or one shared by all)."""

    def on_quorum(self, token: int, messages: Sequence[Message], unanswered: Sequence[str]) -> None:
        """Batch `token` reached its quorum (or every replica answered); `unanswered` have not answered yet."""


class LatencyEstimate:
    """Smoothed round trip and its variation, as TCP's retransmission timer keeps them (RFC 6298)."""

    __slots__ = ("rtt_s", "rtt_var_s")

    def __init__(self, initial_s: float) -> None:
        self.rtt_s = initial_s
        self.rtt_var_s = initial_s / 2

    def add(self, sample_s: float) -> None:
        """Fold in one observed round trip."""
        self.rtt_var_s = 0.75 * self.rtt_var_s + 0.25 * abs(self.rtt_s - sample_s)
        self.rtt_s = 0.875 * self.rtt_s + 0.125 * sample_s

    @property
    def bound_s(self) -> float:
        """A round trip that is late beyond reasonable doubt (srtt + 4 rttvar)."""
        return self.rtt_s + 4 * self.rtt_var_s


class Batch:
    """Messages that travel together to every replica, and what each replica answered."""

    __slots__ = (
        "_acked_all",
        "_acked_extra",
        "_answered",
        "_answers",
        "_loop",
        "_pending",
        "_replicas",
        "_settling",
        "_shared",
        "_waiting",
        "answered",
        "messages",
        "payload",
        "quorum",
        "sent_at_s",
        "token",
        "write_quorum",
    )

    def __init__(
        self,
        token: int,
        replicas: Sequence[str],
        write_quorum: int,
        pending: Sequence[ReplicaOutcome],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        assert 1 <= write_quorum <= len(replicas)
        self.token = token
        self.messages: list[Message] = []  # grows until sealed
        self.payload = b""
        self.write_quorum = write_quorum
        self._replicas = replicas
        self._pending = pending
        self._answers: list[Sequence[ReplicaOutcome] | None] = [None] * len(replicas)
        self._answered = 0
        self._acked_all = 0  # replicas that acknowledged every message
        self._acked_extra: list[int] | None = None  # per message, from replicas that answered unevenly
        # (answers so far, outcomes): while every answer is one for the whole batch
        self._shared: tuple[int, tuple[ReplicaOutcome, ...]] | None = None
        self.sent_at_s = 0.0
        self.quorum: asyncio.Future[None] = loop.create_future()
        self.answered: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        # each caller waits on a future of its own: one it gives up on is cancelled alone
        self._waiting: list[asyncio.Future[None]] = []  # for the quorum
        self._settling: list[asyncio.Future[None]] = []  # for every answer

    def seal(self) -> None:
        """No more messages: serialize once (the same bytes go to every replica)."""
        assert self.messages
        assert not self.payload
        self.payload = wire.batch_payload(self.messages)
        self.sent_at_s = time.perf_counter()

    def record(self, index: int, answers: Sequence[ReplicaOutcome]) -> bool:
        """Replica `index` answered (one outcome per message, or one for all); True if quorum was reached now."""
        assert self._answers[index] is None, "a replica answered twice for one batch"
        self._answers[index] = answers
        self._answered += 1
        if len(answers) == 1 and len(self.messages) > 1:
            self._acked_all += answers[0].state.acknowledged
        elif all(a.state.acknowledged for a in answers):
            self._acked_all += 1
        else:
            if self._acked_extra is None:
                self._acked_extra = [0] * len(self.messages)
            extra = self._acked_extra
            for i, answer in enumerate(answers):
                extra[i] += answer.state.acknowledged
        if self._answered == len(self._replicas) and not self.answered.done():
            self.answered.set_result(None)
            _wake(self._settling)
        if not self.quorum.done() and (self._answered == len(self._replicas) or self._reached()):
            self.quorum.set_result(None)
            _wake(self._waiting)
            return True
        return False

    def waiter(self, *, settle: bool) -> asyncio.Future[None]:
        """A future of the caller's own, done with the quorum (with `settle`, once every replica answered)."""
        future: asyncio.Future[None] = self._loop.create_future()
        if (self.answered if settle else self.quorum).done():
            future.set_result(None)
        else:
            (self._settling if settle else self._waiting).append(future)
        return future

    def _reached(self) -> bool:
        if self._acked_extra is None:
            return self._acked_all >= self.write_quorum
        return self._acked_all + min(self._acked_extra) >= self.write_quorum

    def unanswered(self) -> list[str]:
        """Replicas that have not answered for this batch yet."""
        return [r for r, a in zip(self._replicas, self._answers, strict=True) if a is None]

    def report(self, position: int) -> SendReport:
        """What each replica did so far for the message at `position` (PENDING where no answer came yet)."""
        shared = self._shared
        if shared is not None and shared[0] == self._answered:
            outcomes = shared[1]  # every message of the batch reads the same: built once
        else:
            outcomes = tuple(
                pending if answers is None else answers[0] if len(answers) == 1 else answers[position]
                for answers, pending in zip(self._answers, self._pending, strict=True)
            )
            if self._acked_extra is None and all(a is None or len(a) == 1 for a in self._answers):
                self._shared = (self._answered, outcomes)
        return SendReport(key=self.messages[position].key, write_quorum=self.write_quorum, replicas=outcomes)


class Ticket:
    """Where one submitted message travels: its batch and its position there."""

    __slots__ = ("batch", "position")

    def __init__(self, batch: Batch, position: int) -> None:
        self.batch = batch
        self.position = position

    async def report(self, *, settle: bool = False) -> SendReport:
        """Wait for the quorum (with `settle`, for every replica) and report."""
        batch = self.batch
        if not (batch.answered if settle else batch.quorum).done():
            # its own future, not the batch's: a caller that gives up must not cancel it for the others
            await batch.waiter(settle=settle)
        return batch.report(self.position)


class Coalescer:
    """Gathers messages into batches and sends each batch to every replica.

    `submit` never blocks; the ticket it returns resolves once W replicas
    acknowledged (or all answered). The coalescer owns its calls: `close`
    waits for them, `cancel` abandons them (their replicas then show PENDING).
    """

    def __init__(
        self,
        *,
        replicas: Sequence[str],
        calls: Sequence[SendBytes],
        write_quorum: int,
        linger_s: float,
        batch_messages_max: int,
        timeout_s: float,
        observer: Observer | None,
    ) -> None:
        assert len(replicas) == len(calls) >= 1
        assert linger_s >= 0
        assert batch_messages_max >= 1
        self._replicas = tuple(replicas)
        self._calls = tuple(calls)
        self._write_quorum = write_quorum
        self._linger_s = linger_s
        self._batch_messages_max = batch_messages_max
        self._timeout_s = timeout_s
        self.observer = observer
        self._forming: Batch | None = None
        self._waiting_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._batches_before_quorum = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count(1)
        self.quorum_latency = LatencyEstimate(initial_s=min(0.01, timeout_s))
        self.all_latency = LatencyEstimate(initial_s=min(0.01, timeout_s))
        # frozen values: one shared instance per replica and state instead of one per message
        self._pending = tuple(ReplicaOutcome(r, ReplicaState.PENDING) for r in self._replicas)
        self._stored = tuple(ReplicaOutcome(r, ReplicaState.STORED) for r in self._replicas)
        self._already = tuple(ReplicaOutcome(r, ReplicaState.ALREADY_STORED) for r in self._replicas)

    def submit(self, message: Message) -> Ticket:
        """Queue one message for every replica."""
        size = _wire_size(message)
        if self._forming is not None and self._waiting_bytes + size > BATCH_BYTES_MAX:
            self.flush()  # bounded in bytes too, or large bodies would exceed a frame
        batch = self._forming
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._forming = Batch(next(self._tokens), self._replicas, self._write_quorum, self._pending, loop)
        ticket = Ticket(batch, len(batch.messages))
        batch.messages.append(message)
        self._waiting_bytes += size
        if len(batch.messages) >= self._batch_messages_max:
            self.flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if self._batches_before_quorum == 0 or self._linger_s == 0:
                # nothing in flight: leave on the next tick, with whatever this tick adds
                self._flush_handle = loop.call_soon(self.flush)
            else:
                # a batch is in flight: wait for it (its quorum flushes us), but never longer than this
                self._flush_handle = loop.call_later(self._stall_s(), self.flush)
        return ticket

    def _flush_after_ticks(self, ticks: int) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        loop = asyncio.get_running_loop()
        self._flush_handle = (
            loop.call_soon(self.flush) if ticks <= 1 else loop.call_soon(self._flush_after_ticks, ticks - 1)
        )

    def _stall_s(self) -> float:
        return min(self._timeout_s, max(self._linger_s, 2 * self.quorum_latency.bound_s))

    def flush(self) -> None:
        """Send what is waiting now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch = self._forming
        if batch is None:
            return
        self._forming, self._waiting_bytes = None, 0
        batch.seal()
        loop = asyncio.get_running_loop()
        self._batches_before_quorum += 1
        for index in range(len(self._replicas)):
            task = loop.create_task(self._send(batch, index))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: Batch, index: int) -> None:
        replica = self._replicas[index]
        try:
            with map_rpc_errors():
                response = await self._calls[index](batch.payload)
        except MessengerError as error:
            failure = Failure.of(error)
            log.debug("event=send.batch_failed replica=%s n=%d code=%s", replica, len(batch.messages), error.code.name)
            # an auth refusal is final: the outbox must not deliver it later, maybe under another token
            state = ReplicaState.DENIED if failure.denied else ReplicaState.FAILED
            self._answer(batch, index, (ReplicaOutcome(replica, state, failure),))
            return
        except asyncio.CancelledError:
            self._answer(batch, index, (ReplicaOutcome(replica, ReplicaState.PENDING, _CLOSED),))
            raise
        answers = wire.send_outcomes(
            response, batch.messages, replica=replica, stored=self._stored[index], already=self._already[index]
        )
        self._answer(batch, index, answers)

    def _answer(self, batch: Batch, index: int, answers: Sequence[ReplicaOutcome]) -> None:
        elapsed_s = time.perf_counter() - batch.sent_at_s
        reached = batch.record(index, answers)
        if self.observer is not None:
            self.observer.on_answer(batch.token, batch.messages, self._replicas[index], answers)
        if reached:
            self.quorum_latency.add(elapsed_s)
            self._batches_before_quorum -= 1
            if self.observer is not None:
                self.observer.on_quorum(batch.token, batch.messages, batch.unanswered())
            if self._forming is not None and self._batches_before_quorum == 0:
                # what gathered while this batch flew leaves now, after the callers this
                # quorum wakes had their turn to send again (a few loop ticks): one batch, not two
                self._flush_after_ticks(_REJOIN_TICKS)
        if batch.answered.done() and answers[0].failure is None:
            self.all_latency.add(elapsed_s)

    async def close(self) -> None:
        """Send what is waiting and wait for every call (each bounded by its deadline)."""
        self.flush()
        for _ in range(1000):  # bounded: a flush on quorum may start new calls while we wait
            if not self._tasks:
                return
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel(self) -> None:
        """Abandon calls in flight (their replicas report PENDING)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for task in self._tasks:
            task.cancel()


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for future in waiters:
        if not future.done():  # a caller that gave up cancelled its own
            future.set_result(None)
    waiters.clear()


_CLOSED = Failure(Status.CANCELLED, "client closed")
# Loop ticks between a quorum and a caller's next submit: the task's wake-up, with room
# for a caller that takes a step or two before it sends again.
_REJOIN_TICKS = 3


def _wire_size(message: Message) -> int:
    # the body dominates; ASCII is one byte a character, anything else at most four
    body = message.body
    body_bytes = len(body) if body.isascii() else 4 * len(body)
    return body_bytes + len(message.sender) + len(message.recipient) + len(message.key) + _ENVELOPE_BYTES
