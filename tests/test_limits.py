"""Limits on a real replica: mailbox quota, per-identity send rate, gRPC receive size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from grpc_messenger import ClientConfig, Messenger, ReplicaState, ServerConfig, wire
from grpc_messenger.model import Message
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.server.limits import RateLimiter, request_bytes_max
from grpc_messenger.store import MemoryStore, SqliteStore, Store
from grpc_messenger.store.base import ALREADY_STORED, QUOTA_EXCEEDED, STORED, Quota
from tests.conftest import ReplicaFactory
from tests.security_support import bearer, make_keys, snapshot, stub_for


def test_full_mailbox_refuses_sends_until_the_reader_acks(replica_factory: ReplicaFactory, tmp_path: Path) -> None:
    replica = replica_factory.replica(extra_args=("--quota-messages", "3", "--quota-bytes", "1000"))
    with stub_for(replica.address) as stub:
        for i in range(3):
            assert stub.Send(pb.SendRequest(id=i + 1, msg=f"m{i}", self_email="a@x.org", dest_email="b@x.org")).success
        before = snapshot(replica)
        with pytest.raises(grpc.RpcError) as full:
            stub.Send(pb.SendRequest(id=9, msg="one too many", self_email="a@x.org", dest_email="b@x.org"))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "mailbox b@x.org is full" in (full.value.details() or "")
        batch = stub.SendBatch(
            pb.SendBatchRequest(
                messages=[
                    pb.SendRequest(msg="to full", self_email="a@x.org", dest_email="b@x.org", key="k-full"),
                    pb.SendRequest(msg="to empty", self_email="a@x.org", dest_email="c@x.org", key="k-empty"),
                ]
            )
        )
        assert [r.outcome for r in batch.results] == [pb.SEND_OUTCOME_QUOTA_EXCEEDED, pb.SEND_OUTCOME_STORED]
        assert [row for row in snapshot(replica).messages if row[0] == "b@x.org"] == [
            row for row in before.messages if row[0] == "b@x.org"
        ]
        # bytes: one big message to a fresh mailbox passes, the next does not
        assert stub.Send(pb.SendRequest(id=1, msg="x" * 900, self_email="a@x.org", dest_email="d@x.org")).success
        with pytest.raises(grpc.RpcError, match="bytes"):
            stub.Send(pb.SendRequest(id=2, msg="y" * 200, self_email="a@x.org", dest_email="d@x.org"))
    # the library reports the full mailbox as a retryable failure, and succeeds after the reader acked
    config = ClientConfig(servers=(replica.address,), data_dir=tmp_path / "home", timeout_s=3)
    with Messenger(config) as m:
        report = m.send_many([_draft("b@x.org", "later")])[0]
        assert report.replicas[0].state is ReplicaState.FAILED
        assert "RESOURCE_EXHAUSTED" in report.replicas[0].error
        assert len(m.receive("b@x.org").messages) == 3
        assert m.send(sender="a@x.org", recipient="b@x.org", body="later").ok


def _draft(recipient: str, body: str) -> object:
    from grpc_messenger import Draft

    return Draft("a@x.org", recipient, body)


def test_send_rate_is_per_identity_with_retry_information(replica_factory: ReplicaFactory, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    replica = replica_factory.replica(
        extra_args=("--auth-public-key", str(keys.public_path), "--send-rate", "0.5", "--send-burst", "3")
    )
    alice, carol = keys.token("alice@x.org"), keys.token("carol@x.org")
    with stub_for(replica.address) as stub:
        for i in range(3):
            request = pb.SendRequest(id=i + 1, msg=f"m{i}", self_email="alice@x.org", dest_email="b@x.org")
            assert stub.Send(request, metadata=bearer(alice)).success
        before = snapshot(replica)
        with pytest.raises(grpc.RpcError) as limited:
            stub.Send(
                pb.SendRequest(id=9, msg="too fast", self_email="alice@x.org", dest_email="b@x.org"),
                metadata=bearer(alice),
            )
        error = limited.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailing = dict(error.trailing_metadata() or ())
        assert 1000 <= int(trailing["retry-after-ms"]) <= 2000
        status = rpc_status.from_call(error)
        assert status is not None
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert 1 <= info.retry_delay.seconds <= 2
        assert snapshot(replica) == before
        # another identity has its own bucket; a batch counts each message
        request = pb.SendRequest(id=1, msg="carol's turn", self_email="carol@x.org", dest_email="b@x.org")
        assert stub.Send(request, metadata=bearer(carol)).success


def test_rate_limiter_refills_and_allows_big_batches_into_debt() -> None:
    now = [100.0]
    limiter = RateLimiter(rate_per_s=10, burst=5, clock_s=lambda: now[0])
    assert limiter.check("a", 5) == 0
    assert limiter.check("a", 1) == 100  # ms until one token
    now[0] += 0.1
    assert limiter.check("a", 1) == 0
    now[0] += 10
    assert limiter.check("a", 50) == 0  # a full bucket admits a batch bigger than the burst ...
    assert limiter.check("a", 1) > 4000  # ... and the debt is paid in time
    assert limiter.check("b", 1) == 0


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_quota_is_exact_under_concurrent_batches(kind: str, tmp_path: Path) -> None:
    """Many batches racing for one mailbox: exactly the quota is stored, the rest refused, retries recognised."""
    quota = Quota(messages_max=50, bytes_max=0)

    async def run() -> None:
        store: Store = (
            SqliteStore(tmp_path / "s.sqlite3", quota=quota) if kind == "sqlite" else MemoryStore(quota=quota)
        )
        try:
            batches = [
                [
                    wire.row_of(
                        Message(key=f"k{b}-{i}", sender="a@x.org", recipient="B@x.org", body="x", created_unix_ms=1)
                    )
                    for i in range(8)
                ]
                for b in range(20)
            ]
            results = await asyncio.gather(*(store.put_rows(rows) for rows in batches))
            codes = [code for r in results for code in r.codes]
            assert codes.count(STORED) == 50
            assert codes.count(QUOTA_EXCEEDED) == 160 - 50
            assert all("mailbox b@x.org is full" in d for r in results for d in r.details.values())
            assert (await store.usage(["b@x.org"]))["b@x.org"].messages == 50
            # a retry of a stored message is recognised even though the mailbox is full
            stored_first = next(
                rows[i] for rows, r in zip(batches, results, strict=True) for i, c in enumerate(r.codes) if c == STORED
            )
            assert (await store.put_rows([stored_first])).codes == (ALREADY_STORED,)
            await store.ack("b@x.org", [stored_first[1]])
            assert (await store.put_rows([batches[-1][-1]])).codes in ((STORED,), (ALREADY_STORED,))
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(run(), timeout=30))


def test_oversized_frame_is_refused_before_parsing(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica(store="memory", extra_args=("--max-body-bytes", "1024"))
    limit = request_bytes_max(ServerConfig(body_bytes_max=1024))
    assert limit < 4 * 1024 * 1024
    channel = grpc.insecure_channel(replica.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    try:
        send_batch = channel.unary_unary("/messenger.MessengerService/SendBatch")
        with pytest.raises(grpc.RpcError) as refused:
            send_batch(b"\x0a" + b"\xff" * (limit + 10), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()
