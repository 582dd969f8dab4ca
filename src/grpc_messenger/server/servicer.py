"""The MessengerService handlers: decode, validate, call the store, encode.

Handlers stay thin. Every error leaves through `guarded`, which turns our
errors into status codes and anything unexpected into INTERNAL without a
traceback on the wire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from grpc_messenger import wire
from grpc_messenger._version import __version__
from grpc_messenger.config import PAGE_BYTES_MAX, ServerConfig
from grpc_messenger.errors import InvalidInput, KeyConflict, MessengerError, ResourceExhausted
from grpc_messenger.grpc_errors import to_grpc
from grpc_messenger.model import Message, PutOutcome, validate_address, validate_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.limits import MailboxQuota
from grpc_messenger.server.metrics import ReplicaMetrics
from grpc_messenger.server.subscriptions import PAGE_BYTES_MAX as SUBSCRIBE_PAGE_BYTES_MAX
from grpc_messenger.server.subscriptions import PAGE_MESSAGES_MAX as SUBSCRIBE_PAGE_MESSAGES_MAX
from grpc_messenger.server.subscriptions import MailboxSignals, SubscribeLimits
from grpc_messenger.store.base import FETCH_LIMIT_MAX, Store

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def guarded(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Answer our errors with their status code and anything else with INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await handler(self, request, context)
        except MessengerError as exc:
            await context.abort(to_grpc(exc.code), str(exc))
        except Exception:
            log.exception("event=rpc.internal_error method=%s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in replica; see its log")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class MessengerServicer(pb_grpc.MessengerServiceServicer):
    """Serves one Store over the MessengerService protocol."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        metrics: ReplicaMetrics | None = None,
        *,
        subscribe: SubscribeLimits | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._signals = MailboxSignals(subscribe or SubscribeLimits())
        quota = MailboxQuota(store, messages_max=config.quota_messages_max, bytes_max=config.quota_bytes_max)
        self._quota = quota if quota.enabled else None

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.messages.labels(outcome).inc(n)

    def _decode(self, request: pb.SendRequest) -> Message:
        return wire.message_from_pb(request, body_bytes_max=self._config.body_bytes_max)

    async def _put_within_quota(self, messages: list[Message]) -> list[PutOutcome | str]:
        """Store what fits the recipients' quotas; per message its outcome, or why it did not fit."""
        if self._quota is None:
            verdicts: list[str | None] = [None] * len(messages)
            admitted = messages
            stored = await self._store.put_many(messages) if messages else []
        else:
            verdicts = await self._quota.admit(messages)
            admitted = [m for m, why in zip(messages, verdicts, strict=True) if why is None]
            try:
                stored = await self._store.put_many(admitted) if admitted else []
            finally:
                self._quota.settle(admitted)
        self._signals.notify(m.recipient for m, o in zip(admitted, stored, strict=True) if o is PutOutcome.STORED)
        outcomes = iter(stored)
        return [next(outcomes) if why is None else why for why in verdicts]

    @guarded
    async def Send(self, request: pb.SendRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SendResponse:
        message = self._decode(request)
        (outcome,) = await self._put_within_quota([message])
        if isinstance(outcome, str):
            self._count("quota_exceeded")
            raise ResourceExhausted(outcome)
        self._count(outcome.value)
        if outcome is PutOutcome.CONFLICT:
            raise KeyConflict(f"key {message.key} is already stored with different content")
        log.debug("event=send.stored key=%s outcome=%s", message.key, outcome.value)
        return pb.SendResponse(
            success=True,
            debug_message=outcome.value,
            outcome=wire.outcome_to_pb(outcome),
            key=message.key,
        )

    @guarded
    async def SendBatch(
        self, request: pb.SendBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendBatchResponse:
        if len(request.messages) > self._config.batch_messages_max:
            raise InvalidInput(
                f"batch has {len(request.messages)} messages; the limit is {self._config.batch_messages_max}"
            )
        results: list[pb.SendResult | None] = []
        valid: list[Message] = []
        for item in request.messages:
            try:
                valid.append(self._decode(item))
                results.append(None)
            except InvalidInput as exc:
                results.append(pb.SendResult(key=item.key, outcome=pb.SEND_OUTCOME_REJECTED, error=str(exc)))
        stored = await self._put_within_quota(valid)
        for outcome in stored:
            self._count("quota_exceeded" if isinstance(outcome, str) else outcome.value)
        self._count("rejected", len(results) - len(valid))
        outcomes = iter(stored)
        messages = iter(valid)
        filled = []
        for result in results:
            if result is None:
                message, outcome = next(messages), next(outcomes)
                if isinstance(outcome, str):
                    result = pb.SendResult(key=message.key, outcome=pb.SEND_OUTCOME_QUOTA_EXCEEDED, error=outcome)
                else:
                    result = pb.SendResult(key=message.key, outcome=wire.outcome_to_pb(outcome))
            filled.append(result)
        return pb.SendBatchResponse(results=filled)

    @guarded
    async def Fetch(self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.FetchResponse:
        mailbox = validate_address(request.self_email, what="mailbox address")
        if request.after_seq < 0:
            raise InvalidInput("after_seq must not be negative")
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        limit = min(request.limit or self._config.fetch_limit_default, FETCH_LIMIT_MAX)
        page = await self._store.fetch(mailbox, after_seq=request.after_seq, limit=limit, bytes_max=PAGE_BYTES_MAX)
        return pb.FetchResponse(
            messages=[wire.message_to_pb(m) for m in page.messages],
            next_after_seq=page.next_after_seq,
            more=page.more,
        )

    @guarded
    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.AckResponse:
        mailbox = validate_address(request.self_email, what="mailbox address")
        if len(request.keys) > self._config.ack_keys_max:
            raise InvalidInput(f"ack has {len(request.keys)} keys; the limit is {self._config.ack_keys_max}")
        keys = [validate_key(key) for key in request.keys]
        deleted = await self._store.ack(mailbox, keys)
        return pb.AckResponse(deleted=deleted)

    @guarded
    async def ReceiveAll(
        self, request: pb.ReceiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InboxResponse:
        mailbox = validate_address(request.self_email, what="mailbox address")
        # Bounded so the answer fits one frame; what is left stays queued for the next call.
        taken = await self._store.take(mailbox, limit=self._config.receive_all_max, bytes_max=PAGE_BYTES_MAX)
        return pb.InboxResponse(messages=[wire.message_to_pb(m) for m in taken])

    # Written with context.write rather than as a generator, so a write can time out.
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Pages of the mailbox from after_seq on, then new messages as they arrive (see the proto)."""
        try:
            mailbox = validate_address(request.self_email, what="mailbox address")
            if request.after_seq < 0:
                raise InvalidInput("after_seq must not be negative")
            with self._signals.listen(mailbox) as wake:
                await self._stream(mailbox, request.after_seq, wake, context)
        except MessengerError as exc:
            await context.abort(to_grpc(exc.code), str(exc))
        except TimeoutError:
            log.info("event=subscribe.slow_client_dropped")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream dropped: the client did not read in time")
        except Exception:
            log.exception("event=rpc.internal_error method=Subscribe")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in replica; see its log")

    async def _stream(
        self, mailbox: str, after_seq: int, wake: asyncio.Event, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        limits = self._signals.limits
        ends_at = time.monotonic() + limits.lifetime_s
        first = True  # the first page is always sent, even empty: "you are subscribed"
        # bounded: one page or one heartbeat per round, and the lifetime caps the rounds' total time
        while (left_s := ends_at - time.monotonic()) > 0:
            wake.clear()  # before the read: a put landing during it wakes the next wait
            page = await self._store.fetch(
                mailbox, after_seq=after_seq, limit=SUBSCRIBE_PAGE_MESSAGES_MAX, bytes_max=SUBSCRIBE_PAGE_BYTES_MAX
            )
            if page.messages or page.next_after_seq != after_seq or first:
                first = False
                after_seq = page.next_after_seq
                await self._write(context, page.messages, after_seq, page.more)
                if page.more:
                    continue
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(limits.heartbeat_s, left_s))
            except TimeoutError:
                await self._write(context, (), after_seq, False)  # heartbeat

    async def _write(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        messages: tuple[Message, ...],
        next_after_seq: int,
        more: bool,
    ) -> None:
        response = pb.FetchResponse(
            messages=[wire.message_to_pb(m) for m in messages], next_after_seq=next_after_seq, more=more
        )
        # a client that stops reading must not hold its slot (and this page) forever
        await asyncio.wait_for(context.write(response), timeout=self._signals.limits.write_timeout_s)

    @guarded
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.InfoResponse:
        counts = await self._store.counts()
        return pb.InfoResponse(
            replica_id=self._store.replica_id,
            version=__version__,
            store=self._store.kind,
            messages=counts.messages,
            mailboxes=counts.mailboxes,
            tombstones=counts.tombstones,
            state_digest=await self._store.state_digest(),
        )
