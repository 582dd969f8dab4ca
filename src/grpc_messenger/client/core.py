"""The asyncio client: fan-out with a write quorum, merged reads, exactly-once delivery.

`AsyncMessenger` keeps one long-lived channel per replica. A send goes to every
replica at once (through a per-replica Batcher) and returns as soon as W of
them acknowledged; the rest keep going in the background and show up in the
report as pending. A read drains every reachable replica page by page into
the local inbox (stored before acked), then hands out what was never shown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_messenger import wire
from grpc_messenger.client import pages
from grpc_messenger.client.batcher import Batcher, SendBatchCall, Sink
from grpc_messenger.client.inbox import LocalInbox, default_data_dir
from grpc_messenger.client.outbox import Outbox, OwedDelivery
from grpc_messenger.client.subscribe import ReplicaStream, SubscribeOptions, Subscription
from grpc_messenger.config import GRPC_MESSAGE_BYTES_MAX, ClientConfig
from grpc_messenger.errors import (
    Failure,
    InvalidInput,
    KeyConflict,
    MessengerError,
    Status,
    Unavailable,
)
from grpc_messenger.grpc_errors import map_rpc_errors
from grpc_messenger.model import (
    Draft,
    Message,
    QuorumNotReached,
    ReadReport,
    ReplicaOutcome,
    ReplicaState,
    ReplicaStatus,
    SendReport,
    build_message,
    new_key,
    validate_address,
)
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.security import tls

log = logging.getLogger(__name__)

PAGES_PER_READ_MAX = pages.PAGES_PER_READ_MAX
# One outbox flush sends at most this many rounds of owed batches.
OUTBOX_ROUNDS_MAX = 1000
OUTBOX_FLUSH_MAX = 100_000
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
    # a replica that comes back is used again within about a second
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # a connection that went silent (a cut without a reset) is noticed in ~15 s, not
    # after minutes of TCP retries; replicas allow these pings (server/replica.py)
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(slots=True)
class _Link:
    """Everything the client holds for one replica."""

    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.MessengerServiceAsyncStub
    health: health_pb2_grpc.HealthStub
    batcher: Batcher


class AsyncMessenger:
    """The asyncio client of a replica group. Use as `async with AsyncMessenger(...) as m:`."""

    def __init__(self, config: ClientConfig | None = None, *, inbox: LocalInbox | None = None) -> None:
        self.config = config or ClientConfig()
        self._inbox = inbox
        self._links: list[_Link] = []
        self._closed = False
        self._outbox: Outbox | None = None
        # (key, recipient, replica) -> what to owe; written to the outbox in small groups
        self._owed_buffer: dict[tuple[str, str, str], tuple[Message, str, Failure]] = {}
        self._in_doubt_buffer: dict[tuple[str, str, str], tuple[Message, str, Failure]] = {}
        self._paid_buffer: list[tuple[str, str, str]] = []
        # deliveries still unanswered when their send returned (owed until answered)
        self._in_doubt: set[tuple[str, str, str]] = set()
        self._persist_scheduled = False
        self._background: set[asyncio.Task[None]] = set()
        self._outbox_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncMessenger:
        self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def connect(self) -> None:
        """Open one channel per replica (lazily connected; never blocks)."""
        if self._links:
            return
        credentials = (
            tls.channel_credentials(
                ca=self.config.tls_ca, cert=self.config.tls_client_cert, key=self.config.tls_client_key
            )
            if self.config.uses_tls
            else None
        )
        for address in self.config.servers:
            if credentials is not None:
                channel = grpc.aio.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            stub = pb_grpc.MessengerServiceStub(channel)
            batcher = Batcher(
                replica=address,
                call=self._batch_call(stub),
                linger_s=self.config.linger_s,
                batch_messages_max=self.config.batch_messages_max,
            )
            self._links.append(_Link(address, channel, stub, health_pb2_grpc.HealthStub(channel), batcher))
        if self.config.outbox:
            self._outbox = Outbox.in_dir(self._data_dir())
            self._outbox_task = asyncio.get_running_loop().create_task(self._outbox_loop(), name="outbox")

    def _batch_call(self, stub: pb_grpc.MessengerServiceAsyncStub) -> SendBatchCall:
        async def call(request: pb.SendBatchRequest) -> pb.SendBatchResponse:
            return await stub.SendBatch(
                request, timeout=self.config.timeout_s, metadata=self.config.call_metadata or None
            )

        return call

    def _call_options(self) -> dict[str, Any]:
        return {"timeout_s": self.config.timeout_s, "metadata": self.config.call_metadata or None}

    def _data_dir(self) -> Path:
        return self.config.data_dir or default_data_dir()

    @property
    def inbox(self) -> LocalInbox:
        """The local inbox (opened on first use under the data directory)."""
        if self._inbox is None:
            self._inbox = LocalInbox.in_dir(self._data_dir())
        return self._inbox

    async def close(self, *, grace_s: float | None = None) -> None:
        """Finish sends in flight (bounded by their deadlines), then close channels and inbox."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(
                asyncio.gather(*(link.batcher.close() for link in self._links)),
                timeout=grace_s if grace_s is not None else self.config.timeout_s + 1,
            )
        except TimeoutError:
            for link in self._links:
                link.batcher.cancel()
        if self._outbox_task is not None:
            self._outbox_task.cancel()
            await asyncio.gather(self._outbox_task, return_exceptions=True)
        # what failed meanwhile must reach the disk before we go
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._persist_owed()
        await asyncio.gather(*(link.channel.close() for link in self._links))
        if self._outbox is not None:
            self._outbox.close()
        if self._inbox is not None:
            self._inbox.close()

    # --- writes -------------------------------------------------------------

    def _draft_to_message(self, draft: Draft, *, key: str | None = None) -> Message:
        now_ms = int(time.time() * 1000)
        return build_message(
            sender=draft.sender,
            recipient=draft.recipient,
            body=draft.body,
            key=key or draft.key or new_key(now_ms=now_ms),
            created_unix_ms=now_ms,
        )

    async def send(
        self, *, sender: str, recipient: str, body: str, key: str | None = None, settle: bool = False
    ) -> SendReport:
        """Send one message to every replica; return once W acknowledged.

        With `settle=True`, wait for every replica's answer (bounded by the
        deadline) so the report has no pending entries; success still needs W.

        Raises InvalidInput before any network traffic if the message is bad,
        KeyConflict if `key` is already used for other content, and
        QuorumNotReached (its `.report` says what each replica did) if fewer
        than W replicas stored it. Retrying with the same `key` is always safe.
        """
        message = self._draft_to_message(Draft(sender, recipient, body), key=key)
        report = await self._deliver(message, settle=settle)
        _raise_for(report)
        return report

    async def send_many(self, drafts: Iterable[Draft]) -> list[SendReport]:
        """Send many messages in batches; one report each, in order. Never raises for quorum.

        Check each report's `.ok`; invalid drafts raise InvalidInput before anything is sent.
        """
        messages = [self._draft_to_message(d) for d in drafts]
        self._require_open()
        reports: list[SendReport] = []
        chunk = self.config.batch_messages_max * 4  # bounds messages in flight
        quorum = self.config.write_quorum
        for start in range(0, len(messages), chunk):
            tallies = [self._submit(m, need=quorum) for m in messages[start : start + chunk]]
            # the caller handed over the whole list: nothing more to wait for, send it now
            for link in self._links:
                link.batcher.flush()
            for tally in tallies:
                await tally.done
            part = [tally.report() for tally in tallies]
            if self._outbox is not None:
                for message, report in zip(messages[start : start + chunk], part, strict=True):
                    self._owe_pending(message, report)
            reports.extend(part)
        return reports

    def _submit(self, message: Message, *, need: int) -> _Tally:
        """Queue `message` on every replica's batcher; the tally resolves once `need` acked or all answered."""
        loop = asyncio.get_running_loop()
        tally = _Tally(message.key, self.config.write_quorum, [link.address for link in self._links], need, loop)
        request = wire.message_to_pb(message)  # built once, copied into each replica's batch
        for index, link in enumerate(self._links):
            sink = functools.partial(tally.record, index)
            if self._outbox is not None:
                sink = functools.partial(self._record_and_note, sink, message)
            link.batcher.submit(request, sink)
        return tally

    def _record_and_note(self, record: Sink, message: Message, outcome: ReplicaOutcome) -> None:
        record(outcome)
        self._note_outcome(message, outcome)

    async def _deliver(self, message: Message, *, settle: bool = False) -> SendReport:
        self._require_open()
        tally = self._submit(message, need=len(self._links) if settle else self.config.write_quorum)
        await tally.done
        report = tally.report()
        if self._outbox is not None:
            self._owe_pending(message, report)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=send.reported key=%s acked=%d", message.key, report.acknowledged)
        return report

    # --- outbox (hinted hand-off) ---------------------------------------------

    def _owe_pending(self, message: Message, report: SendReport) -> None:
        """The send returns with these replicas unanswered: owe them until they answer.

        Most answer within milliseconds, before the owed entry is written, and then
        it is dropped unwritten; a sender that dies meanwhile still leaves its hint.
        """
        for outcome in report.replicas:
            if outcome.state is ReplicaState.PENDING:
                pair = (message.key, message.recipient, outcome.replica)
                self._in_doubt.add(pair)
                self._in_doubt_buffer[pair] = (message, outcome.replica, _NO_ANSWER_YET)
        self._schedule_persist()

    def _note_outcome(self, message: Message, outcome: ReplicaOutcome) -> None:
        """A replica answered (or gave up) for `message`: owe it there if it failed, else settle."""
        pair = (message.key, message.recipient, outcome.replica)
        if outcome.state in (ReplicaState.FAILED, ReplicaState.PENDING):
            self._in_doubt.discard(pair)
            self._in_doubt_buffer.pop(pair, None)
            self._owed_buffer[pair] = (message, outcome.replica, outcome.failure or _NO_ANSWER_YET)
            self._schedule_persist()
            return
        if not outcome.state.acknowledged:
            log.warning(
                "event=send.refused replica=%s key=%s state=%s", outcome.replica, message.key, outcome.state.value
            )
        if pair in self._in_doubt:  # owed while in doubt: settle it, on disk if it got there
            self._in_doubt.discard(pair)
            if self._in_doubt_buffer.pop(pair, None) is None:
                self._paid_buffer.append(pair)
                self._schedule_persist()

    def _schedule_persist(self) -> None:
        if self._persist_scheduled or self._closed:
            return
        if not (self._owed_buffer or self._in_doubt_buffer or self._paid_buffer):
            return
        self._persist_scheduled = True
        task = asyncio.get_running_loop().create_task(self._persist_owed_soon())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _persist_owed_soon(self) -> None:
        # gathers one failed batch into one transaction, and lets in-doubt deliveries
        # that are answered meanwhile never touch the disk
        await asyncio.sleep(self.config.outbox_pending_grace_s)
        self._persist_scheduled = False
        await self._persist_owed()

    async def _persist_owed(self) -> None:
        owed = list(self._owed_buffer.values())
        self._owed_buffer.clear()
        in_doubt = list(self._in_doubt_buffer.values())
        self._in_doubt_buffer.clear()
        paid, self._paid_buffer = self._paid_buffer, []
        outbox = self._outbox
        if outbox is None:
            return
        if owed:
            await asyncio.to_thread(outbox.owe, owed)
            log.info("event=outbox.owed n=%d", len(owed))
        if in_doubt:
            # its first call is still running: retry only once that call must have ended
            due_in_ms = int((self.config.timeout_s + 1) * 1000)
            await asyncio.to_thread(lambda: outbox.owe(in_doubt, due_in_ms=due_in_ms))
            log.debug("event=outbox.in_doubt n=%d", len(in_doubt))
        if paid:
            await asyncio.to_thread(outbox.paid, paid)

    async def _outbox_loop(self) -> None:
        while True:
            try:
                await self._retry_owed(all_pending=False)
            except Exception:
                log.exception("event=outbox.retry_failed")
            await asyncio.sleep(self.config.outbox_interval_s * (0.5 + random.random()))

    async def _retry_owed(self, *, all_pending: bool) -> None:
        outbox = self._outbox
        assert outbox is not None
        expired = await asyncio.to_thread(outbox.expire, expiry_s=self.config.outbox_expiry_s)
        if expired:
            log.warning("event=outbox.expired n=%d", expired)
        # a flush tries each owed delivery once; the background loop goes on while
        # full rounds succeed (draining a long outage fast) and otherwise waits
        limit = OUTBOX_FLUSH_MAX if all_pending else self.config.batch_messages_max * 4
        links = {link.address: link for link in self._links}
        for _ in range(OUTBOX_ROUNDS_MAX):
            due = await asyncio.to_thread(outbox.due, limit=limit, all_pending=all_pending)
            by_replica: dict[str, list[OwedDelivery]] = defaultdict(list)
            for delivery in due:
                by_replica[delivery.replica].append(delivery)
            delivered = await asyncio.gather(
                *(self._redeliver(links.get(r), r, items) for r, items in by_replica.items())
            )
            if all_pending or len(due) < limit or sum(delivered) < len(due):
                return

    async def _redeliver(self, link: _Link | None, replica: str, owed: list[OwedDelivery]) -> int:
        """Send owed messages to one replica; return how many it now has."""
        outbox = self._outbox
        assert outbox is not None
        if link is None:  # the replica is no longer configured here: keep it owed for a client that has it
            failure = Failure(Status.FAILED_PRECONDITION, "replica not configured in this client")
            await asyncio.to_thread(outbox.retry_later, owed, failure=failure)
            return 0
        done = 0
        size = self.config.batch_messages_max
        for start in range(0, len(owed), size):
            chunk = owed[start : start + size]
            try:
                with map_rpc_errors():
                    response = await link.stub.SendBatch(
                        wire.batch_request(d.message for d in chunk),
                        timeout=self.config.timeout_s,
                        metadata=self.config.call_metadata or None,
                    )
            except MessengerError as error:
                await asyncio.to_thread(outbox.retry_later, chunk, failure=Failure.of(error))
                continue
            if len(response.results) != len(chunk):
                failure = Failure(Status.INTERNAL, "replica answered a different count")
                await asyncio.to_thread(outbox.retry_later, chunk, failure=failure)
                continue
            # stored, already stored, conflict or rejected: nothing more to deliver there
            delivered = [(d.message.key, d.message.recipient, replica) for d in chunk]
            await asyncio.to_thread(outbox.paid, delivered)
            done += len(chunk)
            log.info("event=outbox.delivered replica=%s n=%d", replica, len(chunk))
        return done

    async def flush_outbox(self) -> int:
        """Try every owed delivery now (ignoring backoff); return how many are still owed."""
        self._require_open()
        if self._outbox is None:
            return 0
        await self._persist_owed()
        await self._retry_owed(all_pending=True)
        owed, _ = await asyncio.to_thread(self._outbox.counts)
        return owed

    async def outbox_owed(self) -> tuple[int, int]:
        """(deliveries still owed, deliveries expired and reported as under-replicated)."""
        self._require_open()
        if self._outbox is None:
            return (0, 0)
        await self._persist_owed()
        return await asyncio.to_thread(self._outbox.counts)

    async def outbox_listing(self, *, limit: int = 1000) -> list[OwedDelivery]:
        """Owed and expired deliveries, oldest first."""
        self._require_open()
        if self._outbox is None:
            return []
        await self._persist_owed()
        outbox = self._outbox
        return await asyncio.to_thread(lambda: outbox.listing(limit=limit))

    # --- reads --------------------------------------------------------------

    async def receive(self, address: str, *, limit: int | None = None) -> ReadReport:
        """Deliver new mail for `address`: every message exactly once, in display order.

        Drains every reachable replica into the local inbox (durably, before
        acking), acks on each replica, and returns what was never shown before.
        With `limit`, drains only about that many and returns at most `limit`
        (the rest stays queued or in the inbox for the next call), so memory
        stays bounded however large the mailbox. Raises Unavailable only if
        no replica answered at all.
        """
        validate_address(address, what="mailbox address")
        if limit is not None and limit < 1:
            raise InvalidInput("limit must be at least 1")
        self._require_open()
        pages_read, errors = await self._drain_all(address, stored_max=limit)
        answered = tuple(link.address for i, link in enumerate(self._links) if i not in errors)
        failed = tuple((self._links[i].address, err) for i, err in sorted(errors.items()))
        if not answered and not pages_read:
            raise _no_replica_answered(failed)
        fresh = await asyncio.to_thread(functools.partial(self.inbox.take_unshown, address, limit=limit))
        return ReadReport(messages=tuple(fresh), replicas_answered=answered, failures=failed)

    async def _drain_all(self, address: str, *, stored_max: int | None = None) -> tuple[int, dict[int, Failure]]:
        """Move every replica's queue into the inbox; (pages read, error per failed replica index).

        With `stored_max`, stop after the round in which that many messages
        (counted once per key) reached the inbox.

        Replicas are read in rounds: one page from each (concurrently), the
        union stored in the inbox in one transaction (one fsync for all of
        them), then each replica acks the keys it returned. Stored before
        acked holds for every replica; a replica that fails drops out of the
        rounds with its error, the others go on.
        """
        after_seq = [0] * len(self._links)
        errors: dict[int, Failure] = {}
        active = list(range(len(self._links)))
        pages_read = 0
        stored = 0
        for _ in range(PAGES_PER_READ_MAX):
            if not active or (stored_max is not None and stored >= stored_max):
                break
            pages = await asyncio.gather(*(self._fetch_page(self._links[i], address, after_seq[i]) for i in active))
            got: list[tuple[int, list[Message]]] = []
            still: list[int] = []
            for i, page in zip(active, pages, strict=True):
                if isinstance(page, Failure):
                    errors[i] = page
                    continue
                pages_read += 1
                messages = [m for m in page.messages() if m.recipient == address]
                if messages:
                    got.append((i, messages))
                if page.more:
                    after_seq[i] = page.next_after_seq
                    still.append(i)
            if got:
                union = [m for _, messages in got for m in messages]
                stored += len(await asyncio.to_thread(self.inbox.store_new, address, union))
                # only now, with the copy on our disk, may the replicas delete their own
                acks = await asyncio.gather(
                    *(self._ack_keys(self._links[i], address, [m.key for m in messages]) for i, messages in got)
                )
                for (i, _), err in zip(got, acks, strict=True):
                    if err is not None:
                        errors[i] = err
            active = [i for i in still if i not in errors]
        return pages_read, errors

    async def _fetch_page(self, link: _Link, address: str, after_seq: int) -> wire.FetchedPage | Failure:
        """One page of a replica's queue, or the error as text."""
        try:
            return await pages.fetch_page(
                link.stub, address, after_seq=after_seq, page_size=self.config.page_size, **self._call_options()
            )
        except MessengerError as error:
            log.info("event=read.replica_failed replica=%s code=%s", link.address, error.code.name)
            return Failure.of(error)

    async def _ack_keys(self, link: _Link, address: str, keys: Sequence[str]) -> Failure | None:
        """Ack `keys` on one replica; None or the error as text."""
        try:
            await pages.ack_keys(link.stub, address, keys, **self._call_options())
        except MessengerError as error:
            log.info("event=read.ack_failed replica=%s code=%s", link.address, error.code.name)
            return Failure.of(error)
        return None

    async def fetch(self, address: str) -> ReadReport:
        """Peek: every queued message of `address` on any replica, merged, nothing acked or stored."""
        validate_address(address, what="mailbox address")
        self._require_open()
        results = await asyncio.gather(*(self._peek(link, address) for link in self._links))
        merged = merge_unique(messages for messages, _ in results)
        failed = tuple(
            (link.address, err) for link, (_, err) in zip(self._links, results, strict=True) if err is not None
        )
        answered = tuple(link.address for link, (_, err) in zip(self._links, results, strict=True) if err is None)
        if not answered:
            raise _no_replica_answered(failed)
        return ReadReport(messages=tuple(merged), replicas_answered=answered, failures=failed)

    async def _peek(self, link: _Link, address: str) -> tuple[list[Message], Failure | None]:
        found: list[Message] = []
        try:
            async for page in pages.fetch_pages(
                link.stub, address, page_size=self.config.page_size, **self._call_options()
            ):
                found.extend(page.messages())
        except MessengerError as error:
            return found, Failure.of(error)
        return found, None

    async def ack(self, address: str, keys: Sequence[str]) -> dict[str, Failure | None]:
        """Delete `keys` from `address` on every replica; per replica None or the error."""
        validate_address(address, what="mailbox address")
        self._require_open()
        errors = await asyncio.gather(*(self._ack_keys(link, address, keys) for link in self._links))
        return {link.address: err for link, err in zip(self._links, errors, strict=True)}

    # --- status -------------------------------------------------------------

    async def status(self) -> list[ReplicaStatus]:
        """Reachability, health, counts and round-trip latency of every replica."""
        self._require_open()
        return list(await asyncio.gather(*(self._status_of(link) for link in self._links)))

    async def _status_of(self, link: _Link) -> ReplicaStatus:
        started = time.perf_counter()
        try:
            with map_rpc_errors():
                info = await link.stub.Info(
                    wire.info_request(), timeout=self.config.timeout_s, metadata=self.config.call_metadata or None
                )
                latency_ms = (time.perf_counter() - started) * 1000
                health = await link.health.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=self.config.timeout_s,
                    metadata=self.config.call_metadata or None,
                )
        except MessengerError as error:
            return ReplicaStatus(address=link.address, reachable=False, failure=Failure.of(error))
        return ReplicaStatus(
            address=link.address,
            reachable=True,
            serving=health.status == health_pb2.HealthCheckResponse.SERVING,
            replica_id=info.replica_id,
            version=info.version,
            store=info.store,
            messages=info.messages,
            mailboxes=info.mailboxes,
            tombstones=info.tombstones,
            state_digest=info.state_digest,
            latency_ms=latency_ms,
        )

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("this messenger is closed")
        self.connect()

    # --- push ----------------------------------------------------------------

    def subscribe(self, address: str, *, options: SubscribeOptions | None = None) -> Subscription:
        """Follow `address` on every replica: each new message once, stored and acked as `receive()` does.

        Use as `async with m.subscribe(a) as sub: async for message in sub: ...`; see
        client/subscribe.py. Close the subscription before the messenger.
        """
        self._require_open()
        return Subscription(
            address=address,
            replicas=[ReplicaStream(link.address, link.stub) for link in self._links],
            inbox=self.inbox,
            metadata=self.config.call_metadata,
            call_timeout_s=self.config.timeout_s,
            options=options,
        )


class _Tally:
    """One message's answers from every replica; `done` resolves once `need` acked or all answered.

    Replicas that answer after that still record their outcome here (nobody
    waits for it any more); the report taken earlier shows them as pending.
    """

    __slots__ = ("_acked", "_answered", "_need", "_outcomes", "_replicas", "done", "key", "write_quorum")

    def __init__(
        self, key: str, write_quorum: int, replicas: list[str], need: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        assert 1 <= need <= len(replicas)
        self.key = key
        self.write_quorum = write_quorum
        self._replicas = replicas
        self._need = need
        self._outcomes: list[ReplicaOutcome | None] = [None] * len(replicas)
        self._acked = 0
        self._answered = 0
        self.done: asyncio.Future[None] = loop.create_future()

    def record(self, index: int, outcome: ReplicaOutcome) -> None:
        """The sink of replica `index`: called once by its batcher."""
        assert self._outcomes[index] is None, "a replica answered twice for one message"
        self._outcomes[index] = outcome
        self._answered += 1
        self._acked += outcome.state.acknowledged
        if (self._acked >= self._need or self._answered == len(self._outcomes)) and not self.done.done():
            self.done.set_result(None)

    def report(self) -> SendReport:
        """What each replica did so far (PENDING where no answer came yet)."""
        outcomes = tuple(
            o if o is not None else ReplicaOutcome(r, ReplicaState.PENDING)
            for o, r in zip(self._outcomes, self._replicas, strict=True)
        )
        return SendReport(key=self.key, write_quorum=self.write_quorum, replicas=outcomes)


def _no_replica_answered(failed: tuple[tuple[str, Failure], ...]) -> MessengerError:
    """Unavailable, unless every replica refused for one same final reason: then that refusal itself."""
    reasons = {failure for _, failure in failed}
    if len(reasons) == 1 and (only := next(iter(reasons))).final:
        return only.to_error()
    return Unavailable("no replica answered: " + "; ".join(f"{a}: {f}" for a, f in failed))


_NO_ANSWER_YET = Failure(Status.DEADLINE_EXCEEDED, "no answer yet when the send returned")


def merge_unique(batches: Iterable[Iterable[Message]]) -> list[Message]:
    """Merge messages from several replicas, one per key, in display order. O(n log n) for the sort, O(n) merge."""
    by_key: dict[str, Message] = {}
    for batch in batches:
        for message in batch:
            seen = by_key.get(message.key)
            # legacy copies may carry different replica-stamped times: keep the earliest
            if seen is None or message.created_unix_ms < seen.created_unix_ms:
                by_key[message.key] = message
    return sorted(by_key.values(), key=Message.sort_key)


def _raise_for(report: SendReport) -> None:
    if report.ok:
        return
    states = [r.state for r in report.replicas]
    if ReplicaState.CONFLICT in states:
        raise KeyConflict(f"key {report.key} is already stored with different content")
    for refusal in (ReplicaState.REJECTED, ReplicaState.DENIED):
        # every replica refused it for good: raise that refusal itself
        refused = [r.failure for r in report.replicas if r.state is refusal and r.failure is not None]
        if refused and len(refused) == len(report.replicas):
            raise refused[0].to_error()
    detail = "; ".join(f"{r.replica}: {r.state.value} {r.error}".strip() for r in report.replicas)
    raise QuorumNotReached(
        f"stored on {report.acknowledged} of {len(report.replicas)} replicas, needed {report.write_quorum}: {detail}",
        report,
    )
