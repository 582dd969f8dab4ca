"""In-memory store: the same semantics as SQLite, nothing durable. For tests and demos."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from grpc_messenger import wire
from grpc_messenger.model import Message, PutOutcome
from grpc_messenger.store.base import (
    CODE_OF_OUTCOME,
    OUTCOME_OF_CODE,
    QUOTA_EXCEEDED,
    STORED,
    UNKNOWN_DIGEST,
    FetchPage,
    KeyState,
    MailboxDigest,
    MailboxUsage,
    PutResult,
    Quota,
    Row,
    ScrubPage,
    StoreCounts,
    TombstoneRef,
    WirePage,
    decide,
    key_hash,
)


class MemoryStore:
    """Mailboxes in dicts; a global sequence number orders arrivals."""

    def __init__(self, *, quota: Quota | None = None) -> None:
        self._replica_id = f"mem-{uuid.uuid4().hex[:12]}"
        self._quota = quota if quota is not None and quota.enabled else None
        self._rebuilding = True  # a memory store starts empty every time
        self._seq = 0
        # mailbox -> key -> (seq, digest, body bytes, wire); dicts keep insertion (= seq) order
        self._queued: dict[str, dict[str, tuple[int, str, int, bytes]]] = {}
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

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding

    async def mark_rebuilt(self) -> None:
        self._rebuilding = False

    async def put_rows(self, rows: Sequence[Row]) -> PutResult:
        return self._put(rows, self._quota)

    async def put_many(self, messages: Sequence[Message]) -> list[PutOutcome]:
        result = self._put([wire.row_of(m) for m in messages], None)
        return [OUTCOME_OF_CODE[code] for code in result.codes]

    def _put(self, rows: Sequence[Row], quota: Quota | None) -> PutResult:
        codes = []
        details = {}
        for i, (mailbox, key, digest, size, data) in enumerate(rows):
            box = self._queued.setdefault(mailbox, {})
            stored = box.get(key)
            outcome = decide(
                new_digest=digest,
                stored_digest=stored[1] if stored else None,
                tombstone_digest=self._tombstones.get(mailbox, {}).get(key, (None, 0))[0],
            )
            if outcome is not None:
                codes.append(CODE_OF_OUTCOME[outcome])
                continue
            body_bytes = self._body_bytes.get(mailbox, 0)
            why = quota.refusal(mailbox, messages=len(box) + 1, body_bytes=body_bytes + size) if quota else None
            if why is not None:
                codes.append(QUOTA_EXCEEDED)
                details[i] = why
                continue
            self._seq += 1
            box[key] = (self._seq, digest, size, data)
            self._body_bytes[mailbox] = body_bytes + size
            codes.append(STORED)
        return PutResult(codes=tuple(codes), details=details)

    async def fetch_wire(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> WirePage:
        assert limit > 0
        page: list[bytes] = []
        last = after_seq
        more = False
        size = 0
        for seq, _, _, data in self._queued.get(mailbox, {}).values():
            if seq <= after_seq:
                continue
            size += len(data)
            if len(page) == limit or (page and size > bytes_max):
                more = True
                break
            page.append(data)
            last = seq
        return WirePage(wires=tuple(page), next_after_seq=last, more=more)

    async def fetch(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> FetchPage:
        page = await self.fetch_wire(mailbox, after_seq=after_seq, limit=limit, bytes_max=bytes_max)
        return FetchPage(tuple(wire.message_of_wire(w) for w in page.wires), page.next_after_seq, page.more)

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
                self._body_bytes[mailbox] -= entry[2]
            digest, earlier_ms = tombs.get(key, (entry[1] if entry else UNKNOWN_DIGEST, deleted_ms))
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

    async def take_wire(self, mailbox: str, *, limit: int, bytes_max: int) -> list[bytes]:
        taken: list[tuple[str, bytes]] = []
        size = 0
        for key, (_, _, _, data) in self._queued.get(mailbox, {}).items():
            size += len(data)
            if len(taken) == limit or (taken and size > bytes_max):
                break
            taken.append((key, data))
        await self.ack(mailbox, [key for key, _ in taken])
        return [data for _, data in taken]

    async def take(self, mailbox: str, *, limit: int, bytes_max: int) -> list[Message]:
        return [wire.message_of_wire(w) for w in await self.take_wire(mailbox, limit=limit, bytes_max=bytes_max)]

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

    async def get_queued_wire(self, mailbox: str, keys: Sequence[str]) -> list[bytes]:
        box = self._queued.get(mailbox, {})
        return [box[k][3] for k in dict.fromkeys(keys) if k in box]

    async def get_queued(self, mailbox: str, keys: Sequence[str]) -> list[Message]:
        return [wire.message_of_wire(w) for w in await self.get_queued_wire(mailbox, keys)]

    async def close(self) -> None:
        return None
