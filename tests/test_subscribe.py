"""Subscribe on a real replica: queued pages first, then pushes as messages arrive; resumable."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc

from grpc_messenger.proto import messenger_pb2 as pb
from tests.conftest import ReplicaFactory
from tests.security_support import call_code, stub_for

# a wait for a page: it returns as soon as one comes. A push is told from the heartbeat by its
# content, not its timing: the heartbeat (every 15 s) is an empty page, a push carries the message
PUSH_WAIT_S = 30.0
STREAM_DEADLINE_S = 3 * PUSH_WAIT_S


def _read_in_background(stream: Any) -> tuple[queue.Queue[pb.FetchResponse | Exception], threading.Thread]:
    """Pages of a Subscribe stream, read on a thread into a bounded queue (an error ends it)."""
    pages: queue.Queue[pb.FetchResponse | Exception] = queue.Queue(maxsize=100)

    def read() -> None:
        try:
            for page in stream:
                pages.put(page, timeout=PUSH_WAIT_S)
        except grpc.RpcError as exc:
            pages.put(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return pages, reader


def test_subscribe_pushes_new_messages_and_resumes_after_a_position(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica(store="memory")
    with stub_for(replica.address) as stub:
        stub.Send(pb.SendRequest(id=1, msg="queued before", self_email="a@x.org", dest_email="bob@x.org"))
        stream = stub.Subscribe(pb.SubscribeRequest(self_email="bob@x.org"), timeout=STREAM_DEADLINE_S)
        pages, reader = _read_in_background(stream)
        try:
            first = pages.get(timeout=PUSH_WAIT_S)
            assert isinstance(first, pb.FetchResponse)
            assert [m.msg for m in first.messages] == ["queued before"]
            stub.Send(pb.SendRequest(id=2, msg="pushed", self_email="a@x.org", dest_email="bob@x.org"))
            stub.Send(pb.SendRequest(id=3, msg="other mailbox", self_email="a@x.org", dest_email="eve@x.org"))
            # the very next page carries it: woken by the send, not an (empty) heartbeat
            pushed = pages.get(timeout=PUSH_WAIT_S)
            assert isinstance(pushed, pb.FetchResponse)
            assert [m.msg for m in pushed.messages] == ["pushed"]
        finally:
            stream.cancel()
            reader.join(timeout=PUSH_WAIT_S)
        # resume after the first page: only what came later
        again = next(stub.Subscribe(pb.SubscribeRequest(self_email="bob@x.org", after_seq=first.next_after_seq)))
        assert [m.msg for m in again.messages] == ["pushed"]
        # non-destructive: Fetch still sees both until acked
        assert len(stub.Fetch(pb.FetchRequest(self_email="bob@x.org")).messages) == 2


def test_subscribe_refuses_bad_input(replica_factory: ReplicaFactory) -> None:
    replica = replica_factory.replica(store="memory")
    bad = [pb.SubscribeRequest(self_email="not an address"), pb.SubscribeRequest(self_email="b@x.org", after_seq=-1)]
    with stub_for(replica.address) as stub:
        for request in bad:
            code, _ = call_code(lambda r, **kw: next(stub.Subscribe(r, **kw)), request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_messages_repair_brings_wake_subscribers_at_once(replica_factory: ReplicaFactory) -> None:
    """A message that reaches a replica only through repair is pushed, not left for the heartbeat."""
    sender, watched = replica_factory.cluster(2, repair_interval_s=0.2).replicas
    with stub_for(watched.address) as stub:
        # capitals on purpose: one mailbox however it is written
        stream = stub.Subscribe(pb.SubscribeRequest(self_email="Carol@X.org"), timeout=STREAM_DEADLINE_S)
        pages, reader = _read_in_background(stream)
        try:
            first = pages.get(timeout=PUSH_WAIT_S)
            assert isinstance(first, pb.FetchResponse)
            assert list(first.messages) == []
            with stub_for(sender.address) as other:
                other.Send(pb.SendRequest(id=1, msg="via repair", self_email="a@x.org", dest_email="carol@x.org"))
            # the very next page carries it: woken by repair's write, not an (empty) heartbeat
            pushed = pages.get(timeout=PUSH_WAIT_S)
            assert isinstance(pushed, pb.FetchResponse)
            assert [m.msg for m in pushed.messages] == ["via repair"]
        finally:
            stream.cancel()
            reader.join(timeout=PUSH_WAIT_S)
