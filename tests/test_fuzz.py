"""Hostile input against a live replica: generated requests, raw garbage, slow clients.

After each campaign the replica must be healthy, its SQLite file must pass
`PRAGMA integrity_check`, every stored row must be valid (addresses, key, body
size, checksum, usage totals), and every message a replica acknowledged must be
there (or acked). Sizes are bounded for CI; scale them with FUZZ_SCALE (e.g.
FUZZ_SCALE=20 for a longer campaign) and replay with FUZZ_SEED.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_messenger import ServerConfig
from grpc_messenger.model import UNIX_MS_MAX, content_digest, new_key, normalize_address, validate_address, validate_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.servicer import MessengerServicer
from grpc_messenger.server.subscriptions import SubscribeLimits
from grpc_messenger.store import MemoryStore
from grpc_messenger.store.base import row_checksum
from tests import strategies
from tests.conftest import ReplicaFactory, ReplicaProcess
from tests.security_support import bearer, integrity_ok, make_keys, read_store, wait_healthy

BODY_BYTES_MAX = 2048
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
SEED = int(os.environ.get("FUZZ_SEED", str(random.SystemRandom().randrange(2**32))))
TYPED_EXAMPLES = 400 * SCALE
WIRE_EXAMPLES = 200 * SCALE
AUTH_EXAMPLES = 150 * SCALE
SOCKET_ROUNDS = 40 * SCALE
# typed requests may be refused, never crash the replica: anything else is a bug
TYPED_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS}
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Campaign:
    """A live replica and what the fuzzers learned about it."""

    replica: ReplicaProcess
    channel: grpc.Channel
    stub: pb_grpc.MessengerServiceStub
    acked: set[tuple[str, str]] = field(default_factory=set)
    codes: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    print(f"\nfuzz: FUZZ_SEED={SEED} FUZZ_SCALE={SCALE}")
    factory = ReplicaFactory(tmp_path_factory.mktemp("fuzz"))
    channel: grpc.Channel | None = None
    try:
        replica = factory.replica(extra_args=("--max-body-bytes", str(BODY_BYTES_MAX)))
        channel = grpc.insecure_channel(replica.address)
        c = Campaign(replica, channel, pb_grpc.MessengerServiceStub(channel))
        seed_store(c)
        yield c
        print(f"fuzz: outcomes {dict(sorted(c.codes.items()))}; acknowledged messages checked: {len(c.acked)}")
    finally:
        if channel is not None:
            channel.close()
        factory.teardown()


def seed_store(c: Campaign) -> None:
    """Valid messages stored before any fuzzing, so every soundness check (also one run alone) has data to check."""
    messages = [
        pb.SendRequest(key=new_key(), msg=f"seed {i}", self_email="seed@x.org", dest_email=f"seed-{i % 2}@x.org")
        for i in range(4)
    ]
    request = pb.SendBatchRequest(messages=messages)
    _record(c, "SendBatch", request, c.stub.SendBatch(request, timeout=10))
    assert len(c.acked) == len(messages)


def assert_replica_sound(c: Campaign) -> None:
    """Healthy, intact, nothing invalid stored, nothing acknowledged lost, usage totals exact."""
    wait_healthy(c.replica.address)
    assert c.replica.alive
    assert integrity_ok(c.replica)
    with read_store(c.replica) as conn:
        rows = conn.execute("SELECT mailbox, msg_key, digest, body_bytes, wire, checksum FROM messages").fetchall()
        present = {(row[0], row[1]) for row in rows}
        tombstoned = set(conn.execute("SELECT mailbox, msg_key FROM tombstones").fetchall())
        present |= tombstoned
        usage = {
            m: (n, b)
            for m, n, b in conn.execute("SELECT mailbox, messages, body_bytes FROM mailboxes WHERE messages > 0")
        }
    expected_usage: dict[str, tuple[int, int]] = {}
    for mailbox, key, digest, size, data, checksum in rows:
        assert checksum == row_checksum(mailbox, key, digest, size, data)
        stored = pb.SendRequest.FromString(data)
        assert mailbox == normalize_address(validate_address(stored.dest_email))
        validate_address(stored.self_email)
        assert validate_key(key) == stored.key
        body = stored.msg
        assert 0 < len(body.encode("utf-8")) == size <= BODY_BYTES_MAX
        assert 0 < stored.created_unix_ms <= UNIX_MS_MAX
        assert stored.id >= 0
        assert digest == content_digest(key=key, sender=stored.self_email, recipient=mailbox, body=body)
        if (mailbox, key) in tombstoned:
            continue  # acked: the row only waits for the replica to sweep it
        n, b = expected_usage.get(mailbox, (0, 0))
        expected_usage[mailbox] = (n + 1, b + size)
    assert usage == expected_usage
    assert c.acked, "nothing acknowledged: the check would be empty"
    missing = c.acked - present
    assert not missing, f"acknowledged but gone: {sorted(missing)[:5]}"


def _record(c: Campaign, method: str, request: Any, response: Any) -> None:
    if method == "Send":
        assert response.success
        c.acked.add((normalize_address(request.dest_email), response.key))
    elif method == "SendBatch":
        assert len(response.results) == len(request.messages)
        for item, result in zip(request.messages, response.results, strict=True):
            if result.outcome in (pb.SEND_OUTCOME_STORED, pb.SEND_OUTCOME_ALREADY_STORED):
                # the reply says the key only where the client may not know it
                assert result.key or item.key
                c.acked.add((normalize_address(item.dest_email), result.key or item.key))
            else:
                assert result.outcome in (pb.SEND_OUTCOME_REJECTED, pb.SEND_OUTCOME_CONFLICT), result
                assert result.error or result.outcome == pb.SEND_OUTCOME_CONFLICT
    elif method == "Fetch":
        assert len(response.messages) <= 1000


@settings(
    max_examples=TYPED_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(call=strategies.rpc_calls(body_bytes_max=BODY_BYTES_MAX))
def test_generated_requests_get_clear_answers(campaign: Campaign, call: tuple[str, Any]) -> None:
    method, request = call
    response, code, details = _attempt(lambda: getattr(campaign.stub, method)(request, timeout=10))
    campaign.codes[f"typed:{code.name}"] += 1
    assert code in TYPED_CODES, f"{method}: {code} {details}"
    if code is grpc.StatusCode.OK:
        _record(campaign, method, request, response)
    else:
        assert details, "a refusal must say why"


def _attempt(call: Callable[[], Any]) -> tuple[Any, grpc.StatusCode, str]:
    """(response or None, status code, details) of one call."""
    try:
        return call(), grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return None, exc.code(), exc.details() or ""


def test_store_sound_after_generated_requests(campaign: Campaign) -> None:
    assert campaign.codes["typed:OK"] > 0
    assert campaign.codes["typed:INVALID_ARGUMENT"] > 0
    assert_replica_sound(campaign)


METHODS = ["Send", "SendBatch", "Fetch", "Ack", "ReceiveAll", "Info"]


@settings(max_examples=WIRE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), body=strategies.wire_garbage())
def test_wrong_wire_types_and_garbage_bodies_are_refused(campaign: Campaign, method: str, body: bytes) -> None:
    call = campaign.channel.unary_unary(f"/messenger.MessengerService/{method}")
    # some garbage is valid protobuf (then the typed checks run); an undecodable body is
    # INVALID_ARGUMENT, not gRPC's UNKNOWN: the guard interceptor sees to it
    _, code, details = _attempt(lambda: call(body, timeout=10))
    campaign.codes[f"wire:{code.name}"] += 1
    assert code in TYPED_CODES, f"{code} {details}"


def test_store_sound_after_wire_garbage(campaign: Campaign) -> None:
    assert_replica_sound(campaign)


def _frame(rng: random.Random) -> bytes:
    payload = rng.randbytes(rng.randrange(0, 64))
    kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, rng.randrange(256)])
    stream = rng.choice([0, 1, 3, rng.randrange(2**31)])
    return struct.pack(">I", len(payload))[1:] + bytes([kind, rng.randrange(256)]) + struct.pack(">I", stream) + payload


def test_raw_garbage_on_the_socket_never_hurts(campaign: Campaign) -> None:
    rng = random.Random(SEED)
    host, port = campaign.replica.address.rsplit(":", 1)
    deadline = time.monotonic() + 30
    for i in range(SOCKET_ROUNDS):
        assert time.monotonic() < deadline, f"socket campaign too slow at round {i} (seed {SEED})"
        style = i % 4
        if style == 0:
            data = rng.randbytes(rng.randrange(1, 2048))
        elif style == 1:
            data = HTTP2_PREFACE + rng.randbytes(rng.randrange(0, 512))
        else:
            data = HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
            data += b"".join(_frame(rng) for _ in range(rng.randrange(1, 20)))
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            try:
                sock.sendall(data)
                sock.settimeout(0.2)
                sock.recv(65536)
            except OSError:
                pass  # the replica may hang up on us: that is the right answer
        campaign.codes["socket:rounds"] += 1
    assert_replica_sound(campaign)


def test_slow_clients_do_not_starve_others(campaign: Campaign) -> None:
    """Half-open connections and Subscribe streams that stop reading: others are still served."""
    host, port = campaign.replica.address.rsplit(":", 1)
    stalled = []
    streams = []
    try:
        for _ in range(30):
            sock = socket.create_connection((host, int(port)), timeout=2)
            sock.sendall(HTTP2_PREFACE[:7])  # and then nothing
            stalled.append(sock)
        mailbox = "slow-reader@x.org"
        for _ in range(8):
            stream = campaign.stub.Subscribe(pb.SubscribeRequest(self_email=mailbox), timeout=60)
            next(stream)  # subscribed; from now on this client never reads
            streams.append(stream)
        with pytest.raises(grpc.RpcError) as too_many:
            next(campaign.stub.Subscribe(pb.SubscribeRequest(self_email=mailbox), timeout=10))
        assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        body = "z" * BODY_BYTES_MAX
        started = time.monotonic()
        for i in range(50):  # pushes pile up at the non-readers
            reply = campaign.stub.Send(
                pb.SendRequest(id=i + 1, msg=body, self_email="a@x.org", dest_email=mailbox), timeout=5
            )
            campaign.acked.add((mailbox, reply.key))
        page = campaign.stub.Fetch(pb.FetchRequest(self_email=mailbox, limit=10), timeout=5)
        assert len(page.messages) == 10
        assert time.monotonic() - started < 20
    finally:
        for stream in streams:
            stream.cancel()
        for sock in stalled:
            sock.close()
    # the slots come back once the clients are gone
    deadline = time.monotonic() + 10
    request = pb.SubscribeRequest(self_email="slow-reader@x.org")
    while (code := _attempt(lambda: next(campaign.stub.Subscribe(request, timeout=5)))[1]) is not grpc.StatusCode.OK:
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() < deadline, "Subscribe slots were not released"
        time.sleep(0.2)
    assert_replica_sound(campaign)


def test_a_subscriber_that_stops_reading_is_dropped() -> None:
    """In-process: a write that never completes frees the stream after write_timeout_s."""

    class StuckContext:
        aborted: tuple[grpc.StatusCode, str] | None = None

        async def write(self, message: object) -> None:
            await asyncio.Event().wait()  # the client never makes room

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.aborted = (code, details)
            raise RuntimeError("aborted")

    async def run() -> None:
        servicer = MessengerServicer(MemoryStore(), ServerConfig(), subscribe=SubscribeLimits(write_timeout_s=0.2))
        context = StuckContext()
        with pytest.raises(RuntimeError, match="aborted"):
            await servicer.Subscribe(pb.SubscribeRequest(self_email="bob@x.org"), context)  # type: ignore[arg-type]
        assert context.aborted is not None
        assert context.aborted[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.signals.open_streams == 0

    asyncio.run(asyncio.wait_for(run(), timeout=10))


AuthCampaign = tuple[ReplicaProcess, pb_grpc.MessengerServiceStub, str]
FOR_BOB = "for bob, behind his token"


@pytest.fixture(scope="module")
def auth_campaign(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ReplicaProcess, pb_grpc.MessengerServiceStub, str]]:
    """A replica requiring tokens, its stub, and Bob's token; Bob's mailbox holds one message (FOR_BOB)."""
    root = tmp_path_factory.mktemp("fuzz-auth")
    keys = make_keys(root / "keys")
    factory = ReplicaFactory(root / "replicas")
    channel: grpc.Channel | None = None
    try:
        replica = factory.replica(extra_args=("--auth-public-key", str(keys.public_path)))
        channel = grpc.insecure_channel(replica.address)
        stub, bob = pb_grpc.MessengerServiceStub(channel), keys.token("bob@x.org")
        mine = pb.SendRequest(key=new_key(), msg=FOR_BOB, self_email="bob@x.org", dest_email="bob@x.org")
        assert stub.Send(mine, metadata=bearer(bob), timeout=10).success
        yield replica, stub, bob
    finally:
        if channel is not None:
            channel.close()
        factory.teardown()


def _metadata_values() -> st.SearchStrategy[str]:
    printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=400)
    return st.one_of(printable, printable.map(lambda t: "Bearer " + t), printable.map(lambda t: "Bearer mt1." + t))


@settings(max_examples=AUTH_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_metadata_values(), tamper=st.integers(0, 400))
def test_garbage_and_tampered_tokens_are_unauthenticated(auth_campaign: AuthCampaign, value: str, tamper: int) -> None:
    _, stub, bob = auth_campaign
    request = pb.FetchRequest(self_email="bob@x.org")
    for token_value in (value, _flip(bob, tamper)):
        metadata = (("authorization", token_value),)
        _, code, details = _attempt(lambda md=metadata: stub.Fetch(request, metadata=md, timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (token_value, details)
    # and Bob's own token still opens his mailbox
    page = stub.Fetch(request, metadata=bearer(bob), timeout=5)
    assert [m.msg for m in page.messages] == [FOR_BOB]


def _flip(token: str, position: int) -> str:
    """Bob's token with one character changed: must never verify."""
    i = position % len(token)
    replacement = "A" if token[i] != "A" else "B"
    return "Bearer " + token[:i] + replacement + token[i + 1 :]


def test_auth_replica_sound_after_token_fuzz(
    auth_campaign: AuthCampaign,
) -> None:
    replica = auth_campaign[0]
    wait_healthy(replica.address)
    assert integrity_ok(replica)
