"""Conversions between protobuf messages and model values.

Nothing else in the package builds or reads pb2 messages field by field, so
the wire format and the model can change independently of the layers above.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from grpc_messenger.errors import Failure, Status
from grpc_messenger.model import (
    Message,
    PutOutcome,
    ReplicaOutcome,
    ReplicaState,
    ReplicaStatus,
    build_message,
    normalize_address,
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
        latency_ms=latency_ms,
    )
