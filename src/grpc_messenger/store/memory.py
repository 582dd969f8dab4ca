"""In-memory store: the same semantics as SQLite, nothing durable. For tests and demos."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from grpc_messenger.model import Message, PutOutcome
from grpc_messenger.store.base import (
    UNKNOWN_DIGEST,
    FetchPage,
    KeyState,
    MailboxDigest,
    MailboxUsage,
    ScrubPage,
    StoreCounts,
    TombstoneRef,
    decide,
    key_hash,
)


class MemoryStore:
    """Mailboxes in dicts; a global sequence number orders arrivals."""

    def __init__(self) -> None:
        self._replica_id = f"mem-{uuid.uuid4().hex[:12]}"
        self._seq = 0
        # mailbox -> key -> (seq, message); dicts keep insertion (= seq) order
        self._queued: dict[str, dict[str, tuple[int, Message]]] = {}
        # mailbox -> key -> (digest, deleted_unix_ms)
        self._tombstones: dict[str, dict[str, tuple[str, int]]] = {}
        # mailbox -> body bytes queued (for quotas; the message count is len(box))
        self._body_bytes: dict[str, int] = {}

    @property
    def kind(self) -> str:
        return "memory"

    @property
    def replica_id(self) -> str:
        return self._replica_id

    async def put_many(self, messages: Sequence[Message]) -> list[PutOutcome]:
        outcomes = []
        for message in messages:
            box = self._queued.setdefault(message.recipient, {})
            stored = box.get(message.key)
            outcome = decide(
                new_digest=message.digest,
                stored_digest=stored[1].digest if stored else None,
                tombstone_digest=self._tombstones.get(message.recipient, {}).get(message.key, (None, 0))[0],
            )
            if outcome is None:
                self._seq += 1
                box[message.key] = (self._seq, message)
                self._body_bytes[message.recipient] = self._body_bytes.get(message.recipient, 0) + _size(message)
                outcome = PutOutcome.STORED
            outcomes.append(outcome)
        return outcomes

    async def fetch(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> FetchPage:
        assert limit > 0
        page: list[Message] = []
        last = after_seq
        more = False
        size = 0
        for seq, message in self._queued.get(mailbox, {}).values():
            if seq <= after_seq:
                continue
            size += len(message.body.encode("utf-8", "surrogatepass"))
            if len(page) == limit or (page and size > bytes_max):
                more = True
                break
            page.append(message)
            last = seq
        return FetchPage(messages=tuple(page), next_after_seq=last, more=more)

    async def ack(self, mailbox: str, keys: Sequence[str]) -> int:
        now_ms = int(time.time() * 1000)
        return await self.apply_tombstones(mailbox, [(key, now_ms) for key in keys])

    async def apply_tombstones(self, mailbox: str, tombstones: Sequence[tuple[str, int]]) -> int:
        box = self._queued.get(mailbox, {})
        tombs = self._tombstones.setdefault(mailbox, {})
        deleted = 0
        for key, deleted_ms in tombstones:
            entry = box.pop(key, None)
            if entry is not None:
                deleted += 1
                self._body_bytes[mailbox] -= _size(entry[1])
            digest, earlier_ms = tombs.get(key, (entry[1].digest if entry else UNKNOWN_DIGEST, deleted_ms))
            tombs[key] = (digest, min(earlier_ms, deleted_ms))
        return deleted

    async def purge_tombstones(self, *, deleted_before_ms: int, limit: int) -> int:
        purged = 0
        for tombs in self._tombstones.values():
            for key in [k for k, (_, ms) in tombs.items() if ms < deleted_before_ms][: limit - purged]:
                del tombs[key]
                purged += 1
        return purged

    async def scrub(self, *, after_seq: int, limit: int) -> ScrubPage:
        # values in memory are never damaged: nothing to check, the pass is over at once
        return ScrubPage(next_after_seq=after_seq, checked=0, moved_aside=0, done=True)

    async def tombstone_candidates(
        self, *, deleted_before_ms: int, after: TombstoneRef | None, limit: int
    ) -> list[TombstoneRef]:
        found = sorted(
            TombstoneRef(ms, mailbox, key)
            for mailbox, tombs in self._tombstones.items()
            for key, (_, ms) in tombs.items()
            if ms < deleted_before_ms and (after is None or TombstoneRef(ms, mailbox, key) > after)
        )
        return found[:limit]

    async def forget_tombstones(self, tombstones: Sequence[TombstoneRef]) -> int:
        forgotten = 0
        for t in tombstones:
            if self._tombstones.get(t.mailbox, {}).pop(t.key, None) is not None:
                forgotten += 1
        return forgotten

    async def take(self, mailbox: str, *, limit: int, bytes_max: int) -> list[Message]:
        taken: list[Message] = []
        size = 0
        for _, message in self._queued.get(mailbox, {}).values():
            size += len(message.body.encode("utf-8", "surrogatepass"))
            if len(taken) == limit or (taken and size > bytes_max):
                break
            taken.append(message)
        await self.ack(mailbox, [m.key for m in taken])
        return taken

    async def counts(self) -> StoreCounts:
        return StoreCounts(
            messages=sum(len(b) for b in self._queued.values()),
            mailboxes=sum(1 for b in self._queued.values() if b),
            tombstones=sum(len(t) for t in self._tombstones.values()),
        )

    async def usage(self, mailboxes: Sequence[str]) -> dict[str, MailboxUsage]:
        return {
            mailbox: MailboxUsage(len(self._queued.get(mailbox, {})), self._body_bytes.get(mailbox, 0))
            for mailbox in mailboxes
        }

    async def digests(self, *, after_mailbox: str, limit: int, until_mailbox: str | None = None) -> list[MailboxDigest]:
        names = sorted(
            m
            for m in set(self._queued) | set(self._tombstones)
            if m > after_mailbox and (until_mailbox is None or m <= until_mailbox)
        )
        found = []
        for mailbox in names:
            queued, tombs = self._queued.get(mailbox, {}), self._tombstones.get(mailbox, {})
            if not queued and not tombs:
                continue
            digest = 0
            for key in queued:
                digest ^= key_hash(mailbox, "m", key)
            for key in tombs:
                digest ^= key_hash(mailbox, "t", key)
            found.append(MailboxDigest(mailbox, digest, len(queued), len(tombs)))
            if len(found) == limit:
                break
        return found

    async def state_digest(self) -> int:
        total = 0
        for d in await self.digests(after_mailbox="", limit=1 << 62):
            total ^= d.digest
        return total

    async def key_states(self, mailbox: str, *, after_key: str, limit: int) -> list[KeyState]:
        states = [KeyState(k, False) for k in self._queued.get(mailbox, {})]
        states += [KeyState(k, True, ms) for k, (_, ms) in self._tombstones.get(mailbox, {}).items()]
        return sorted((s for s in states if s.key > after_key), key=lambda s: s.key)[:limit]

    async def get_queued(self, mailbox: str, keys: Sequence[str]) -> list[Message]:
        box = self._queued.get(mailbox, {})
        return [box[k][1] for k in keys if k in box]

    async def close(self) -> None:
        return None


def _size(message: Message) -> int:
    return len(message.body.encode("utf-8", "surrogatepass"))
