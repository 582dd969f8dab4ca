"""Coalesce concurrent sends into one SendBatch call per replica.

Like Kafka's producer linger: the first message of a batch waits at most
`linger_s` for company, a full batch leaves at once. One unary call carries
many messages, and the replica commits them with one fsync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from grpc_messenger import wire
from grpc_messenger.model import Message, PutOutcome, ReplicaOutcome, ReplicaState
from grpc_messenger.proto import messenger_pb2 as pb

log = logging.getLogger(__name__)

SendBatchCall = Callable[[pb.SendBatchRequest], Awaitable[pb.SendBatchResponse]]

_DENIED_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_STATE_FOR = {
    PutOutcome.STORED: ReplicaState.STORED,
    PutOutcome.ALREADY_STORED: ReplicaState.ALREADY_STORED,
}


class Batcher:
    """Queues messages for one replica and sends them in bounded batches.

    Every submitted message gets a future that resolves to a ReplicaOutcome
    (never an exception). The batcher owns its in-flight calls; `close` waits
    for them.
    """

    def __init__(self, *, replica: str, call: SendBatchCall, linger_s: float, batch_messages_max: int) -> None:
        assert linger_s >= 0
        assert batch_messages_max >= 1
        self.replica = replica
        self._call = call
        self._linger_s = linger_s
        self._batch_messages_max = batch_messages_max
        self._pending: list[tuple[Message, asyncio.Future[ReplicaOutcome]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def submit(self, message: Message) -> asyncio.Future[ReplicaOutcome]:
        """Queue `message`; the future resolves when this replica answered for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReplicaOutcome] = loop.create_future()
        self._pending.append((message, future))
        if len(self._pending) >= self._batch_messages_max:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger_s, self.flush)
        return future

    def flush(self) -> None:
        """Send what is queued now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch = self._pending[: self._batch_messages_max]
            del self._pending[: self._batch_messages_max]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[tuple[Message, asyncio.Future[ReplicaOutcome]]]) -> None:
        request = wire.batch_request(m for m, _ in batch)
        try:
            response = await self._call(request)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            log.debug("event=send.batch_failed replica=%s n=%d code=%s", self.replica, len(batch), code.name)
            # an auth refusal is final: the outbox must not deliver it later, maybe under another token
            state = ReplicaState.DENIED if code in _DENIED_CODES else ReplicaState.FAILED
            failed = ReplicaOutcome(self.replica, state, f"{code.name}: {details}")
            for _, future in batch:
                _resolve(future, failed)
            return
        except asyncio.CancelledError:
            cancelled = ReplicaOutcome(self.replica, ReplicaState.PENDING, "client closed")
            for _, future in batch:
                _resolve(future, cancelled)
            raise
        if len(response.results) != len(batch):
            broken = ReplicaOutcome(self.replica, ReplicaState.FAILED, "replica answered a different count")
            for _, future in batch:
                _resolve(future, broken)
            return
        for (message, future), result in zip(batch, response.results, strict=True):
            _resolve(future, _outcome(self.replica, message, result))

    async def close(self) -> None:
        """Send what is queued and wait for every in-flight call."""
        self.flush()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def cancel(self) -> None:
        """Abandon in-flight calls (their futures resolve as PENDING)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._in_flight:
            task.cancel()


def _outcome(replica: str, message: Message, result: pb.SendResult) -> ReplicaOutcome:
    outcome = wire.outcome_from_pb(result.outcome)
    if result.key and result.key != message.key:
        return ReplicaOutcome(replica, ReplicaState.FAILED, "replica answered for a different key")
    if result.outcome == pb.SEND_OUTCOME_QUOTA_EXCEEDED:
        # the mailbox is full for now: retryable, unlike a rejection
        return ReplicaOutcome(replica, ReplicaState.FAILED, f"RESOURCE_EXHAUSTED: {result.error}")
    if outcome is PutOutcome.CONFLICT:
        return ReplicaOutcome(replica, ReplicaState.CONFLICT, f"key {message.key} holds other content")
    if outcome is None:
        return ReplicaOutcome(replica, ReplicaState.REJECTED, result.error or "unknown outcome")
    return ReplicaOutcome(replica, _STATE_FOR[outcome])


def _resolve(future: asyncio.Future[ReplicaOutcome], outcome: ReplicaOutcome) -> None:
    if not future.done():
        future.set_result(outcome)
