"""Reads from every replica: drain into the local inbox (stored before acked), or peek.

A drain goes in rounds: one page from each replica at once, the copies
de-duplicated by key before any body is decoded, the union stored in the
inbox in one transaction (one fsync for all replicas), then one Ack call per
replica for the keys it returned. The last round also takes the caller's
unshown messages in that same transaction. A replica that fails drops out
of the rounds with its failure; the others go on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from grpc_messenger import wire
from grpc_messenger.client import pages
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.client.links import Link
from grpc_messenger.errors import Failure, MessengerError, Unavailable
from grpc_messenger.model import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Drained:
    """What a drain did: pages read in all, each failed replica's failure, what it took for the caller."""

    pages_read: int
    failures: dict[int, Failure]
    more: bool  # some replica still had pages when the drain stopped (at `stored_max` or a bound)
    taken: list[Message]


async def drain(
    links: Sequence[Link],
    mailbox: str,
    inbox: LocalInbox,
    *,
    page_size: int,
    take_limit: int | None = None,
    stored_max: int | None = None,
) -> Drained:
    """Move every replica's queue of `mailbox` (normalized) into `inbox`, then take its unshown messages.

    What is taken (`inbox.take_unshown`, the first `take_limit`) is marked shown once
    everything this drain stores is stored, and only if some replica answered. The round
    that reaches the end of every replica's queue stores its messages and takes in one
    inbox transaction, then acks; an earlier stop (`stored_max`, a bound) takes while
    its last acks are in flight (it needs our disk, not theirs).
    With `stored_max`, stop after the round in which that many new messages reached the inbox.
    """
    after_seq = [0] * len(links)
    failures: dict[int, Failure] = {}
    active = list(range(len(links)))
    seen: dict[str, bool] = {}  # every key met in this drain, on any replica
    pages_read = 0
    stored = 0
    taken: list[Message] | None = None
    take = functools.partial(inbox.take_unshown, mailbox, limit=take_limit)
    for _ in range(pages.READ_PAGES_MAX):
        if not active or (stored_max is not None and stored >= stored_max):
            break
        got = await asyncio.gather(*(_fetch(links[i], mailbox, after_seq[i], page_size) for i in active))
        fresh: list[Message] = []
        to_ack: list[tuple[int, list[str]]] = []
        still: list[int] = []
        for i, page in zip(active, got, strict=True):
            if isinstance(page, Failure):
                failures[i] = page
                continue
            pages_read += 1
            new, mine = page.take_new(mailbox, seen)
            fresh.extend(new)
            if mine:
                to_ack.append((i, mine))
            if page.more:
                after_seq[i] = page.next_after_seq
                still.append(i)
        # only after the commit that holds every copy may the replicas delete theirs
        acks = [functools.partial(ack, links[i], mailbox, keys) for i, keys in to_ack]
        if not still and pages_read:
            # the end of every queue: store and take in one commit, then ack
            new_stored, taken = await asyncio.to_thread(inbox.store_and_take, mailbox, fresh, limit=take_limit)
            stored += len(new_stored)
            failed = await asyncio.gather(*(a() for a in acks))
        else:
            if fresh:
                stored += len(await asyncio.to_thread(inbox.store_new, mailbox, fresh))
            if acks and stored_max is not None and stored >= stored_max:
                taken, failed = await asyncio.gather(asyncio.to_thread(take), asyncio.gather(*(a() for a in acks)))
            else:
                failed = await asyncio.gather(*(a() for a in acks))
        for (i, _), failure in zip(to_ack, failed, strict=True):
            if failure is not None:
                failures[i] = failure
        active = [i for i in still if i not in failures]
    if taken is None:
        # no replica answered: nothing is taken, so what an earlier read stored stays for the next one
        taken = await asyncio.to_thread(take) if pages_read else []
    return Drained(pages_read, failures, more=bool(active), taken=taken)


async def _fetch(link: Link, mailbox: str, after_seq: int, page_size: int) -> wire.FetchedPage | Failure:
    try:
        return await pages.fetch_page(
            link.stub,
            mailbox,
            after_seq=after_seq,
            page_size=page_size,
            timeout_s=link.timeout_s,
            metadata=link.metadata,
        )
    except MessengerError as error:
        log.info("event=read.replica_failed replica=%s code=%s", link.address, error.code.name)
        return Failure.of(error)


async def ack(link: Link, mailbox: str, keys: Sequence[str]) -> Failure | None:
    """Ack `keys` of `mailbox` on one replica, in one call; None or why not."""
    try:
        await pages.ack_keys(link.stub, mailbox, keys, timeout_s=link.timeout_s, metadata=link.metadata)
    except MessengerError as error:
        log.info("event=read.ack_failed replica=%s code=%s", link.address, error.code.name)
        return Failure.of(error)
    return None


async def peek(link: Link, mailbox: str, *, page_size: int) -> tuple[list[Message], Failure | None]:
    """Every queued message of `mailbox` on one replica (as far as it answered), and why it stopped if it failed."""
    found: list[Message] = []
    try:
        async for page in pages.fetch_pages(
            link.stub, mailbox, page_size=page_size, timeout_s=link.timeout_s, metadata=link.metadata
        ):
            found.extend(page.messages())
    except MessengerError as error:
        return found, Failure.of(error)
    return found, None


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


def no_replica_answered(failed: Sequence[tuple[str, Failure]]) -> MessengerError:
    """Unavailable, unless every replica refused for one same final reason: then that refusal itself."""
    reasons = {failure for _, failure in failed}
    if len(reasons) == 1 and (only := next(iter(reasons))).final:
        return only.to_error()
    return Unavailable("no replica answered: " + "; ".join(f"{a}: {f}" for a, f in failed))
