"""Access control on a real replica with auth on: every RPC, every bad credential, store unchanged.

The matrix: for each RPC that reads, deletes or sends for bob@x.org, and for each
credential that is not bob's (none, malformed, expired, wrongly signed, forged,
another user's, a peer's), the call is refused with the right status and the
replica's SQLite file is byte-for-byte the same rows afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_messenger import ClientConfig, Messenger, PermissionDenied
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.security.tokens import Identity, Role
from grpc_messenger.server.auth import PEER, Rule, check_access
from tests.conftest import ReplicaFactory, ReplicaProcess
from tests.security_support import Keys, call_code, make_keys, snapshot, stub_for

BOB = "bob@x.org"
ALICE = "alice@x.org"
MALLORY = "mallory@x.org"


@dataclass
class AuthReplica:
    replica: ReplicaProcess
    keys: Keys
    other_keys: Keys


@pytest.fixture(scope="module")
def auth_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthReplica]:
    root = tmp_path_factory.mktemp("auth")
    keys = make_keys(root / "keys")
    other = make_keys(root / "other-keys")
    factory = ReplicaFactory(root / "replicas")
    try:
        replica = factory.replica(extra_args=("--auth-public-key", str(keys.public_path)))
        yield AuthReplica(replica, keys, other)
    finally:
        factory.teardown()


def _seed_bob(r: AuthReplica, stub: pb_grpc.MessengerServiceStub, n: int = 3) -> list[str]:
    """Alice sends bob n messages (with her own token); their keys."""
    token = r.keys.token(ALICE)
    keys = []
    for i in range(n):
        reply = stub.Send(
            pb.SendRequest(id=i + 1, msg=f"for bob {i} {time.time_ns()}", self_email=ALICE, dest_email=BOB),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=5,
        )
        assert reply.success
        keys.append(reply.key)
    return keys


def bad_credentials(r: AuthReplica) -> dict[str, tuple[str | None, grpc.StatusCode, str]]:
    """name -> (token, expected code, word the message must contain)."""
    now = int(time.time())
    bob = r.keys.token(BOB)
    prefix, kid, _, sig = bob.split(".")
    _, _, mallory_payload, _ = r.keys.token(MALLORY).split(".")
    unauth = grpc.StatusCode.UNAUTHENTICATED
    denied = grpc.StatusCode.PERMISSION_DENIED
    return {
        "none": (None, unauth, "missing"),
        "malformed": ("not-a-token", unauth, "malformed"),
        "expired": (r.keys.token(BOB, now_s=now - 7200, ttl_s=3600), unauth, "expired"),
        "other key": (r.other_keys.token(BOB), unauth, "bad signature"),
        "forged payload": (f"{prefix}.{kid}.{mallory_payload}.{sig}", unauth, "bad signature"),
        "another user": (r.keys.token(MALLORY), denied, MALLORY),
        "another user, capitalised": (r.keys.token(MALLORY.upper()), denied, "cannot act"),
        "peer": (r.keys.token("replica-1", role=Role.PEER), denied, "peer token"),
    }


def bob_requests(bob_keys: list[str]) -> dict[str, tuple[str, Any]]:
    """rpc name -> (stub attribute, a request that reads, deletes or sends as bob)."""
    return {
        "Send as bob": ("Send", pb.SendRequest(id=7, msg="forged", self_email=BOB, dest_email=ALICE)),
        "SendBatch as bob": (
            "SendBatch",
            pb.SendBatchRequest(
                messages=[
                    pb.SendRequest(msg="fine", self_email=MALLORY, dest_email=ALICE, key="k-mallory-1"),
                    pb.SendRequest(msg="forged", self_email=BOB, dest_email=ALICE, key="k-forged-1"),
                ]
            ),
        ),
        "SendBatchStream as bob": (
            "SendBatchStream",
            pb.SendBatchRequest(messages=[pb.SendRequest(msg="forged", self_email=BOB, dest_email=ALICE, key="k-f-2")]),
        ),
        "Fetch bob": ("Fetch", pb.FetchRequest(self_email=BOB)),
        "Ack bob": ("Ack", pb.AckRequest(self_email=BOB, keys=bob_keys)),
        "ReceiveAll bob": ("ReceiveAll", pb.ReceiveRequest(self_email=BOB)),
        "Subscribe bob": ("Subscribe", pb.SubscribeRequest(self_email=BOB)),
    }


def _call(stub: pb_grpc.MessengerServiceStub, rpc: str, request: Any, token: str | None) -> tuple[grpc.StatusCode, str]:
    method = getattr(stub, rpc)
    if rpc == "Subscribe":
        return call_code(lambda req, **kw: next(iter(method(req, **kw))), request, token=token)
    if rpc == "SendBatchStream":
        return call_code(lambda req, **kw: next(iter(method(iter([req]), **kw))), request, token=token)
    return call_code(method, request, token=token)


def test_nobody_but_bob_can_read_ack_receive_subscribe_or_send_as_bob(auth_replica: AuthReplica) -> None:
    """Every RPC x every non-bob credential: refused with the named reason, store unchanged."""
    r = auth_replica
    with stub_for(r.replica.address) as stub:
        bob_keys = _seed_bob(r, stub)
        before = snapshot(r.replica)
        assert sum(1 for row in before.messages if row[0] == BOB) >= 3
        tried = 0
        for cred_name, (token, code, word) in bad_credentials(r).items():
            for rpc_name, (rpc, request) in bob_requests(bob_keys).items():
                got, details = _call(stub, rpc, request, token)
                assert got == code, f"{rpc_name} with {cred_name}: {got} {details}"
                assert word in details, f"{rpc_name} with {cred_name}: {details!r} lacks {word!r}"
                assert snapshot(r.replica) == before, f"{rpc_name} with {cred_name} changed the store"
                tried += 1
        print(f"refused {tried} calls, store unchanged after each")
        # and bob himself can do all of it
        bob = r.keys.token(BOB)
        assert _call(stub, "Fetch", pb.FetchRequest(self_email=BOB), bob)[0] == grpc.StatusCode.OK
        # one mailbox however capitalised: in the token or in the request
        capitalised = r.keys.token("Bob@X.org")
        assert _call(stub, "Fetch", pb.FetchRequest(self_email=BOB), capitalised)[0] == grpc.StatusCode.OK
        assert _call(stub, "Fetch", pb.FetchRequest(self_email=BOB.upper()), bob)[0] == grpc.StatusCode.OK
        first = next(iter(stub.Subscribe(pb.SubscribeRequest(self_email=BOB), metadata=_md(bob), timeout=5)))
        assert {m.key for m in first.messages} >= set(bob_keys)
        assert stub.Ack(pb.AckRequest(self_email=BOB, keys=bob_keys[:1]), metadata=_md(bob), timeout=5).deleted == 1
        taken = stub.ReceiveAll(pb.ReceiveRequest(self_email=BOB), metadata=_md(bob), timeout=5)
        assert {m.key for m in taken.messages} >= set(bob_keys[1:])
        sent = stub.Send(pb.SendRequest(id=9, msg="from bob", self_email=BOB, dest_email=ALICE), metadata=_md(bob))
        assert sent.success


def test_a_send_stream_admits_each_batch_on_its_own(auth_replica: AuthReplica) -> None:
    """Bob's token on one stream: his batches are stored; one sent as alice ends the call, nothing after it stored."""
    r = auth_replica
    tag = time.time_ns()

    def batch(sender: str, n: int) -> pb.SendBatchRequest:
        return pb.SendBatchRequest(
            messages=[pb.SendRequest(msg=f"{n}", self_email=sender, dest_email=ALICE, key=f"k-{tag}-{n}")]
        )

    requests = [batch(BOB, 1), batch(BOB, 2), batch(ALICE, 3), batch(BOB, 4)]
    answers: list[pb.SendBatchResponse] = []
    with stub_for(r.replica.address) as stub:
        before = snapshot(r.replica)
        call = stub.SendBatchStream(iter(requests), metadata=_md(r.keys.token(BOB)), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            answers.extend(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ALICE in (refused.value.details() or "")
    assert [a.results[0].outcome for a in answers] == [pb.SEND_OUTCOME_STORED] * 2
    stored = {row[1] for row in snapshot(r.replica).messages} - {row[1] for row in before.messages}
    assert stored == {f"k-{tag}-1", f"k-{tag}-2"}


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_legacy_client_needs_only_the_metadata(auth_replica: AuthReplica) -> None:
    """A request with only the original four fields works once the token is added, and not before."""
    r = auth_replica
    channel = grpc.insecure_channel(r.replica.address)
    try:
        # the original client's exact calls, as raw bytes of the original messages
        send = channel.unary_unary("/messenger.MessengerService/Send")
        receive = channel.unary_unary("/messenger.MessengerService/ReceiveAll")
        legacy = pb.SendRequest(id=1, msg="legacy hello", self_email="carol@x.org", dest_email="dave@x.org")
        with pytest.raises(grpc.RpcError) as refused:
            send(legacy.SerializeToString(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in (refused.value.details() or "")
        reply = pb.SendResponse.FromString(
            send(legacy.SerializeToString(), metadata=_md(r.keys.token("carol@x.org")), timeout=5)
        )
        assert reply.success
        inbox = pb.InboxResponse.FromString(
            receive(
                pb.ReceiveRequest(self_email="dave@x.org").SerializeToString(),
                metadata=_md(r.keys.token("dave@x.org")),
                timeout=5,
            )
        )
        assert [m.msg for m in inbox.messages] == ["legacy hello"]
    finally:
        channel.close()


def test_info_needs_a_token_health_does_not(auth_replica: AuthReplica) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    r = auth_replica
    with stub_for(r.replica.address) as stub:
        assert call_code(stub.Info, pb.InfoRequest())[0] == grpc.StatusCode.UNAUTHENTICATED
        assert call_code(stub.Info, pb.InfoRequest(), token=r.keys.token(BOB))[0] == grpc.StatusCode.OK
        peer = r.keys.token("replica-2", role=Role.PEER)
        assert call_code(stub.Info, pb.InfoRequest(), token=peer)[0] == grpc.StatusCode.OK
    channel = grpc.insecure_channel(r.replica.address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


def test_client_library_sends_its_token_and_reads_only_its_mailbox(auth_replica: AuthReplica, tmp_path: Path) -> None:
    r = auth_replica

    def client(token: str) -> Messenger:
        return Messenger(ClientConfig(servers=(r.replica.address,), data_dir=tmp_path / token[-8:], token=token))

    with client(r.keys.token("erin@x.org")) as erin:
        assert erin.send(sender="erin@x.org", recipient="frank@x.org", body="hi frank").ok
        with pytest.raises(PermissionDenied, match=r"cannot act for 'frank@x\.org'"):
            erin.send(sender="frank@x.org", recipient="erin@x.org", body="spoof")
        with pytest.raises(PermissionDenied, match=r"cannot act for 'frank@x\.org'"):
            erin.receive("frank@x.org")
    with client(r.keys.token("frank@x.org")) as frank:
        assert [m.body for m in frank.receive("frank@x.org").messages] == ["hi frank"]


def _identity(role: Role, subject: str = BOB) -> Identity:
    return Identity(subject=subject, role=role, expires_unix_s=2**40, key_id="k")


def test_user_token_can_never_act_as_a_peer() -> None:
    """Replica-to-replica RPCs (repair) take a PEER rule; a user token is refused there, a peer token passes."""
    repair = Rule(PEER)
    with pytest.raises(Exception, match="peer credential"):
        check_access(repair, _identity(Role.USER), request=None)
    check_access(repair, _identity(Role.PEER, "replica-2"), request=None)


def test_method_without_a_rule_is_refused() -> None:
    with pytest.raises(Exception, match="no access rule"):
        check_access(None, _identity(Role.USER), request=None)


@pytest.mark.parametrize("rpc", ["Send", "SendBatch", "Fetch", "Ack", "ReceiveAll"])
def test_auth_is_off_by_default(replica_factory: ReplicaFactory, rpc: str) -> None:
    """Without --auth-public-key every RPC works without a token, as for the original client."""
    replica = replica_factory.replica(store="memory")
    requests: dict[str, Callable[[], Any]] = {
        "Send": lambda: pb.SendRequest(id=1, msg="m", self_email=ALICE, dest_email=BOB),
        "SendBatch": lambda: pb.SendBatchRequest(messages=[pb.SendRequest(msg="m", self_email=ALICE, dest_email=BOB)]),
        "Fetch": lambda: pb.FetchRequest(self_email=BOB),
        "Ack": lambda: pb.AckRequest(self_email=BOB, keys=["k1"]),
        "ReceiveAll": lambda: pb.ReceiveRequest(self_email=BOB),
    }
    with stub_for(replica.address) as stub:
        assert call_code(getattr(stub, rpc), requests[rpc]())[0] == grpc.StatusCode.OK
