"""Hinted hand-off: deliveries a replica missed are owed, written to the outbox, and retried.

`HandOff` hears every batch's progress from the fan-out and keeps three
buffers, all per batch and replica, never per message on the happy path:

- owed: a replica failed (unreachable, deadline, full mailbox) or the client
  closed before it answered; written at the next write;
- in doubt: a replica had not answered when the batch reached its quorum
  (the send returned); written only once a grace passes without an answer,
  a grace derived from the latency observed, so a healthy cluster never
  writes a hint; an answer settles it (and pays it, if it was written);
- paid: in-doubt deliveries already written whose replica since answered.

Writes go to the outbox (client/outbox.py, the table) in one transaction
per write, one write at a time. The background loop re-sends what is due
with capped backoff until each replica has it or it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from grpc_messenger.client.outbox import Outbox, OwedDelivery
from grpc_messenger.errors import Failure, Status
from grpc_messenger.model import Message, ReplicaOutcome, ReplicaState

log = logging.getLogger(__name__)

# One flush or background round re-sends at most this many owed deliveries per round,
# and at most this many rounds: every loop has a bound.
RETRY_ROUNDS_MAX = 1000
FLUSH_DELIVERIES_MAX = 100_000

# Re-sends `messages` to one replica; None once it holds them (stored, already stored, or
# refused for good), else why not.
Redeliver = Callable[[str, Sequence[Message]], Awaitable[Failure | None]]

_NO_ANSWER_YET = Failure(Status.DEADLINE_EXCEEDED, "no answer yet when the send returned")
_RETRYABLE = (ReplicaState.FAILED, ReplicaState.PENDING)


@dataclass(frozen=True, slots=True)
class Writes:
    """One transaction's worth of outbox changes."""

    owe: tuple[tuple[Message, str, Failure], ...] = ()
    in_doubt: tuple[tuple[Message, str, Failure], ...] = ()
    paid: tuple[tuple[str, str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.owe or self.in_doubt or self.paid)


@dataclass(slots=True)
class _Doubt:
    messages: Sequence[Message]
    since_s: float
    written: bool = False


class HandOff:
    """Owes deliveries that replicas missed; owns their in-memory state and the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        grace_s: Callable[[], float],
        deadline_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self._grace_s = grace_s
        self._deadline_s = deadline_s
        self._clock = clock
        self._owed: list[tuple[Message, str, Failure]] = []
        # (batch, replica) -> its messages, in the order the batches reached quorum
        self._in_doubt: dict[tuple[int, str], _Doubt] = {}
        self._paid: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()

    # --- what the fan-out tells us (on the event loop; cheap) -----------------

    def on_quorum(self, token: int, messages: Sequence[Message], unanswered: Sequence[str]) -> None:
        """The send of batch `token` returns with `unanswered` replicas still owed an answer."""
        if not unanswered:
            return
        now_s = self._clock()
        for replica in unanswered:
            self._in_doubt[(token, replica)] = _Doubt(messages, now_s)
        self._wake.set()

    def on_answer(
        self, token: int, messages: Sequence[Message], replica: str, answers: Sequence[ReplicaOutcome]
    ) -> None:
        """`replica` answered for batch `token`: settle what it holds, owe what it failed."""
        doubt = self._in_doubt.pop((token, replica), None)
        uniform = len(answers) == 1
        first = answers[0]
        failed: list[tuple[Message, Failure]] = []
        if first.state.acknowledged and (uniform or all(a.state.acknowledged for a in answers)):
            pass  # the happy path: nothing owed
        elif uniform:
            failed = [(m, first.failure or _NO_ANSWER_YET) for m in messages] if first.state in _RETRYABLE else []
        else:
            pairs = zip(messages, answers, strict=True)
            failed = [(m, a.failure or _NO_ANSWER_YET) for m, a in pairs if a.state in _RETRYABLE]
        refused = {a.state for a in answers if not a.state.acknowledged and a.state not in _RETRYABLE}
        for state in refused:
            log.warning("event=send.refused replica=%s batch=%d state=%s", replica, token, state.value)
        if failed:
            self._owed.extend((m, replica, failure) for m, failure in failed)
        if doubt is not None and doubt.written:
            # on disk while in doubt: what the replica now holds (or refused for good) is paid
            owed_keys = {m.key for m, _ in failed}
            self._paid.extend((m.key, m.recipient, replica) for m in messages if m.key not in owed_keys)
        if failed or self._paid:
            self._wake.set()

    # --- writing ------------------------------------------------------------

    def unwritten(self) -> int:
        """Deliveries owed or in doubt that are not on disk yet."""
        return len(self._owed) + sum(len(d.messages) for d in self._in_doubt.values() if not d.written)

    def next_due_s(self) -> float | None:
        """Seconds until the next write is due (0 for now), or None when nothing waits."""
        if self._owed or self._paid:
            return 0.0
        grace_s = self._grace_s()
        for doubt in self._in_doubt.values():  # oldest first: the first unwritten decides
            if not doubt.written:
                return max(0.0, doubt.since_s + grace_s - self._clock())
        return None

    def take_writes(self, *, everything: bool = False) -> Writes:
        """Empty the buffers into one Writes: owed and paid, and in-doubt entries past their grace (or all)."""
        cutoff_s = float("inf") if everything else self._clock() - self._grace_s()
        in_doubt: list[tuple[Message, str, Failure]] = []
        for (_, replica), doubt in self._in_doubt.items():
            if doubt.since_s > cutoff_s:
                break  # ordered by since_s: the rest are younger
            if not doubt.written:
                doubt.written = True
                in_doubt.extend((m, replica, _NO_ANSWER_YET) for m in doubt.messages)
        writes = Writes(owe=tuple(self._owed), in_doubt=tuple(in_doubt), paid=tuple(self._paid))
        self._owed, self._paid = [], []
        return writes

    async def write_due(self, *, everything: bool = False) -> None:
        """Write what is due (with `everything`, all that is owed or in doubt); one write at a time."""
        async with self._write_lock:
            writes = self.take_writes(everything=everything)
            if writes:
                await asyncio.to_thread(self._apply, writes)

    def _apply(self, writes: Writes) -> None:
        if writes.owe:
            self.outbox.owe(writes.owe)
            log.info("event=outbox.owed n=%d", len(writes.owe))
        if writes.in_doubt:
            # first due only after the call's own deadline: it may still be answered
            self.outbox.owe(writes.in_doubt, due_in_ms=int(self._deadline_s * 1000) + 1000)
            log.info("event=outbox.in_doubt n=%d", len(writes.in_doubt))
        if writes.paid:
            self.outbox.paid(writes.paid)

    async def run_writer(self) -> None:
        """Background: write each buffer when it falls due. Cancel to stop (then call `write_due(everything=True)`)."""
        while True:
            delay_s = self.next_due_s()
            if delay_s is None or delay_s > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay_s)
            try:
                # shielded: a write taken from the buffers finishes even if we are cancelled
                # meanwhile (close then waits for it on the lock before writing the rest)
                await asyncio.shield(self.write_due())
            except Exception:
                log.exception("event=outbox.write_failed")
                await asyncio.sleep(1.0)  # a failing disk is not retried in a tight loop

    # --- what the API reports -------------------------------------------------

    async def counts(self) -> tuple[int, int]:
        """(deliveries owed, on disk or not yet; deliveries expired)."""
        await self.write_due()
        owed, expired = await asyncio.to_thread(self.outbox.counts)
        return owed + self.unwritten(), expired

    async def listing(self, *, limit: int) -> list[OwedDelivery]:
        """Owed and expired deliveries, oldest first (everything in memory written first)."""
        await self.write_due(everything=True)
        outbox = self.outbox
        return await asyncio.to_thread(lambda: outbox.listing(limit=limit))

    async def flush(self, redeliver: Redeliver, *, expiry_s: float, batch_max: int) -> int:
        """Write everything, try every owed delivery once now (ignoring backoff); how many are still owed."""
        await self.write_due(everything=True)
        await self.retry(redeliver, all_pending=True, expiry_s=expiry_s, batch_max=batch_max)
        owed, _ = await asyncio.to_thread(self.outbox.counts)
        return owed

    # --- re-sending ---------------------------------------------------------

    async def run_retries(self, redeliver: Redeliver, *, interval_s: float, expiry_s: float, batch_max: int) -> None:
        """Background: re-send what is due, about every `interval_s` (jittered). Cancel to stop."""
        while True:
            try:
                await self.retry(redeliver, all_pending=False, expiry_s=expiry_s, batch_max=batch_max)
            except Exception:
                log.exception("event=outbox.retry_failed")
            await asyncio.sleep(interval_s * (0.5 + random.random()))

    async def retry(self, redeliver: Redeliver, *, all_pending: bool, expiry_s: float, batch_max: int) -> None:
        """Re-send owed deliveries: those due, or (`all_pending`) each once, ignoring backoff."""
        outbox = self.outbox
        expired = await asyncio.to_thread(outbox.expire, expiry_s=expiry_s)
        if expired:
            log.warning("event=outbox.expired n=%d", expired)
        # a flush tries each owed delivery once; the background loop goes on while
        # full rounds succeed (draining a long outage fast) and otherwise waits
        limit = FLUSH_DELIVERIES_MAX if all_pending else batch_max * 4
        for _ in range(RETRY_ROUNDS_MAX):
            due = await asyncio.to_thread(outbox.due, limit=limit, all_pending=all_pending)
            by_replica: dict[str, list[OwedDelivery]] = defaultdict(list)
            for delivery in due:
                by_replica[delivery.replica].append(delivery)
            delivered = await asyncio.gather(
                *(self._redeliver(redeliver, r, items, batch_max) for r, items in by_replica.items())
            )
            if all_pending or len(due) < limit or sum(delivered) < len(due):
                return

    async def _redeliver(self, redeliver: Redeliver, replica: str, owed: list[OwedDelivery], batch_max: int) -> int:
        """Re-send owed messages to one replica in batches; how many it now has."""
        done = 0
        for start in range(0, len(owed), batch_max):
            chunk = owed[start : start + batch_max]
            failure = await redeliver(replica, [d.message for d in chunk])
            if failure is not None:
                await asyncio.to_thread(self.outbox.retry_later, chunk, failure=failure)
                continue
            await asyncio.to_thread(self.outbox.paid, [(d.message.key, d.message.recipient, replica) for d in chunk])
            done += len(chunk)
            log.info("event=outbox.delivered replica=%s n=%d", replica, len(chunk))
        return done
