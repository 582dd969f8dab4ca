"""The asyncio client: fan-out with a write quorum, merged reads, exactly-once delivery.

`AsyncMessenger` keeps one long-lived channel per replica (client/links.py).
A send joins a batch that goes to every replica at once (client/fanout.py)
and returns as soon as W of them acknowledged; the rest keep going in the
background and show up in the report as pending, owed by the hinted hand-off
(client/handoff.py) until they answer. A read drains every reachable replica
page by page into the local inbox, stored before acked (client/reads.py), then
hands out what was never shown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from grpc_messenger.client import reads
from grpc_messenger.client.fanout import Coalescer, Ticket
from grpc_messenger.client.handoff import HandOff
from grpc_messenger.client.inbox import LocalInbox, default_data_dir
from grpc_messenger.client.links import Link, open_links
from grpc_messenger.client.outbox import Outbox, OwedDelivery
from grpc_messenger.client.subscribe import ReplicaStream, SubscribeOptions, Subscription
from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import Failure, InvalidInput, KeyConflict, Status
from grpc_messenger.model import (
    Draft,
    Message,
    QuorumNotReached,
    ReadReport,
    ReplicaState,
    ReplicaStatus,
    SendReport,
    build_message,
    new_key,
    normalize_address,
    validate_address,
)

log = logging.getLogger(__name__)

merge_unique = reads.merge_unique
# send_many keeps at most this many batches' worth of messages in flight
_SEND_MANY_BATCHES_IN_FLIGHT = 4


class AsyncMessenger:
    """The asyncio client of a replica group. Use as `async with AsyncMessenger(...) as m:`."""

    def __init__(self, config: ClientConfig | None = None, *, inbox: LocalInbox | None = None) -> None:
        self.config = config or ClientConfig()
        self._inbox = inbox
        self._links: list[Link] = []
        self._coalescer: Coalescer | None = None
        self._handoff: HandOff | None = None
        self._background: list[asyncio.Task[None]] = []
        self._closed = False
        self._entropy = _Entropy()
        # open subscriptions: closed (their streams stopped) before the channels and inbox they use
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()

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
        config = self.config
        self._links = open_links(config)
        self._coalescer = Coalescer(
            replicas=[link.address for link in self._links],
            calls=[link.send_bytes for link in self._links],
            write_quorum=config.write_quorum,
            linger_s=config.linger_s,
            batch_messages_max=config.batch_messages_max,
            timeout_s=config.timeout_s,
            observer=None,
        )
        if config.outbox:
            self._handoff = HandOff(
                Outbox.in_dir(self._data_dir()), grace_s=self._outbox_grace_s, deadline_s=config.timeout_s
            )
            self._coalescer.observer = self._handoff
            retries = self._handoff.run_retries(
                self._redeliver,
                interval_s=config.outbox_interval_s,
                expiry_s=config.outbox_expiry_s,
                batch_max=config.batch_messages_max,
            )
            loop = asyncio.get_running_loop()
            self._background = [
                loop.create_task(self._handoff.run_writer(), name="outbox-writer"),
                loop.create_task(retries, name="outbox-retries"),
            ]

    async def _redeliver(self, replica: str, messages: Sequence[Message]) -> Failure | None:
        link = next((link for link in self._links if link.address == replica), None)
        if link is None:  # no longer configured here: keep it owed for a client that has it
            return _NOT_CONFIGURED
        return await link.redeliver(messages)

    def _outbox_grace_s(self) -> float:
        # how long an unanswered delivery stays in memory only: a round trip late beyond
        # reasonable doubt on this cluster, so a healthy one never writes a hint
        assert self._coalescer is not None
        observed_s = self._coalescer.all_latency.bound_s
        return min(self.config.timeout_s, max(self.config.outbox_pending_grace_s, 2 * observed_s))

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
        await asyncio.gather(*(subscription.aclose() for subscription in list(self._subscriptions)))
        if self._coalescer is not None:
            try:
                await asyncio.wait_for(
                    self._coalescer.close(), timeout=grace_s if grace_s is not None else self.config.timeout_s + 1
                )
            except TimeoutError:
                self._coalescer.cancel()
                await self._coalescer.close()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._handoff is not None:
            # what is still owed or in doubt must reach the disk before we go
            await self._handoff.write_due(everything=True)
            self._handoff.outbox.close()
        await asyncio.gather(*(link.close() for link in self._links))
        if self._inbox is not None:
            self._inbox.close()

    def _require_open(self) -> Coalescer:
        if self._closed:
            raise RuntimeError("this messenger is closed")
        if self._coalescer is None:
            self.connect()
            assert self._coalescer is not None
        return self._coalescer

    # --- writes -------------------------------------------------------------

    def _draft_to_message(self, draft: Draft, *, key: str | None = None) -> Message:
        now_ms = int(time.time() * 1000)
        return build_message(
            sender=draft.sender,
            recipient=draft.recipient,
            body=draft.body,
            key=key or draft.key or new_key(now_ms=now_ms, entropy=self._entropy.take()),
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
        report = await self._require_open().submit(message).report(settle=settle)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=send.reported key=%s acked=%d", message.key, report.acknowledged)
        _raise_for(report)
        return report

    async def send_many(self, drafts: Iterable[Draft]) -> list[SendReport]:
        """Send many messages in batches; one report each, in order. Never raises for quorum.

        Check each report's `.ok`; invalid drafts raise InvalidInput before anything is sent.
        """
        messages = [self._draft_to_message(d) for d in drafts]
        coalescer = self._require_open()
        reports: list[SendReport] = []
        chunk = self.config.batch_messages_max * _SEND_MANY_BATCHES_IN_FLIGHT  # bounds messages in flight
        for start in range(0, len(messages), chunk):
            tickets: list[Ticket] = [coalescer.submit(m) for m in messages[start : start + chunk]]
            # the caller handed over the whole list: nothing more to wait for, send it now
            coalescer.flush()
            reports.extend([await ticket.report() for ticket in tickets])
        return reports

    # --- outbox (hinted hand-off) ---------------------------------------------

    async def flush_outbox(self) -> int:
        """Try every owed delivery now (ignoring backoff); return how many are still owed."""
        self._require_open()
        if self._handoff is None:
            return 0
        return await self._handoff.flush(
            self._redeliver, expiry_s=self.config.outbox_expiry_s, batch_max=self.config.batch_messages_max
        )

    async def outbox_owed(self) -> tuple[int, int]:
        """(deliveries still owed, on disk or not yet; deliveries expired and reported as under-replicated)."""
        self._require_open()
        return (0, 0) if self._handoff is None else await self._handoff.counts()

    async def outbox_listing(self, *, limit: int = 1000) -> list[OwedDelivery]:
        """Owed and expired deliveries, oldest first."""
        self._require_open()
        return [] if self._handoff is None else await self._handoff.listing(limit=limit)

    # --- reads --------------------------------------------------------------

    async def receive(self, address: str, *, limit: int | None = None) -> ReadReport:
        """Deliver new mail for `address`: every message exactly once, in display order.

        Drains every reachable replica into the local inbox (durably, before
        acking), acks on each replica, and returns what was never shown before.
        With `limit`, drains only about that many and returns at most `limit`
        (the rest stays queued or in the inbox for the next call), so memory
        stays bounded however large the mailbox; `more` says whether to call
        again to reach the end of what the replicas held. Addresses compare
        case-insensitively. Raises Unavailable only if no replica answered at all.
        """
        mailbox = normalize_address(validate_address(address, what="mailbox address"))
        if limit is not None and limit < 1:
            raise InvalidInput("limit must be at least 1")
        self._require_open()
        drained = await reads.drain(
            self._links, mailbox, self.inbox, page_size=self.config.page_size, take_limit=limit, stored_max=limit
        )
        answered = tuple(link.address for i, link in enumerate(self._links) if i not in drained.failures)
        failed = tuple((self._links[i].address, f) for i, f in sorted(drained.failures.items()))
        if not answered and not drained.pages_read:
            raise reads.no_replica_answered(failed)
        fresh = drained.taken
        # with `limit`, a full slice may leave more in the inbox; otherwise only a replica's next page can
        more = drained.more or (limit is not None and len(fresh) >= limit)
        return ReadReport(messages=tuple(fresh), replicas_answered=answered, failures=failed, more=more)

    async def fetch(self, address: str) -> ReadReport:
        """Peek: every queued message of `address` on any replica, merged, nothing acked or stored."""
        mailbox = normalize_address(validate_address(address, what="mailbox address"))
        self._require_open()
        page_size = self.config.page_size
        results = await asyncio.gather(*(reads.peek(link, mailbox, page_size=page_size) for link in self._links))
        merged = merge_unique(messages for messages, _ in results)
        pairs = list(zip(self._links, results, strict=True))
        failed = tuple((link.address, f) for link, (_, f) in pairs if f is not None)
        answered = tuple(link.address for link, (_, f) in pairs if f is None)
        if not answered:
            raise reads.no_replica_answered(failed)
        return ReadReport(messages=tuple(merged), replicas_answered=answered, failures=failed)

    async def ack(self, address: str, keys: Sequence[str]) -> dict[str, Failure | None]:
        """Delete `keys` from `address` on every replica, one call each; per replica None or its failure."""
        mailbox = normalize_address(validate_address(address, what="mailbox address"))
        self._require_open()
        failures = await asyncio.gather(*(reads.ack(link, mailbox, keys) for link in self._links))
        return {link.address: failure for link, failure in zip(self._links, failures, strict=True)}

    # --- status -------------------------------------------------------------

    async def status(self) -> list[ReplicaStatus]:
        """Reachability, health, counts and round-trip latency of every replica."""
        self._require_open()
        return list(await asyncio.gather(*(link.status() for link in self._links)))

    # --- push ----------------------------------------------------------------

    def subscribe(self, address: str, *, options: SubscribeOptions | None = None) -> Subscription:
        """Follow `address` on every replica: each new message once, stored and acked as `receive()` does.

        Use as `async with m.subscribe(a) as sub: async for message in sub: ...`; see
        client/subscribe.py. Closing the messenger closes its subscriptions first.
        """
        self._require_open()
        subscription = Subscription(
            address=address,
            replicas=[ReplicaStream(link.address, link.stub) for link in self._links],
            inbox=self.inbox,
            metadata=self.config.call_metadata,
            call_timeout_s=self.config.timeout_s,
            options=options,
        )
        self._subscriptions.add(subscription)
        return subscription


class _Entropy:
    """os.urandom read in bulk: one system call per few hundred keys instead of one per key.

    Per messenger, and a messenger (its gRPC channels) never crosses a fork, so no
    two processes hand out the same bytes.
    """

    __slots__ = ("_buffer", "_offset")

    _CHUNK_BYTES = 4000
    _KEY_BYTES = 10

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self) -> bytes:
        """10 fresh random bytes, never handed out twice."""
        if self._offset + self._KEY_BYTES > len(self._buffer):
            self._buffer, self._offset = os.urandom(self._CHUNK_BYTES), 0
        start = self._offset
        self._offset = start + self._KEY_BYTES
        return self._buffer[start : self._offset]


_NOT_CONFIGURED = Failure(Status.FAILED_PRECONDITION, "replica not configured in this client")


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
