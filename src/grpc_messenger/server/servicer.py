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
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from grpc_messenger import wire
from grpc_messenger._version import __version__
from grpc_messenger.config import PAGE_BYTES_MAX, ServerConfig
from grpc_messenger.errors import InvalidInput, KeyConflict, MessengerError, ResourceExhausted
from grpc_messenger.grpc_errors import to_grpc
from grpc_messenger.model import normalize_address, validate_address, validate_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.metrics import ReplicaMetrics
from grpc_messenger.server.subscriptions import PAGE_BYTES_MAX as SUBSCRIBE_PAGE_BYTES_MAX
from grpc_messenger.server.subscriptions import PAGE_MESSAGES_MAX as SUBSCRIBE_PAGE_MESSAGES_MAX
from grpc_messenger.server.subscriptions import MailboxSignals, SubscribeLimits
from grpc_messenger.store.base import (
    ALREADY_STORED,
    CONFLICT,
    FETCH_LIMIT_MAX,
    OUTCOME_OF_CODE,
    QUOTA_EXCEEDED,
    STORED,
    Row,
    Store,
)

log = logging.getLogger(__name__)

# Batches of one SendBatchStream call stored at once; beyond, the replica reads no
# more of the call (flow control holds the client back).
STREAM_BATCHES_IN_FLIGHT = 16

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


def mailbox_of(address: str) -> str:
    """The mailbox a request names: validated, then normalized (one mailbox however capitalised)."""
    return normalize_address(validate_address(address, what="mailbox address"))


_OUTCOME_LABEL = {
    STORED: "stored",
    ALREADY_STORED: "already_stored",
    CONFLICT: "conflict",
    QUOTA_EXCEEDED: "quota_exceeded",
}


class MessengerServicer(pb_grpc.MessengerServiceServicer):
    """Serves one Store over the MessengerService protocol.

    Replies of the hot methods (SendBatch, Fetch, Subscribe, ReceiveAll) are bytes
    assembled from stored bytes; `add_to_server` registers the handlers with a
    serializer that passes bytes through.
    """

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
        self.signals = MailboxSignals(subscribe or SubscribeLimits())
        self._send_streams: set[asyncio.Task[None]] = set()  # the request readers of open SendBatchStream calls
        self._send_streams_ended = False
        self._addresses = wire.AddressCache()
        # label children looked up once: counting is per batch and outcome, not per message
        self._counters = (
            {label: metrics.messages.labels(label) for label in (*_OUTCOME_LABEL.values(), "rejected")}
            if metrics is not None
            else {}
        )

    def _count(self, label: str, n: int = 1) -> None:
        counter = self._counters.get(label)
        if counter is not None and n:
            counter.inc(n)

    def _count_codes(self, codes: tuple[int, ...]) -> None:
        if not self._counters:
            return
        if all(code == STORED for code in codes):
            self._count("stored", len(codes))
            return
        for code, n in Counter(codes).items():
            self._count(_OUTCOME_LABEL[code], n)

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    @guarded
    async def Send(self, request: pb.SendRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SendResponse:
        request.DiscardUnknownFields()
        row, _ = wire.row_from_pb(
            request, body_bytes_max=self._config.body_bytes_max, now_ms=self._now_ms(), addresses=self._addresses
        )
        result = await self._store.put_rows([row])
        (code,) = result.codes
        self._count(_OUTCOME_LABEL[code])
        mailbox, key = row[0], row[1]
        if code == QUOTA_EXCEEDED:
            raise ResourceExhausted(result.details[0])
        if code == CONFLICT:
            raise KeyConflict(f"key {key} is already stored with different content")
        if code == STORED:
            self.signals.notify((mailbox,))
        outcome = OUTCOME_OF_CODE[code]
        return wire.send_response(outcome, key)

    @guarded
    async def SendBatch(self, request: pb.SendBatchRequest, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return await self._store_batch(request)

    async def SendBatchStream(
        self, requests: AsyncIterator[pb.SendBatchRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:  # serialized answers (bytes): see add_to_server
        """SendBatch for each request of one long-lived call, answered in order.

        Batches are stored concurrently (those that arrive together share a
        commit) and answered in the order they came. A batch that fails as a
        whole ends the call with its status, after the answers of the batches
        before it; so does a refused request (see server.auth). When the replica
        stops, the call ends once every batch it read is answered.
        """
        if self._send_streams_ended:
            return  # the replica is stopping: no answer, so the client keeps its batches in doubt
        answers: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue(STREAM_BATCHES_IN_FLIGHT)
        reader = asyncio.create_task(self._read_batches(requests, answers))
        self._send_streams.add(reader)
        try:
            while (answer := await answers.get()) is not None:
                yield await answer
            await asyncio.wait({reader})  # it put the end mark: let it finish, to learn why it ended
        except MessengerError as exc:
            await context.abort(to_grpc(exc.code), str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("event=rpc.internal_error method=SendBatchStream")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in replica; see its log")
        finally:
            self._send_streams.discard(reader)
            reader.cancel()
            while not answers.empty():  # batches never answered (the call ended): still stored, nobody waits
                left = answers.get_nowait()
                if left is not None:
                    left.add_done_callback(_forget_outcome)
        if not reader.cancelled():  # cancelled: the replica is stopping, an ordinary end
            # what ended the requests (a refusal by the guard, a broken call) ends the call, unchanged
            reader.result()

    async def _read_batches(
        self, requests: AsyncIterator[pb.SendBatchRequest], answers: asyncio.Queue[asyncio.Task[bytes] | None]
    ) -> None:
        try:
            async for request in requests:
                await answers.put(asyncio.create_task(self._store_batch(request)))
        finally:
            await answers.put(None)

    def end_send_streams(self) -> None:
        """Read no more batches on open SendBatchStream calls; each ends once its batches are answered."""
        self._send_streams_ended = True
        for reader in self._send_streams:
            reader.cancel()

    async def _store_batch(self, request: pb.SendBatchRequest) -> bytes:
        items = request.messages
        request.DiscardUnknownFields()  # stored bytes hold the known fields only: quotas count what is kept
        if len(items) > self._config.batch_messages_max:
            raise InvalidInput(f"batch has {len(items)} messages; the limit is {self._config.batch_messages_max}")
        body_bytes_max = self._config.body_bytes_max
        now_ms = self._now_ms()
        addresses = self._addresses
        rows: list[Row] = []
        keys = [""] * len(items)  # said back only where the client may not know it
        rejected: dict[int, str] = {}
        for i, item in enumerate(items):
            try:
                row, derived = wire.row_from_pb(item, body_bytes_max=body_bytes_max, now_ms=now_ms, addresses=addresses)
            except InvalidInput as exc:
                rejected[i] = str(exc)
                keys[i] = item.key
                continue
            rows.append(row)
            if derived:
                keys[i] = row[1]
        result = await self._store.put_rows(rows) if rows else None
        stored_codes = result.codes if result is not None else ()
        self._count_codes(stored_codes)
        self._count("rejected", len(rejected))
        woken = {row[0] for row, code in zip(rows, stored_codes, strict=True) if code == STORED}
        if woken:
            self.signals.notify(woken)
        if not rejected and result is not None and not result.details and all(c == STORED for c in stored_codes):
            return wire.batch_response(stored_codes, keys, {})
        codes: list[int] = []
        details: dict[int, str] = {}
        at = 0
        for i in range(len(items)):
            if i in rejected:
                codes.append(wire.REJECTED)
                details[i] = rejected[i]
                continue
            code = stored_codes[at]
            codes.append(code)
            if code != STORED:
                keys[i] = rows[at][1]
                if result is not None and at in result.details:
                    details[i] = result.details[at]
            at += 1
        return wire.batch_response(codes, keys, details)

    @guarded
    async def Fetch(self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        mailbox = mailbox_of(request.self_email)
        if request.after_seq < 0:
            raise InvalidInput("after_seq must not be negative")
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        limit = min(request.limit or self._config.fetch_limit_default, FETCH_LIMIT_MAX)
        page = await self._store.fetch_wire(mailbox, after_seq=request.after_seq, limit=limit, bytes_max=PAGE_BYTES_MAX)
        return wire.fetch_response(page.wires, page.next_after_seq, page.more)

    @guarded
    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.AckResponse:
        mailbox = mailbox_of(request.self_email)
        if len(request.keys) > self._config.ack_keys_max:
            raise InvalidInput(f"ack has {len(request.keys)} keys; the limit is {self._config.ack_keys_max}")
        keys = [validate_key(key) for key in request.keys]
        deleted = await self._store.ack(mailbox, keys)
        return wire.ack_response(deleted)

    @guarded
    async def ReceiveAll(self, request: pb.ReceiveRequest, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        mailbox = mailbox_of(request.self_email)
        # Bounded so the answer fits one frame; what is left stays queued for the next call.
        taken = await self._store.take_wire(mailbox, limit=self._config.receive_all_max, bytes_max=PAGE_BYTES_MAX)
        return wire.messages_response(taken)

    # Written with context.write rather than as a generator, so a write can time out.
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Pages of the mailbox from after_seq on, then new messages as they arrive (see the proto)."""
        try:
            mailbox = mailbox_of(request.self_email)
            if request.after_seq < 0:
                raise InvalidInput("after_seq must not be negative")
            with self.signals.listen(mailbox) as wake:
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
        limits = self.signals.limits
        ends_at = time.monotonic() + limits.lifetime_s
        first = True  # the first page is always sent, even empty: "you are subscribed"
        # bounded: one page or one heartbeat per round, and the lifetime caps the rounds' total time
        while (left_s := ends_at - time.monotonic()) > 0:
            wake.clear()  # before the read: a put landing during it wakes the next wait
            page = await self._store.fetch_wire(
                mailbox, after_seq=after_seq, limit=SUBSCRIBE_PAGE_MESSAGES_MAX, bytes_max=SUBSCRIBE_PAGE_BYTES_MAX
            )
            if page.wires or page.next_after_seq != after_seq or first:
                first = False
                after_seq = page.next_after_seq
                await self._write(context, wire.fetch_response(page.wires, after_seq, page.more))
                if page.more:
                    continue
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(limits.heartbeat_s, left_s))
            except TimeoutError:
                await self._write(context, wire.fetch_response((), after_seq, False))  # heartbeat

    async def _write(self, context: grpc.aio.ServicerContext[Any, Any], response: bytes) -> None:
        # a client that stops reading must not hold its slot (and this page) forever
        await asyncio.wait_for(context.write(response), timeout=self.signals.limits.write_timeout_s)

    @guarded
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.InfoResponse:
        counts = await self._store.counts()
        return wire.info_response(
            replica_id=self._store.replica_id,
            version=__version__,
            store=self._store.kind,
            messages=counts.messages,
            mailboxes=counts.mailboxes,
            tombstones=counts.tombstones,
            state_digest=await self._store.state_digest(),
            rebuilding=self._store.rebuilding,
        )


def _forget_outcome(task: asyncio.Task[bytes]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: its caller is gone, the store already logged any failure


_HANDLER_MAKERS: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: Any, server: grpc.aio.Server, service_name: str) -> None:
    """Register a servicer's methods like the generated add_*_to_server, answering bytes as they are.

    Every method of `service_name` in messenger.proto is registered (none can be
    forgotten); handlers may return a pb message or its serialized bytes.
    """
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        deserializer = getattr(pb, method.input_type.name).FromString
        make = _HANDLER_MAKERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=deserializer,
            response_serializer=wire.serialize_reply,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register(service.full_name, handlers)
