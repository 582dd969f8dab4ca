"""One mailbox however an address is capitalised, on every RPC; Fetch serves the bytes stored, never a damaged row."""

from __future__ import annotations

import sqlite3

import grpc

from grpc_messenger.model import new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.replica import STORE_FILE
from tests.conftest import ReplicaFactory
from tests.security_support import stub_for

TIMEOUT_S = 10


def test_legacy_and_new_rpcs_treat_capitals_as_one_mailbox(replica_factory: ReplicaFactory) -> None:
    first, second = replica_factory.replica(), replica_factory.replica(store="memory")
    legacy = pb.SendRequest(id=1, msg="legacy, to capitals", self_email="Alice@X.org", dest_email="Bob@Example.ORG")
    with stub_for(first.address) as stub, stub_for(second.address) as other:
        sent = stub.Send(legacy, timeout=TIMEOUT_S)
        # every replica derives the same key for the same legacy request
        assert other.Send(legacy, timeout=TIMEOUT_S).key == sent.key
        # a retry typed in other capitals is the same message, not a conflict
        retry = pb.SendRequest(
            key=sent.key, msg="legacy, to capitals", self_email="Alice@X.org", dest_email="bob@example.org"
        )
        again = stub.SendBatch(pb.SendBatchRequest(messages=[retry]), timeout=TIMEOUT_S)
        assert [r.outcome for r in again.results] == [pb.SEND_OUTCOME_ALREADY_STORED]
        key = new_key()
        batch = pb.SendRequest(key=key, msg="batched", self_email="a@x.org", dest_email="BOB@example.org")
        assert stub.SendBatch(pb.SendBatchRequest(messages=[batch]), timeout=TIMEOUT_S).results[0].outcome == (
            pb.SEND_OUTCOME_STORED
        )
        page = stub.Fetch(pb.FetchRequest(self_email="bob@EXAMPLE.org"), timeout=TIMEOUT_S)
        assert [m.key for m in page.messages] == [sent.key, key]
        assert page.messages[0].dest_email == "Bob@Example.ORG"  # the form the sender typed, for display
        subscribed = next(iter(stub.Subscribe(pb.SubscribeRequest(self_email="BOB@EXAMPLE.ORG"), timeout=TIMEOUT_S)))
        assert [m.key for m in subscribed.messages] == [sent.key, key]
        acked = stub.Ack(pb.AckRequest(self_email="Bob@example.org", keys=[key]), timeout=TIMEOUT_S)
        assert acked.deleted == 1
        taken = stub.ReceiveAll(pb.ReceiveRequest(self_email="bob@example.org"), timeout=TIMEOUT_S)
        assert [m.msg for m in taken.messages] == ["legacy, to capitals"]
        assert stub.Fetch(pb.FetchRequest(self_email="Bob@Example.ORG"), timeout=TIMEOUT_S).messages == []
        info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT_S)
        assert (info.messages, info.tombstones) == (0, 2)


def test_fetch_serves_the_bytes_stored_and_skips_a_damaged_row(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica()
    sent = [
        pb.SendRequest(
            key=new_key(), msg=f"body {i}", self_email="a@x.org", dest_email="bob@x.org", created_unix_ms=i + 1
        )
        for i in range(3)
    ]
    with stub_for(replica.address) as stub:
        stub.SendBatch(pb.SendBatchRequest(messages=sent), timeout=TIMEOUT_S)
        assert list(stub.Fetch(pb.FetchRequest(self_email="bob@x.org"), timeout=TIMEOUT_S).messages) == sent
    assert replica.terminate() == 0
    conn = sqlite3.connect(replica.data_dir / STORE_FILE)
    try:
        (wire,) = conn.execute("SELECT wire FROM messages WHERE msg_key = ?", (sent[1].key,)).fetchone()
        conn.execute(
            "UPDATE messages SET wire = ? WHERE msg_key = ?", (wire.replace(b"body 1", b"body X"), sent[1].key)
        )
        conn.commit()
    finally:
        conn.close()
    replica.start()
    with stub_for(replica.address) as stub:
        page = stub.Fetch(pb.FetchRequest(self_email="bob@x.org"), timeout=TIMEOUT_S)
        assert list(page.messages) == [sent[0], sent[2]]  # the rest of the mailbox still reads
        pulled = stub.ReceiveAll(pb.ReceiveRequest(self_email="bob@x.org"), timeout=TIMEOUT_S)
        assert [m.msg for m in pulled.messages] == ["body 0", "body 2"]


def test_a_refused_message_in_a_batch_gets_its_key_and_reason(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica(store="memory")
    good = pb.SendRequest(key=new_key(), msg="fine", self_email="a@x.org", dest_email="bob@x.org")
    bad = pb.SendRequest(key=new_key(), msg="   ", self_email="a@x.org", dest_email="bob@x.org")
    legacy = pb.SendRequest(id=4, msg="no key", self_email="a@x.org", dest_email="bob@x.org")
    with stub_for(replica.address) as stub:
        reply = stub.SendBatch(pb.SendBatchRequest(messages=[good, bad, legacy]), timeout=TIMEOUT_S)
    stored, refused, derived = reply.results
    assert (stored.outcome, stored.key, stored.error) == (pb.SEND_OUTCOME_STORED, "", "")  # compact: nothing to add
    assert (refused.outcome, refused.key) == (pb.SEND_OUTCOME_REJECTED, bad.key)
    assert "whitespace" in refused.error
    assert derived.outcome == pb.SEND_OUTCOME_STORED
    assert derived.key.startswith("legacy-")  # a key the replica derived is said back


def test_unknown_fields_are_not_stored(replica_factory: ReplicaFactory) -> None:
    """Stored bytes hold the known fields only: nobody can park data beyond the body a quota counts."""
    replica = replica_factory.replica(store="memory")
    message = pb.SendRequest(key=new_key(), msg="hi", self_email="a@x.org", dest_email="bob@x.org", created_unix_ms=5)
    item = message.SerializeToString() + b"\xfa\x07\x05extra"  # field 127, length 5: unknown to this version
    stuffed = b"\x0a" + bytes([len(item)]) + item
    with grpc.insecure_channel(replica.address) as channel:
        send_batch = channel.unary_unary(
            "/messenger.MessengerService/SendBatch",
            request_serializer=lambda data: data,
            response_deserializer=pb.SendBatchResponse.FromString,
        )
        reply = send_batch(stuffed, timeout=TIMEOUT_S)
        assert reply.results[0].outcome == pb.SEND_OUTCOME_STORED
        page = pb_grpc.MessengerServiceStub(channel).Fetch(pb.FetchRequest(self_email="bob@x.org"), timeout=TIMEOUT_S)
    assert list(page.messages) == [message]
    assert page.messages[0].SerializeToString() == message.SerializeToString()
