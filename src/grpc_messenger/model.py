"""Frozen values of the messenger and their validation.

Nothing here does I/O or imports grpc: these are the values every layer passes
around (`Message`, `SendReport`, ...) and the rules that make input valid.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import time
from dataclasses import dataclass, field

from grpc_messenger.errors import Failure, InvalidInput, Unavailable

BODY_BYTES_MAX_DEFAULT = 64 * 1024
MAX_ADDRESS_CHARS = 254
MAX_KEY_CHARS = 64
# 9999-12-31T23:59:59.999Z: any later creation time is garbage, not clock skew.
UNIX_MS_MAX = 253_402_300_799_999

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS_RE = re.compile(rf"[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})*")
_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def validate_address(value: str, *, what: str = "address") -> str:
    """Return `value` if it is a plausible email address, else raise InvalidInput."""
    if not value:
        raise InvalidInput(f"{what} is empty")
    if len(value) > MAX_ADDRESS_CHARS:
        raise InvalidInput(f"{what} is longer than {MAX_ADDRESS_CHARS} characters")
    if not _ADDRESS_RE.fullmatch(value):
        raise InvalidInput(f"{what} {value!r} is not an email address like alice@example.org")
    return value


def normalize_address(value: str) -> str:
    """The mailbox an address names: addresses compare case-insensitively everywhere.

    `Bob@Example.org` and `bob@example.org` are one mailbox. Call it on validated
    addresses only (they are ASCII, so lower() is exact); the form a sender typed
    may still be kept for display.
    """
    return value.lower()


def validate_key(value: str) -> str:
    """Return `value` if it is a well-formed message key, else raise InvalidInput."""
    if not _KEY_RE.fullmatch(value):
        raise InvalidInput(f"message key must be 1-{MAX_KEY_CHARS} characters of A-Z a-z 0-9 _ . : -")
    return value


def validate_body(value: str, *, body_bytes_max: int) -> str:
    """Return `value` if it is a non-empty body within the size limit."""
    if not value or value.isspace():
        raise InvalidInput("message body is empty" if not value else "message body is only whitespace")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > body_bytes_max:
        raise InvalidInput(f"message body is {size} bytes; the limit is {body_bytes_max}")
    return value


def new_key(*, now_ms: int | None = None, entropy: bytes | None = None) -> str:
    """A fresh UUIDv7 string: time-ordered, 74 random bits, unique forever.

    Keys never restart: they come from the clock and os.urandom, not a counter,
    so a restarted client or a second device cannot reuse one. A caller making
    many keys may pass 10 bytes of os.urandom it read in bulk as `entropy`.
    """
    unix_ms = int(time.time() * 1000) if now_ms is None else now_ms
    assert entropy is None or len(entropy) == 10
    rand = int.from_bytes(os.urandom(10) if entropy is None else entropy, "big")
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def legacy_key(*, sender: str, legacy_id: int, body: str) -> str:
    """The key of a message from a client that sends no key.

    Derived from (sender, id, digest of body), so every replica derives the same
    key for the same message, while a legacy client whose id counter restarted
    at 1 does not have its new message swallowed as a duplicate of an old one.
    """
    digest = hashlib.sha256(f"{sender}\0{legacy_id}\0{body}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"legacy-{digest[:40]}"


def content_digest(*, key: str, sender: str, recipient: str, body: str) -> str:
    """What makes two copies of one key "the same message", and a stored row's checksum.

    Copies are only ever compared under the same (mailbox, key), so covering the
    key and mailbox changes no comparison, but it lets a replica notice a damaged
    key or mailbox on disk instead of serving a message under a key nobody sent.
    The creation time is left out: legacy copies are stamped by each replica. The
    recipient counts as the mailbox it names, so a retry typed in other capitals is
    the same message.
    """
    data = f"{key}\0{sender}\0{normalize_address(recipient)}\0{body}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Message:
    """One message, as stored in a mailbox and shown to its reader."""

    key: str
    sender: str
    recipient: str
    body: str
    created_unix_ms: int
    legacy_id: int = 0

    @property
    def digest(self) -> str:
        """Content digest: equal for retries of one message, different otherwise."""
        return content_digest(key=self.key, sender=self.sender, recipient=self.recipient, body=self.body)

    def sort_key(self) -> tuple[int, str, str]:
        """Order shown to the user: creation time, then sender, then key."""
        return (self.created_unix_ms, self.sender, self.key)


def build_message(
    *,
    sender: str,
    recipient: str,
    body: str,
    key: str = "",
    created_unix_ms: int = 0,
    legacy_id: int = 0,
    body_bytes_max: int = BODY_BYTES_MAX_DEFAULT,
    now_ms: int | None = None,
) -> Message:
    """Validate raw fields and build a Message; raise InvalidInput on bad input.

    A message without a key is a legacy one: its key is derived (see legacy_key)
    and, lacking a creation time, it is stamped with `now_ms`.
    """
    validate_address(sender, what="sender address")
    validate_address(recipient, what="recipient address")
    validate_body(body, body_bytes_max=body_bytes_max)
    if legacy_id < 0:
        raise InvalidInput(f"message id {legacy_id} is negative")
    if not 0 <= created_unix_ms <= UNIX_MS_MAX:
        raise InvalidInput(f"creation time {created_unix_ms} ms is outside 0..{UNIX_MS_MAX}")
    if key:
        validate_key(key)
    else:
        key = legacy_key(sender=sender, legacy_id=legacy_id, body=body)
    if created_unix_ms == 0:
        created_unix_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return Message(
        key=key,
        sender=sender,
        recipient=recipient,
        body=body,
        created_unix_ms=created_unix_ms,
        legacy_id=legacy_id,
    )


class PutOutcome(enum.Enum):
    """What a replica did with one message of a Send."""

    STORED = "stored"
    ALREADY_STORED = "already_stored"
    CONFLICT = "conflict"


class ReplicaState(enum.Enum):
    """Where one replica stands for one send."""

    STORED = "stored"
    ALREADY_STORED = "already_stored"
    CONFLICT = "conflict"  # the key holds other content there: a client bug
    REJECTED = "rejected"  # the replica found the message invalid
    DENIED = "denied"  # no or a wrong credential for this sender: retrying the same call cannot help
    FAILED = "failed"  # unreachable, timed out, or another error
    PENDING = "pending"  # no answer yet; delivery goes on in the background

    @property
    def acknowledged(self) -> bool:
        """True when the replica holds the message durably."""
        return self in (ReplicaState.STORED, ReplicaState.ALREADY_STORED)


@dataclass(frozen=True, slots=True)
class ReplicaOutcome:
    """One replica's part in a send: its state and, if it did not store the message, why."""

    replica: str
    state: ReplicaState
    failure: Failure | None = None

    @property
    def error(self) -> str:
        """Why, as text for people ("UNAVAILABLE: ..."); empty when the replica stored it."""
        return "" if self.failure is None else str(self.failure)


@dataclass(frozen=True, slots=True)
class SendReport:
    """The result of sending one message: its key and each replica's outcome."""

    key: str
    write_quorum: int
    replicas: tuple[ReplicaOutcome, ...]

    @property
    def acknowledged(self) -> int:
        """How many replicas hold the message durably."""
        return sum(1 for r in self.replicas if r.state.acknowledged)

    @property
    def ok(self) -> bool:
        """True when at least `write_quorum` replicas acknowledged."""
        return self.acknowledged >= self.write_quorum


class QuorumNotReached(Unavailable):
    """Fewer than W replicas acknowledged a send; `report` says which did what."""

    def __init__(self, message: str, report: SendReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True, slots=True)
class ReadReport:
    """The result of one read: new messages (in display order) and replica health."""

    messages: tuple[Message, ...]
    replicas_answered: tuple[str, ...]
    failures: tuple[tuple[str, Failure], ...] = field(default=())
    # False when this read took everything the answering replicas held (as it began):
    # a loop reading a mailbox to the end can stop without one more, empty, read
    more: bool = False

    @property
    def complete(self) -> bool:
        """True when every replica answered."""
        return not self.failures

    @property
    def replicas_failed(self) -> tuple[tuple[str, str], ...]:
        """(replica, why as text) for each replica that did not answer, for display."""
        return tuple((replica, str(failure)) for replica, failure in self.failures)


@dataclass(frozen=True, slots=True)
class Draft:
    """A message to send: the library adds its creation time, and its key unless given (to resend safely)."""

    sender: str
    recipient: str
    body: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """How one replica looks from a client: reachable, healthy, how full, how fast."""

    address: str
    reachable: bool
    serving: bool = False
    replica_id: str = ""
    version: str = ""
    store: str = ""
    messages: int = 0
    mailboxes: int = 0
    tombstones: int = 0
    state_digest: int = 0
    rebuilding: bool = False  # started on an empty store, not yet repaired from every peer
    latency_ms: float = 0.0
    failure: Failure | None = None

    @property
    def error(self) -> str:
        """Why the replica is unreachable, as text for people; empty when it answered."""
        return "" if self.failure is None else str(self.failure)
