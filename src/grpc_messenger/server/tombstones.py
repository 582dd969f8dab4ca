"""Tombstone purge: forget a tombstone only when the grace has passed and every peer confirms.

The grace (measured on this replica's clock against the original deletion
time) keeps tombstones longer than any sender's outbox may still retry. It is
not what keeps a deleted message deleted: a clock may be wrong, and a replica
may be away longer than any grace. What does is the peers' confirmation, asked
at purge time: a tombstone goes only when every peer answers that it holds
that key as a tombstone or not at all. A peer that is down, unreachable or
still holds the message queued keeps the tombstone here, so a replica that
comes back with old copies always meets the tombstones that delete them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from grpc_messenger.store.base import Store, TombstoneRef

log = logging.getLogger(__name__)

# (mailbox, keys) -> the keys some peer may still hold queued (all of them if a peer did not answer)
HeldElsewhere = Callable[[str, Sequence[str]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class PurgeStats:
    """What one purge pass did."""

    candidates: int
    purged: int
    kept_unconfirmed: int


async def purge_confirmed(
    store: Store,
    *,
    deleted_before_ms: int,
    held_elsewhere: HeldElsewhere | None,
    chunk: int,
    chunks_max: int,
) -> PurgeStats:
    """One bounded pass over the tombstones past the grace; `held_elsewhere` None means no peers."""
    candidates = purged = kept = 0
    after: TombstoneRef | None = None
    for _ in range(chunks_max):
        page = await store.tombstone_candidates(deleted_before_ms=deleted_before_ms, after=after, limit=chunk)
        if not page:
            break
        after = page[-1]
        candidates += len(page)
        by_mailbox: dict[str, list[TombstoneRef]] = {}
        for t in page:
            by_mailbox.setdefault(t.mailbox, []).append(t)
        confirmed: list[TombstoneRef] = []
        for mailbox, refs in by_mailbox.items():
            held = await held_elsewhere(mailbox, [t.key for t in refs]) if held_elsewhere is not None else set()
            confirmed += [t for t in refs if t.key not in held]
            kept += sum(1 for t in refs if t.key in held)
        if confirmed:
            purged += await store.forget_tombstones(confirmed)
        if len(page) < chunk:
            break
    if candidates:
        log.info("event=tombstones.purged n=%d candidates=%d kept_unconfirmed=%d", purged, candidates, kept)
    return PurgeStats(candidates=candidates, purged=purged, kept_unconfirmed=kept)
