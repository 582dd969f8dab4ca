"""Every RPC and every error code, on the wire, against a real replica process."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_messenger.model import new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import ReplicaFactory, ReplicaProcess

TIMEOUT_S = 10


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    factory = ReplicaFactory(tmp_path_factory.mktemp("rpc"))
    try:
        yield factory.replica()
    finally:
        factory.teardown()


@pytest.fixture(scope="module")
def channel(replica: ReplicaProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(replica.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.MessengerServiceStub:
    return pb_grpc.MessengerServiceStub(channel)


def code_of(call: object) -> grpc.StatusCode:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.details(), "every refusal carries a message"
    return error.code()


def queued(stub: pb_grpc.MessengerServiceStub, mailbox: str) -> list[pb.SendRequest]:
    return list(stub.Fetch(pb.FetchRequest(self_email=mailbox, limit=1000), timeout=TIMEOUT_S).messages)


def test_send_stores_then_reports_already_stored(stub: pb_grpc.MessengerServiceStub, mailbox: str) -> None:
    request = pb.SendRequest(id=7, msg="hi", self_email="alice@example.org", dest_email=mailbox)
    first = stub.Send(request, timeout=TIMEOUT_S)
    again = stub.Send(request, timeout=TIMEOUT_S)
    assert (first.success, first.outcome) == (True, pb.SEND_OUTCOME_STORED)
    assert (again.success, again.outcome) == (True, pb.SEND_OUTCOME_ALREADY_STORED)
    assert first.key == again.key
    assert first.key.startswith("legacy-")
    assert [m.msg for m in queued(stub, mailbox)] == ["hi"]


def test_send_conflict_is_already_exists_and_keeps_the_original(
    stub: pb_grpc.MessengerServiceStub, mailbox: str
) -> None:
    key = new_key()
    stub.Send(pb.SendRequest(key=key, msg="one", self_email="a@example.org", dest_email=mailbox), timeout=TIMEOUT_S)
    conflicting = pb.SendRequest(key=key, msg="two", self_email="a@example.org", dest_email=mailbox)
    assert code_of(lambda: stub.Send(conflicting, timeout=TIMEOUT_S)) == grpc.StatusCode.ALREADY_EXISTS
    assert [m.msg for m in queued(stub, mailbox)] == ["one"]


@pytest.mark.parametrize(
    "fields",
    [
        {"msg": ""},
        {"msg": "x" * (64 * 1024 + 1)},
        {"self_email": ""},
        {"self_email": "not-an-address"},
        {"dest_email": "two@@at.org"},
        {"id": -1},
        {"key": "bad key with spaces"},
        {"created_unix_ms": -1},
    ],
)
def test_malformed_send_is_invalid_argument_and_stores_nothing(
    stub: pb_grpc.MessengerServiceStub, mailbox: str, fields: dict[str, object]
) -> None:
    request = pb.SendRequest(**{"msg": "hi", "self_email": "a@example.org", "dest_email": mailbox, **fields})
    assert code_of(lambda: stub.Send(request, timeout=TIMEOUT_S)) == grpc.StatusCode.INVALID_ARGUMENT
    if "dest_email" not in fields:
        assert queued(stub, mailbox) == []


def test_send_batch_answers_per_message(stub: pb_grpc.MessengerServiceStub, mailbox: str) -> None:
    key = new_key()
    good = pb.SendRequest(key=key, msg="ok", self_email="a@example.org", dest_email=mailbox, created_unix_ms=5)
    bad = pb.SendRequest(key=new_key(), msg="", self_email="a@example.org", dest_email=mailbox)
    response = stub.SendBatch(pb.SendBatchRequest(messages=[good, bad, good]), timeout=TIMEOUT_S)
    outcomes = [r.outcome for r in response.results]
    assert outcomes == [pb.SEND_OUTCOME_STORED, pb.SEND_OUTCOME_REJECTED, pb.SEND_OUTCOME_ALREADY_STORED]
    assert "empty" in response.results[1].error
    assert [(m.key, m.created_unix_ms) for m in queued(stub, mailbox)] == [(key, 5)]
    assert list(stub.SendBatch(pb.SendBatchRequest(), timeout=TIMEOUT_S).results) == []


def test_send_batch_over_the_limit_is_refused_whole(stub: pb_grpc.MessengerServiceStub, mailbox: str) -> None:
    too_many = [
        pb.SendRequest(key=new_key(), msg="m", self_email="a@example.org", dest_email=mailbox) for _ in range(1001)
    ]
    request = pb.SendBatchRequest(messages=too_many)
    assert code_of(lambda: stub.SendBatch(request, timeout=TIMEOUT_S)) == grpc.StatusCode.INVALID_ARGUMENT
    assert queued(stub, mailbox) == []


def test_fetch_pages_with_a_cursor_and_ack_leaves_tombstones(stub: pb_grpc.MessengerServiceStub, mailbox: str) -> None:
    batch = [pb.SendRequest(key=new_key(), msg=f"m{i}", self_email="a@x.org", dest_email=mailbox) for i in range(25)]
    stub.SendBatch(pb.SendBatchRequest(messages=batch), timeout=TIMEOUT_S)
    bodies, after = [], 0
    for _ in range(10):
        page = stub.Fetch(pb.FetchRequest(self_email=mailbox, after_seq=after, limit=10), timeout=TIMEOUT_S)
        bodies += [m.msg for m in page.messages]
        after = page.next_after_seq
        if not page.more:
            break
    assert bodies == [f"m{i}" for i in range(25)]
    keys = [m.key for m in batch[:20]]
    assert stub.Ack(pb.AckRequest(self_email=mailbox, keys=keys), timeout=TIMEOUT_S).deleted == 20
    assert stub.Ack(pb.AckRequest(self_email=mailbox, keys=keys), timeout=TIMEOUT_S).deleted == 0
    assert [m.msg for m in queued(stub, mailbox)] == [f"m{i}" for i in range(20, 25)]
    # a late retry of an acked message does not come back
    resend = stub.SendBatch(pb.SendBatchRequest(messages=batch[:1]), timeout=TIMEOUT_S)
    assert resend.results[0].outcome == pb.SEND_OUTCOME_ALREADY_STORED
    assert len(queued(stub, mailbox)) == 5


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.Fetch(pb.FetchRequest(self_email="nope"), timeout=TIMEOUT_S),
        lambda s: s.Fetch(pb.FetchRequest(self_email="b@example.org", after_seq=-1), timeout=TIMEOUT_S),
        lambda s: s.Fetch(pb.FetchRequest(self_email="b@example.org", limit=-3), timeout=TIMEOUT_S),
        lambda s: s.Ack(pb.AckRequest(self_email="", keys=["k"]), timeout=TIMEOUT_S),
        lambda s: s.Ack(pb.AckRequest(self_email="b@example.org", keys=["not a key!"]), timeout=TIMEOUT_S),
        lambda s: s.Ack(pb.AckRequest(self_email="b@example.org", keys=["k"] * 10_001), timeout=TIMEOUT_S),
        lambda s: s.ReceiveAll(pb.ReceiveRequest(self_email="b@@example.org"), timeout=TIMEOUT_S),
    ],
    ids=["fetch-address", "fetch-cursor", "fetch-limit", "ack-address", "ack-key", "ack-count", "receive-address"],
)
def test_malformed_reads_and_acks_are_invalid_argument(stub: pb_grpc.MessengerServiceStub, call: object) -> None:
    assert callable(call)
    assert code_of(lambda: call(stub)) == grpc.StatusCode.INVALID_ARGUMENT


def test_receive_all_returns_everything_once_and_clears(stub: pb_grpc.MessengerServiceStub, mailbox: str) -> None:
    for i in range(1, 4):
        stub.Send(pb.SendRequest(id=i, msg=f"legacy {i}", self_email="old@example.org", dest_email=mailbox))
    first = stub.ReceiveAll(pb.ReceiveRequest(self_email=mailbox), timeout=TIMEOUT_S)
    assert [(m.id, m.msg, m.self_email, m.dest_email) for m in first.messages] == [
        (i, f"legacy {i}", "old@example.org", mailbox) for i in range(1, 4)
    ]
    assert list(stub.ReceiveAll(pb.ReceiveRequest(self_email=mailbox), timeout=TIMEOUT_S).messages) == []
    # the same legacy message sent again (a lost response, retried) is not delivered twice
    stub.Send(pb.SendRequest(id=1, msg="legacy 1", self_email="old@example.org", dest_email=mailbox))
    assert list(stub.ReceiveAll(pb.ReceiveRequest(self_email=mailbox), timeout=TIMEOUT_S).messages) == []


def test_info_health_and_reflection(channel: grpc.Channel, stub: pb_grpc.MessengerServiceStub) -> None:
    info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT_S)
    assert info.store == "sqlite"
    assert info.replica_id.startswith("r-")
    assert info.version
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "messenger.MessengerService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"messenger.MessengerService", "grpc.health.v1.Health"} <= names


_field_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", " ", "a@b", "a@b.c", "\x00@x.org", "é@x.org", "a@x.org\n", "A" * 300 + "@x.org"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    msg=st.text(max_size=200),
    sender=_field_text,
    recipient=_field_text,
    legacy_id=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    key=st.one_of(st.just(""), st.text(max_size=70)),
    created=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_any_send_is_stored_exactly_as_sent_or_refused_whole(
    stub: pb_grpc.MessengerServiceStub,
    msg: str,
    sender: str,
    recipient: str,
    legacy_id: int,
    key: str,
    created: int,
) -> None:
    request = pb.SendRequest(
        id=legacy_id, msg=msg, self_email=sender, dest_email=recipient, key=key, created_unix_ms=created
    )
    try:
        response = stub.Send(request, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        refusal = exc
    else:
        refusal = None
    if refusal is not None:
        assert isinstance(refusal, grpc.Call)
        assert refusal.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS), refusal.details()
        return
    assert response.success
    if response.outcome == pb.SEND_OUTCOME_ALREADY_STORED:
        return  # hypothesis repeated an earlier legacy message, already acked here: its tombstone answers
    stored = [m for m in queued(stub, recipient) if m.key == response.key]
    assert len(stored) == 1
    assert (stored[0].msg, stored[0].self_email, stored[0].dest_email) == (msg, sender, recipient)
    stub.Ack(pb.AckRequest(self_email=recipient, keys=[response.key]), timeout=TIMEOUT_S)
