"""The paged-fetch helper walks a whole queue within its page bound, and maps failures to our errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from grpc_messenger import ClientConfig, Draft, Messenger, Unavailable
from grpc_messenger.client import pages
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import Cluster


def _fill(cluster: Cluster, client_home: Path, mailbox: str, n: int) -> list[str]:
    config = ClientConfig(servers=cluster.servers, data_dir=client_home, write_quorum=3, timeout_s=10.0)
    with Messenger(config) as m:
        reports = m.send_many(Draft("alice@example.org", mailbox, f"body {i}") for i in range(n))
    assert all(r.ok for r in reports)
    return [r.key for r in reports]


def test_fetch_pages_walks_every_page_then_acks_empty_the_queue(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    keys = _fill(shared_cluster, client_home, mailbox, 25)
    with grpc.insecure_channel(shared_cluster.servers[0]) as channel:
        stub = pb_grpc.MessengerServiceStub(channel)
        walked = list(pages.fetch_pages_sync(stub, mailbox, page_size=10, timeout_s=10.0))
        assert [len(p.rows) for p in walked] == [10, 10, 5]
        assert sorted(k for p in walked for k in p.keys) == sorted(keys)
        assert {m.body for p in walked for m in p.messages()} == {f"body {i}" for i in range(25)}
        # the bound holds: two pages of ten, and the walk stops with more still queued
        bounded = list(pages.fetch_pages_sync(stub, mailbox, page_size=10, timeout_s=10.0, pages_max=2))
        assert len(bounded) == 2
        assert bounded[-1].more
        assert pages.ack_keys_sync(stub, mailbox, keys, timeout_s=10.0) == 25
        assert [p.keys for p in pages.fetch_pages_sync(stub, mailbox, page_size=10, timeout_s=10.0)] == [[]]


def test_fetch_pages_async_agrees_with_blocking(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    keys = _fill(shared_cluster, client_home, mailbox, 7)

    async def walk() -> list[str]:
        async with grpc.aio.insecure_channel(shared_cluster.servers[1]) as channel:
            stub = pb_grpc.MessengerServiceStub(channel)
            found = [k async for p in pages.fetch_pages(stub, mailbox, page_size=3, timeout_s=10.0) for k in p.keys]
            assert await pages.ack_keys(stub, mailbox, found, timeout_s=10.0) == len(found)
            return found

    assert sorted(asyncio.run(asyncio.wait_for(walk(), timeout=30))) == sorted(keys)


def test_unreachable_replica_raises_unavailable_not_a_grpc_error() -> None:
    # port 1 on loopback: nothing listens there
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = pb_grpc.MessengerServiceStub(channel)
        with pytest.raises(Unavailable) as caught:
            list(pages.fetch_pages_sync(stub, "bob@example.org", page_size=10, timeout_s=2.0))
        assert isinstance(caught.value.__cause__, grpc.RpcError)
