"""Coalesce concurrent sends into one SendBatch call per replica.

Like Kafka's producer linger: the first message of a batch waits at most
`linger_s` for company, a full batch leaves at once. One unary call carries
many messages, and the replica commits them with one fsync.

Each queued message carries a sink, a plain callback that receives this
replica's outcome for it exactly once. No future or task per message and
replica: on the hot path those cost more than the message itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc_messenger import wire
from grpc_messenger.errors import Failure, MessengerError, Status
from grpc_messenger.grpc_errors import map_rpc_errors
from grpc_messenger.model import PutOutcome, ReplicaOutcome, ReplicaState
from grpc_messenger.proto import messenger_pb2 as pb

log = logging.getLogger(__name__)

SendBatchCall = Callable[[pb.SendBatchRequest], Awaitable[pb.SendBatchResponse]]
# Receives one replica's outcome for one message, exactly once; must not raise.
Sink = Callable[[ReplicaOutcome], None]


# Well under any replica's receive limit (one full batch of maximal messages) and the
# client's own 16 MiB frame limit, whatever the body sizes.
BATCH_BYTES_MAX = 4 * 1024 * 1024


class Batcher:
    """Queues messages for one replica and sends them in bounded batches.

    Every submitted message's sink is called once with a ReplicaOutcome
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
        self._pending: list[tuple[pb.SendRequest, Sink]] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        # frozen values: one shared instance per state instead of one per message
        self._stored = ReplicaOutcome(replica, ReplicaState.STORED)
        self._already_stored = ReplicaOutcome(replica, ReplicaState.ALREADY_STORED)

    def submit(self, request: pb.SendRequest, sink: Sink) -> None:
        """Queue one message (already in wire form); `sink` gets this replica's outcome."""
        size = request.ByteSize()
        if self._pending and self._pending_bytes + size > BATCH_BYTES_MAX:
            self.flush()  # a batch is bounded in bytes too, or large bodies would exceed a frame
        self._pending.append((request, sink))
        self._pending_bytes += size
        if len(self._pending) >= self._batch_messages_max or self._pending_bytes >= BATCH_BYTES_MAX:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self.flush)

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
        self._pending_bytes = 0

    async def _send(self, batch: list[tuple[pb.SendRequest, Sink]]) -> None:
        request = wire.batch_request_of([r for r, _ in batch])
        try:
            with map_rpc_errors():
                response = await self._call(request)
        except MessengerError as error:
            failure = Failure.of(error)
            log.debug("event=send.batch_failed replica=%s n=%d code=%s", self.replica, len(batch), failure.code.name)
            # an auth refusal is final: the outbox must not deliver it later, maybe under another token
            state = ReplicaState.DENIED if failure.denied else ReplicaState.FAILED
            self._settle_all(batch, ReplicaOutcome(self.replica, state, failure))
            return
        except asyncio.CancelledError:
            self._settle_all(
                batch, ReplicaOutcome(self.replica, ReplicaState.PENDING, Failure(Status.CANCELLED, "client closed"))
            )
            raise
        if len(response.results) != len(batch):
            failure = Failure(Status.INTERNAL, "replica answered a different count")
            self._settle_all(batch, ReplicaOutcome(self.replica, ReplicaState.FAILED, failure))
            return
        for (sent, sink), result in zip(batch, response.results, strict=True):
            sink(self._outcome(sent.key, result))

    @staticmethod
    def _settle_all(batch: list[tuple[pb.SendRequest, Sink]], outcome: ReplicaOutcome) -> None:
        for _, sink in batch:
            sink(outcome)

    def _outcome(self, key: str, result: pb.SendResult) -> ReplicaOutcome:
        outcome = wire.outcome_from_pb(result.outcome)
        if result.key and result.key != key:
            failure = Failure(Status.INTERNAL, "replica answered for a different key")
            return ReplicaOutcome(self.replica, ReplicaState.FAILED, failure)
        if result.outcome == pb.SEND_OUTCOME_QUOTA_EXCEEDED:
            # the mailbox is full for now: retryable, unlike a rejection
            return ReplicaOutcome(self.replica, ReplicaState.FAILED, Failure(Status.RESOURCE_EXHAUSTED, result.error))
        if outcome is PutOutcome.STORED:
            return self._stored
        if outcome is PutOutcome.ALREADY_STORED:
            return self._already_stored
        if outcome is PutOutcome.CONFLICT:
            failure = Failure(Status.ALREADY_EXISTS, f"key {key} holds other content")
            return ReplicaOutcome(self.replica, ReplicaState.CONFLICT, failure)
        failure = Failure(Status.INVALID_ARGUMENT, result.error or "unknown outcome")
        return ReplicaOutcome(self.replica, ReplicaState.REJECTED, failure)

    async def close(self) -> None:
        """Send what is queued and wait for every in-flight call."""
        self.flush()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def cancel(self) -> None:
        """Abandon in-flight calls (their sinks get PENDING)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._in_flight:
            task.cancel()
