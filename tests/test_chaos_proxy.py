"""The fault-injecting proxy, mode by mode, in front of a real replica process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_messenger.chaos import FaultProxy, ProxyMode
from grpc_messenger.chaos.proxy import FrameSplitter
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import ReplicaFactory, ReplicaProcess

TEST_TIMEOUT_S = 30.0
if TYPE_CHECKING:
    Stub = pb_grpc.MessengerServiceAsyncStub
    Scenario = Callable[[FaultProxy, Stub, Stub], Awaitable[None]]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    """One replica for the module (tests use distinct mailboxes); a new proxy per test."""
    factory = ReplicaFactory(tmp_path_factory.mktemp("proxy-replica"))
    try:
        yield factory.replica()
    finally:
        factory.teardown()


def run_with_proxy(replica: ReplicaProcess, scenario: Scenario) -> None:
    """Put a new proxy before the replica; run `scenario(proxy, via_proxy, direct)`; always close."""

    async def main() -> None:
        proxy = FaultProxy(name="test", upstream=replica.address)
        await proxy.start()
        via = grpc.aio.insecure_channel(proxy.address)
        direct = grpc.aio.insecure_channel(replica.address)
        try:
            await scenario(proxy, pb_grpc.MessengerServiceStub(via), pb_grpc.MessengerServiceStub(direct))
        finally:
            await via.close()
            await direct.close()
            await proxy.close()

    asyncio.run(asyncio.wait_for(main(), timeout=TEST_TIMEOUT_S))


def message(key: str, mailbox: str) -> pb.SendRequest:
    return pb.SendRequest(self_email="s@x.org", dest_email=mailbox, msg=f"body {key}", key=key, created_unix_ms=1)


async def keys_on(stub: Stub, mailbox: str) -> set[str]:
    page = await stub.Fetch(pb.FetchRequest(self_email=mailbox, limit=100), timeout=5)
    return {m.key for m in page.messages}


async def info_ok(stub: Stub) -> bool:
    try:
        await stub.Info(pb.InfoRequest(), timeout=3)
    except grpc.RpcError:
        return False
    return True


def test_pass_forwards_calls(replica: ReplicaProcess) -> None:
    async def scenario(proxy: FaultProxy, via: Stub, direct: object) -> None:
        await via.SendBatch(pb.SendBatchRequest(messages=[message("k-pass", "pass@x.org")]), timeout=5)
        assert await keys_on(via, "pass@x.org") == {"k-pass"}
        assert proxy.stats.bytes_up > 0
        assert proxy.stats.bytes_down > 0

    run_with_proxy(replica, scenario)


def test_delay_slows_every_call_by_at_least_the_delay(replica: ReplicaProcess) -> None:
    async def scenario(proxy: FaultProxy, via: Stub, direct: object) -> None:
        assert await info_ok(via)  # connection up before timing
        proxy.set_mode(ProxyMode.DELAY, delay_ms=200)
        started = time.monotonic()
        assert await info_ok(via)
        elapsed_s = time.monotonic() - started
        assert elapsed_s >= 0.4  # 200 ms up, 200 ms down
        proxy.heal()
        started = time.monotonic()
        assert await info_ok(via)
        assert time.monotonic() - started < 0.3

    run_with_proxy(replica, scenario)


def test_drop_black_holes_until_healed(replica: ReplicaProcess) -> None:
    async def scenario(proxy: FaultProxy, via: Stub, direct: object) -> None:
        assert await info_ok(via)
        proxy.set_mode(ProxyMode.DROP)
        with pytest.raises(grpc.RpcError) as caught:
            await via.Info(pb.InfoRequest(), timeout=0.5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert proxy.stats.bytes_dropped > 0
        proxy.heal()  # the broken connection is reset; the channel reconnects
        deadline = time.monotonic() + 10
        while not await info_ok(via):
            assert time.monotonic() < deadline, "no recovery after DROP was healed"
            await asyncio.sleep(0.1)

    run_with_proxy(replica, scenario)


def test_cut_resets_and_refuses_until_healed(replica: ReplicaProcess) -> None:
    async def scenario(proxy: FaultProxy, via: Stub, direct: object) -> None:
        assert await info_ok(via)
        proxy.set_mode(ProxyMode.CUT)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            await via.Info(pb.InfoRequest(), timeout=3)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2.5  # refused, not hanging until the deadline
        assert proxy.stats.resets >= 1
        proxy.heal()
        deadline = time.monotonic() + 10
        while not await info_ok(via):
            assert time.monotonic() < deadline, "no recovery after CUT was healed"
            await asyncio.sleep(0.1)

    run_with_proxy(replica, scenario)


def test_lose_response_delivers_the_request_and_loses_the_answer(replica: ReplicaProcess) -> None:
    async def scenario(proxy: FaultProxy, via: Stub, direct: Stub) -> None:
        mailbox = "lose@x.org"
        proxy.set_mode(ProxyMode.LOSE_RESPONSE)  # before the first connection: the handshake must still pass
        with pytest.raises(grpc.RpcError) as caught:
            await via.SendBatch(pb.SendBatchRequest(messages=[message("k-lost-answer", mailbox)]), timeout=3)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert proxy.stats.responses_lost >= 1
        assert await keys_on(direct, mailbox) == {"k-lost-answer"}  # the replica did store it
        proxy.heal()
        deadline = time.monotonic() + 10
        while not await info_ok(via):
            assert time.monotonic() < deadline, "no recovery after LOSE_RESPONSE was healed"
            await asyncio.sleep(0.1)

    run_with_proxy(replica, scenario)


def test_replica_down_behind_proxy_looks_like_a_failed_connection(replica: ReplicaProcess) -> None:
    async def scenario(proxy: FaultProxy, via: Stub, direct: object) -> None:
        proxy.upstream = "127.0.0.1:1"  # nothing listens there
        with pytest.raises(grpc.RpcError) as caught:
            await via.Info(pb.InfoRequest(), timeout=3)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

    run_with_proxy(replica, scenario)


def _frame(stream: int, payload: bytes, kind: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, 0]) + stream.to_bytes(4, "big") + payload


@settings(max_examples=50)
@given(
    frames=st.lists(st.tuples(st.integers(0, 2**31 - 1), st.binary(max_size=300)), max_size=20),
    cuts=st.lists(st.integers(1, 50), max_size=40),
)
def test_frame_splitter_finds_the_same_frames_however_bytes_arrive(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(_frame(s, p) for s, p in frames)
    splitter = FrameSplitter()
    out: list[tuple[int, bytes]] = []
    pos = 0
    for size in cuts:
        out += splitter.feed(stream[pos : pos + size])
        pos += size
    out += splitter.feed(stream[pos:])
    assert out == [(s, _frame(s, p)) for s, p in frames]
