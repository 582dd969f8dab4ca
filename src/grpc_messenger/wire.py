"""Conversions between protobuf messages and model values.

Nothing else in the package builds or reads pb2 messages field by field, so
the wire format and the model can change independently of the layers above.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from grpc_messenger.errors import Failure, InvalidInput, Status
from grpc_messenger.model import (
    UNIX_MS_MAX,
    Message,
    PutOutcome,
    ReplicaOutcome,
    ReplicaState,
    ReplicaStatus,
    build_message,
    content_digest,
    legacy_key,
    normalize_address,
    validate_address,
    validate_key,
)
from grpc_messenger.proto import messenger_pb2 as pb

_OUTCOME_TO_PB = {
    PutOutcome.STORED: pb.SEND_OUTCOME_STORED,
    PutOutcome.ALREADY_STORED: pb.SEND_OUTCOME_ALREADY_STORED,
    PutOutcome.CONFLICT: pb.SEND_OUTCOME_CONFLICT,
}
_OUTCOME_FROM_PB = {v: k for k, v in _OUTCOME_TO_PB.items()}


def message_to_pb(message: Message) -> pb.SendRequest:
    """The SendRequest that carries `message` (legacy fields filled for old readers)."""
    return pb.SendRequest(
        id=message.legacy_id,
        msg=message.body,
        self_email=message.sender,
        dest_email=message.recipient,
        key=message.key,
        created_unix_ms=message.created_unix_ms,
    )


def message_from_pb(request: pb.SendRequest, *, body_bytes_max: int, now_ms: int | None = None) -> Message:
    """Validate a SendRequest from the network; raise InvalidInput if it is bad."""
    return build_message(
        sender=request.self_email,
        recipient=request.dest_email,
        body=request.msg,
        key=request.key,
        created_unix_ms=request.created_unix_ms,
        legacy_id=request.id,
        body_bytes_max=body_bytes_max,
        now_ms=now_ms,
    )


def stored_message_from_pb(request: pb.SendRequest) -> Message:
    """A message a replica returned. Trusted for shape, not re-derived: the key is kept."""
    return Message(
        key=request.key,
        sender=request.self_email,
        recipient=request.dest_email,
        body=request.msg,
        created_unix_ms=request.created_unix_ms,
        legacy_id=request.id,
    )


def outcome_to_pb(outcome: PutOutcome) -> pb.SendOutcome.ValueType:
    """The wire enum for a store outcome."""
    return _OUTCOME_TO_PB[outcome]


def outcome_from_pb(value: pb.SendOutcome.ValueType) -> PutOutcome | None:
    """The store outcome for a wire enum; None for REJECTED or unknown values."""
    return _OUTCOME_FROM_PB.get(value)


def batch_request(messages: Iterable[Message]) -> pb.SendBatchRequest:
    """A SendBatch request for these messages."""
    return pb.SendBatchRequest(messages=[message_to_pb(m) for m in messages])


def batch_request_of(requests: list[pb.SendRequest]) -> pb.SendBatchRequest:
    """A SendBatch request of messages already in wire form (built once, sent to every replica)."""
    return pb.SendBatchRequest(messages=requests)


# --- client side: the requests a client sends and the replies it reads ----------------


def fetch_request(mailbox: str, *, after_seq: int, limit: int) -> pb.FetchRequest:
    """A Fetch of up to `limit` messages of `mailbox` queued after `after_seq`."""
    return pb.FetchRequest(self_email=mailbox, after_seq=after_seq, limit=limit)


def subscribe_request(mailbox: str, *, after_seq: int) -> pb.SubscribeRequest:
    """A Subscribe to `mailbox` from replica position `after_seq` (0: everything still queued)."""
    return pb.SubscribeRequest(self_email=mailbox, after_seq=after_seq)


def ack_request(mailbox: str, keys: Sequence[str]) -> pb.AckRequest:
    """An Ack deleting `keys` from `mailbox`."""
    return pb.AckRequest(self_email=mailbox, keys=list(keys))


def info_request() -> pb.InfoRequest:
    """An Info request (counts, version, digest of a replica)."""
    return pb.InfoRequest()


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """One page of a replica's queue as received.

    Keys are cheap to read; bodies are decoded into `Message` values only on
    demand, so a reader can drop the copies other replicas already returned
    before paying for them.
    """

    rows: Sequence[pb.SendRequest]
    next_after_seq: int
    more: bool

    @property
    def keys(self) -> list[str]:
        """The keys on this page, in queue order."""
        return [row.key for row in self.rows]

    def messages(self) -> list[Message]:
        """Every message on this page."""
        return [stored_message_from_pb(row) for row in self.rows]

    def take_new(self, mailbox: str, seen: dict[str, bool]) -> tuple[list[Message], list[str]]:
        """Decode only the copies whose key is not in `seen` yet; return them and this page's keys of `mailbox`.

        `seen` maps each key met so far (on any replica) to whether it belongs to
        `mailbox` (a normalized address); each key is decoded once however many
        replicas return it.
        """
        fresh: list[Message] = []
        mine: list[str] = []
        for row in self.rows:
            key = row.key
            belongs = seen.get(key)
            if belongs is None:
                belongs = seen[key] = normalize_address(row.dest_email) == mailbox
                if belongs:
                    fresh.append(stored_message_from_pb(row))
            if belongs:
                mine.append(key)
        return fresh, mine


def fetched_page(response: pb.FetchResponse) -> FetchedPage:
    """The page a Fetch returned."""
    return FetchedPage(rows=response.messages, next_after_seq=response.next_after_seq, more=response.more)


def acked_count(response: pb.AckResponse) -> int:
    """How many of the acked keys the replica deleted (keys it did not hold count 0)."""
    return response.deleted


SendBatchResponse = pb.SendBatchResponse


def batch_payload(messages: Sequence[Message]) -> bytes:
    """A serialized SendBatch request: built once per batch, the same bytes sent to every replica."""
    return pb.SendBatchRequest(messages=[message_to_pb(m) for m in messages]).SerializeToString()


def send_outcomes(
    response: pb.SendBatchResponse,
    messages: Sequence[Message],
    *,
    replica: str,
    stored: ReplicaOutcome,
    already: ReplicaOutcome,
) -> Sequence[ReplicaOutcome]:
    """One replica's outcome for each message of a batch it answered (`stored`/`already` are shared values)."""
    results = response.results
    if len(results) != len(messages):
        failure = Failure(Status.INTERNAL, "replica answered a different count")
        return (ReplicaOutcome(replica, ReplicaState.FAILED, failure),)
    # the common answer, checked with two list comprehensions and C-level compares
    if [r.outcome for r in results].count(pb.SEND_OUTCOME_STORED) == len(results):
        keys = [r.key for r in results]
        if keys == [m.key for m in messages] or not any(keys):
            return (stored,) if len(results) > 1 else [stored]
    return [_send_outcome(r, m.key, replica, stored, already) for r, m in zip(results, messages, strict=True)]


def _send_outcome(
    result: pb.SendResult, key: str, replica: str, stored: ReplicaOutcome, already: ReplicaOutcome
) -> ReplicaOutcome:
    if result.key and result.key != key:
        return ReplicaOutcome(
            replica, ReplicaState.FAILED, Failure(Status.INTERNAL, "replica answered for another key")
        )
    value = result.outcome
    if value == pb.SEND_OUTCOME_STORED:
        return stored
    if value == pb.SEND_OUTCOME_ALREADY_STORED:
        return already
    if value == pb.SEND_OUTCOME_QUOTA_EXCEEDED:
        # the mailbox is full for now: retryable, unlike a rejection
        return ReplicaOutcome(replica, ReplicaState.FAILED, Failure(Status.RESOURCE_EXHAUSTED, result.error))
    if value == pb.SEND_OUTCOME_CONFLICT:
        failure = Failure(Status.ALREADY_EXISTS, f"key {key} holds other content")
        return ReplicaOutcome(replica, ReplicaState.CONFLICT, failure)
    failure = Failure(Status.INVALID_ARGUMENT, result.error or "unknown outcome")
    return ReplicaOutcome(replica, ReplicaState.REJECTED, failure)


def redelivery_failure(response: pb.SendBatchResponse, count: int) -> Failure | None:
    """Why a re-sent batch is still owed (a full mailbox, a garbled answer), or None when it is delivered.

    Stored, already stored, conflict and rejected all end the delivery: nothing more to send there.
    """
    if len(response.results) != count:
        return Failure(Status.INTERNAL, "replica answered a different count")
    for result in response.results:
        if result.outcome == pb.SEND_OUTCOME_QUOTA_EXCEEDED:
            return Failure(Status.RESOURCE_EXHAUSTED, result.error)
    return None


def replica_status(info: pb.InfoResponse, *, address: str, serving: bool, latency_ms: float) -> ReplicaStatus:
    """What an Info answer says about a reachable replica."""
    return ReplicaStatus(
        address=address,
        reachable=True,
        serving=serving,
        replica_id=info.replica_id,
        version=info.version,
        store=info.store,
        messages=info.messages,
        mailboxes=info.mailboxes,
        tombstones=info.tombstones,
        state_digest=info.state_digest,
        rebuilding=info.rebuilding,
        latency_ms=latency_ms,
    )


# --- server side -------------------------------------------------------------------
#
# The replica's hot path: requests are validated straight from the protobuf fields,
# stored as the bytes received, and answered with replies assembled from stored bytes.
# Nothing here trusts the client: every field is checked as build_message checks it.

# The store's outcome codes are these enum values (a test checks it), so replies are
# built from them directly. The store does not import this module's callers' types:
# a row is a plain tuple, the same as store.base.Row.
STORED = pb.SEND_OUTCOME_STORED
REJECTED = pb.SEND_OUTCOME_REJECTED
Row = tuple[str, str, str, int, bytes]
ADDRESSES_REMEMBERED_MAX = 65_536
# SendResult{outcome: STORED} as field 1 of SendBatchResponse: tag, length 2, outcome tag, 1
_STORED_RESULT = b"\x0a\x02\x10\x01"


class AddressCache:
    """Addresses already found valid, so a busy mailbox is not re-validated per message.

    Bounded: emptied when full (addresses are cheap to check again).
    """

    def __init__(self, size_max: int = ADDRESSES_REMEMBERED_MAX) -> None:
        assert size_max > 0
        self._valid: set[str] = set()
        self._size_max = size_max

    def check(self, value: str, what: str) -> None:
        """Raise InvalidInput unless `value` is a valid address."""
        if value in self._valid:
            return
        validate_address(value, what=what)
        if len(self._valid) >= self._size_max:
            self._valid.clear()
        self._valid.add(value)


def row_from_pb(
    request: pb.SendRequest, *, body_bytes_max: int, now_ms: int, addresses: AddressCache
) -> tuple[Row, bool]:
    """Validate one SendRequest (as build_message does) and make its store row.

    Also says whether the key was derived here (a legacy request). The stored wire is
    the request itself when it already carries its key and creation time, else a copy
    with both filled in, so every reader sees the same key.
    """
    sender = request.self_email
    recipient = request.dest_email
    body = request.msg
    addresses.check(sender, "sender address")
    addresses.check(recipient, "recipient address")
    if not body or body.isspace():
        raise InvalidInput("message body is empty" if not body else "message body is only whitespace")
    size = len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))
    if size > body_bytes_max:
        raise InvalidInput(f"message body is {size} bytes; the limit is {body_bytes_max}")
    legacy_id = request.id
    if legacy_id < 0:
        raise InvalidInput(f"message id {legacy_id} is negative")
    created = request.created_unix_ms
    if not 0 <= created <= UNIX_MS_MAX:
        raise InvalidInput(f"creation time {created} ms is outside 0..{UNIX_MS_MAX}")
    key = request.key
    derived = not key
    if derived:
        key = legacy_key(sender=sender, legacy_id=legacy_id, body=body)
    else:
        validate_key(key)
    if derived or created == 0:
        wire = pb.SendRequest(
            id=legacy_id, msg=body, self_email=sender, dest_email=recipient, key=key, created_unix_ms=created or now_ms
        ).SerializeToString()
    else:
        wire = request.SerializeToString()
    mailbox = normalize_address(recipient)
    digest = content_digest(key=key, sender=sender, recipient=mailbox, body=body)
    return (mailbox, key, digest, size, wire), derived


def row_of(message: Message) -> Row:
    """The store row of an already validated message (repair, tests)."""
    mailbox = normalize_address(message.recipient)
    size = len(message.body.encode("utf-8", "surrogatepass"))
    return (mailbox, message.key, message.digest, size, message_to_pb(message).SerializeToString())


def message_of_wire(wire: bytes) -> Message:
    """The message a stored row holds (its wire bytes were validated before they were stored)."""
    return stored_message_from_pb(pb.SendRequest.FromString(wire))


def batch_response(codes: Sequence[int], keys: Sequence[str], details: dict[int, str]) -> bytes:
    """A serialized SendBatchResponse: one SendResult per message, in order.

    Compact: a message simply stored gets its outcome only (4 bytes); the key and a
    detail come only where the client may need them (anything else, or a key the
    replica derived). Clients read `key` as "the key stored, if said".
    """
    if not details and all(code == STORED for code in codes) and not any(keys):
        return _STORED_RESULT * len(codes)
    parts = []
    for i, code in enumerate(codes):
        key = keys[i]
        detail = details.get(i)
        if code == STORED and not key and detail is None:
            parts.append(_STORED_RESULT)
        else:
            result = pb.SendResult(key=key, outcome=pb.SendOutcome.ValueType(code), error=detail or "")
            parts.append(_field(1, result.SerializeToString()))
    return b"".join(parts)


def messages_response(wires: Iterable[bytes], tail: bytes = b"") -> bytes:
    """`repeated SendRequest messages = 1` of stored wires, then `tail` (the other fields, serialized).

    FetchResponse, InboxResponse and PullResponse all carry their messages as field 1,
    so one encoder serves the three: no message is parsed or rebuilt to answer.
    """
    return b"".join([_field(1, w) for w in wires]) + tail


def fetch_response(wires: Iterable[bytes], next_after_seq: int, more: bool) -> bytes:
    """A serialized FetchResponse of stored wires."""
    return messages_response(wires, pb.FetchResponse(next_after_seq=next_after_seq, more=more).SerializeToString())


def send_response(outcome: PutOutcome, key: str) -> pb.SendResponse:
    """The legacy Send's answer for a message durably held (stored now or before)."""
    return pb.SendResponse(success=True, debug_message=outcome.value, outcome=outcome_to_pb(outcome), key=key)


def ack_response(deleted: int) -> pb.AckResponse:
    """An Ack's answer: how many of the keys were queued here."""
    return pb.AckResponse(deleted=deleted)


def info_response(
    *,
    replica_id: str,
    version: str,
    store: str,
    messages: int,
    mailboxes: int,
    tombstones: int,
    state_digest: int,
    rebuilding: bool,
) -> pb.InfoResponse:
    """An Info answer: who the replica is and how full."""
    return pb.InfoResponse(
        replica_id=replica_id,
        version=version,
        store=store,
        messages=messages,
        mailboxes=mailboxes,
        tombstones=tombstones,
        state_digest=state_digest,
        rebuilding=rebuilding,
    )


def digests_response(digests: Iterable[tuple[str, int, int, int]], more: bool) -> pb.DigestsResponse:
    """A peer's Digests answer from (mailbox, digest, messages, tombstones)."""
    return pb.DigestsResponse(
        mailboxes=[pb.MailboxDigest(mailbox=m, digest=d, messages=n, tombstones=t) for m, d, n, t in digests],
        more=more,
    )


def keys_response(states: Iterable[tuple[str, bool, int]], more: bool) -> pb.MailboxKeysResponse:
    """A peer's MailboxKeys answer from (key, tombstone, deleted_unix_ms)."""
    return pb.MailboxKeysResponse(
        keys=[pb.KeyState(key=k, tombstone=t, deleted_unix_ms=ms) for k, t, ms in states], more=more
    )


def serialize_reply(reply: Any) -> bytes:
    """Response serializer for handlers that answer either a pb message or bytes already serialized."""
    if isinstance(reply, bytes):
        return reply
    data: bytes = reply.SerializeToString()
    return data


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag, varint length, payload)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _BYTES[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTES = [bytes([i]) for i in range(0x80)]
