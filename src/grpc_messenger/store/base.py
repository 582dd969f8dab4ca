"""The Store protocol: what a replica needs from its storage, nothing more.

A store never imports grpc. Every method is async; a store that does blocking
I/O runs it on threads it owns. `put_many` returns only after the messages it
reports as stored are durable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from grpc_messenger.model import Message, PutOutcome

FETCH_LIMIT_MAX = 1000
# Digest of a tombstone for a key acked before this replica ever held it.
UNKNOWN_DIGEST = ""

# What a put did with one row. The numbers are the wire's SendOutcome values
# (wire.py checks it at import), so a reply is built from them without a mapping.
STORED = 1
ALREADY_STORED = 2
CONFLICT = 3
QUOTA_EXCEEDED = 5
OUTCOME_OF_CODE = {
    STORED: PutOutcome.STORED,
    ALREADY_STORED: PutOutcome.ALREADY_STORED,
    CONFLICT: PutOutcome.CONFLICT,
}
CODE_OF_OUTCOME = {v: k for k, v in OUTCOME_OF_CODE.items()}

# One validated message ready to store: (mailbox, key, content digest, body bytes, wire).
# `mailbox` is the normalized recipient; `wire` the serialized SendRequest that readers
# are served as is. A plain tuple: the write path builds one per message.
Row = tuple[str, str, str, int, bytes]


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-mailbox caps on queued messages and body bytes (UTF-8); 0 means unlimited."""

    messages_max: int = 0
    bytes_max: int = 0

    @property
    def enabled(self) -> bool:
        """False when both caps are unlimited."""
        return self.messages_max > 0 or self.bytes_max > 0

    def refusal(self, mailbox: str, *, messages: int, body_bytes: int) -> str | None:
        """Why a mailbox holding this much after a put would be over quota; None if it fits."""
        if self.messages_max and messages > self.messages_max:
            return f"mailbox {mailbox} is full: {self.messages_max} messages queued"
        if self.bytes_max and body_bytes > self.bytes_max:
            return f"mailbox {mailbox} is full: over {self.bytes_max} bytes queued"
        return None


@dataclass(frozen=True, slots=True)
class PutResult:
    """Outcome codes of a put, one per row in order; details only for rows not simply stored."""

    codes: tuple[int, ...]
    details: dict[int, str]


@dataclass(frozen=True, slots=True)
class WirePage:
    """One page of a mailbox as the serialized SendRequests stored (each checked against its checksum)."""

    wires: tuple[bytes, ...]
    next_after_seq: int
    more: bool


def row_checksum(mailbox: str, key: str, digest: str, body_bytes: int, wire: bytes) -> bytes:
    """The checksum a stored row carries: covers every column a reader or repair relies on.

    Text read back from a damaged page holds lone surrogates (see the SQLite store);
    surrogateescape turns them back into the damaged bytes, so the sum differs.
    """
    head = f"{mailbox}\0{key}\0{digest}\0{body_bytes}\0".encode("utf-8", "surrogateescape")
    return hashlib.sha256(head + wire).digest()


@dataclass(frozen=True, slots=True)
class FetchPage:
    """One page of a mailbox in this replica's arrival order."""

    messages: tuple[Message, ...]
    next_after_seq: int
    more: bool


@dataclass(frozen=True, slots=True)
class MailboxUsage:
    """What one mailbox holds now, for quotas: queued messages and their body bytes (UTF-8)."""

    messages: int
    body_bytes: int


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Sizes of a store, for Info and metrics."""

    messages: int
    mailboxes: int
    tombstones: int


@dataclass(frozen=True, slots=True)
class MailboxDigest:
    """A mailbox's fingerprint for repair: equal digests mean equal key sets."""

    mailbox: str
    digest: int
    messages: int
    tombstones: int


@dataclass(frozen=True, slots=True)
class KeyState:
    """One key of a mailbox as repair sees it: queued, or acked (with when)."""

    key: str
    tombstone: bool
    deleted_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class ScrubPage:
    """One step of a scrub: rows checked after a position, damaged ones moved aside."""

    next_after_seq: int
    checked: int
    moved_aside: int
    done: bool  # no rows after next_after_seq: the pass is over


@dataclass(frozen=True, slots=True, order=True)
class TombstoneRef:
    """One tombstone, in purge order: oldest deletion first."""

    deleted_unix_ms: int
    mailbox: str
    key: str


def key_hash(mailbox: str, kind: str, key: str) -> int:
    """62-bit hash of one queued key ("m") or tombstone ("t") of a mailbox.

    A mailbox digest is the XOR of these, so it is kept up to date in O(1) per
    write, and two replicas compare a mailbox in one integer. 62 bits keep every
    XOR a non-negative SQLite integer.
    """
    data = f"{mailbox}\0{kind}\0{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 2


def decide(*, new_digest: str, stored_digest: str | None, tombstone_digest: str | None) -> PutOutcome | None:
    """What putting a message means given what the mailbox holds for its key.

    None means "not seen before: store it". A tombstone counts as stored, so an
    acked message is never resurrected by a late retry. A tombstone with an
    empty digest comes from an Ack of a key this replica never held (it missed
    the Send); it matches any content, since the reader has that message.
    """
    seen = stored_digest if stored_digest is not None else tombstone_digest
    if seen is None:
        return None
    return PutOutcome.ALREADY_STORED if seen in (new_digest, UNKNOWN_DIGEST) else PutOutcome.CONFLICT


class Store(Protocol):
    """Durable per-recipient mailboxes with tombstones."""

    @property
    def kind(self) -> str:
        """Short name of the implementation ("sqlite", "memory")."""
        ...

    @property
    def replica_id(self) -> str:
        """Stable identity of this store (survives restarts for durable stores)."""
        ...

    @property
    def rebuilding(self) -> bool:
        """The store was created empty (a new, wiped or set-aside store) and is not yet rebuilt from the peers.

        Durable: a replica restarted mid-rebuild is still rebuilding.
        """
        ...

    async def mark_rebuilt(self) -> None:
        """Repair has copied what every peer held: the store is no longer rebuilding."""
        ...

    async def put_many(self, messages: Sequence[Message]) -> list[PutOutcome]:
        """Store each message once per mailbox; one outcome each, in order (no quota: repair)."""
        ...

    async def put_rows(self, rows: Sequence[Row]) -> PutResult:
        """Store validated rows, each once per mailbox, within the store's quota (the write path)."""
        ...

    async def fetch_wire(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> WirePage:
        """Like `fetch`, as the stored wire bytes: what Fetch and Subscribe serve."""
        ...

    async def take_wire(self, mailbox: str, *, limit: int, bytes_max: int) -> list[bytes]:
        """Like `take`, as the stored wire bytes (legacy ReceiveAll)."""
        ...

    async def get_queued_wire(self, mailbox: str, keys: Sequence[str]) -> list[bytes]:
        """Like `get_queued`, as the stored wire bytes (repair Pull)."""
        ...

    async def fetch(self, mailbox: str, *, after_seq: int, limit: int, bytes_max: int) -> FetchPage:
        """Up to `limit` queued messages of `mailbox` after position `after_seq`.

        The page stops early once its bodies pass `bytes_max` (always at least one
        message), so a page always fits in one gRPC response.
        """
        ...

    async def ack(self, mailbox: str, keys: Sequence[str]) -> int:
        """Delete these keys from `mailbox`, leaving tombstones; return how many were queued."""
        ...

    async def take(self, mailbox: str, *, limit: int, bytes_max: int) -> list[Message]:
        """Legacy destructive read: remove and return the oldest queued messages."""
        ...

    async def counts(self) -> StoreCounts:
        """Current sizes."""
        ...

    async def usage(self, mailboxes: Sequence[str]) -> dict[str, MailboxUsage]:
        """Queued messages and body bytes of each mailbox (committed writes only)."""

    async def digests(self, *, after_mailbox: str, limit: int, until_mailbox: str | None = None) -> list[MailboxDigest]:
        """Digests of the mailboxes after `after_mailbox` (and up to `until_mailbox`), sorted (repair)."""
        ...

    async def state_digest(self) -> int:
        """XOR of every mailbox digest: equal on replicas holding the same keys."""
        ...

    async def key_states(self, mailbox: str, *, after_key: str, limit: int) -> list[KeyState]:
        """Queued keys and tombstones of a mailbox after `after_key`, sorted by key (repair)."""
        ...

    async def apply_tombstones(self, mailbox: str, tombstones: Sequence[tuple[str, int]]) -> int:
        """Repair: delete these (key, deleted_unix_ms), keeping the earliest deletion time.

        Carrying the original time lets every replica purge a tombstone at about
        the same moment instead of handing it back and forth.
        """
        ...

    async def purge_tombstones(self, *, deleted_before_ms: int, limit: int) -> int:
        """Forget up to `limit` tombstones deleted before the cutoff; return how many."""
        ...

    async def scrub(self, *, after_seq: int, limit: int) -> ScrubPage:
        """Check up to `limit` stored rows after `after_seq` against their checksums.

        A row that fails is moved aside (kept for inspection, never served, never
        handed to a peer, its key no longer counted as held), so repair fetches the
        good copy from a peer and this replica returns to a full copy.
        """
        ...

    async def tombstone_candidates(
        self, *, deleted_before_ms: int, after: TombstoneRef | None, limit: int
    ) -> list[TombstoneRef]:
        """Up to `limit` tombstones deleted before the cutoff, after `after`, oldest first (purge)."""
        ...

    async def forget_tombstones(self, tombstones: Sequence[TombstoneRef]) -> int:
        """Forget exactly these tombstones (every peer confirmed them); return how many went."""
        ...

    async def get_queued(self, mailbox: str, keys: Sequence[str]) -> list[Message]:
        """The queued, undamaged messages among `keys` (repair)."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources."""
        ...
