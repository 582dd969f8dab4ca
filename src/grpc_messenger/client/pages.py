"""Paged reads and acks against one replica: the one Fetch loop and the one Ack call.

Every reader of a replica's queue (the client, the chaos checker, tools and
tests) walks it through `fetch_pages`: a bound on pages, a deadline on every
call, and gRPC failures mapped to MessengerError at the call itself. Both an
asyncio and a blocking flavour, over the generated stubs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

from grpc_messenger import wire
from grpc_messenger.grpc_errors import map_rpc_errors
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc

# A walk stops after this many pages (1000 x 1000 messages); what is left is read by
# the next walk. Every loop has a bound.
READ_PAGES_MAX = 1000
PAGE_SIZE_MAX = 1000

Metadata = tuple[tuple[str, str], ...] | None


async def fetch_page(
    stub: pb_grpc.MessengerServiceAsyncStub,
    mailbox: str,
    *,
    after_seq: int,
    page_size: int,
    timeout_s: float,
    metadata: Metadata = None,
) -> wire.FetchedPage:
    """One page of `mailbox` on one replica, from after `after_seq`. Raises MessengerError."""
    assert 1 <= page_size <= PAGE_SIZE_MAX
    request = wire.fetch_request(mailbox, after_seq=after_seq, limit=page_size)
    with map_rpc_errors():
        response = await stub.Fetch(request, timeout=timeout_s, metadata=metadata)
    return wire.fetched_page(response)


async def fetch_pages(
    stub: pb_grpc.MessengerServiceAsyncStub,
    mailbox: str,
    *,
    page_size: int,
    timeout_s: float,
    metadata: Metadata = None,
    after_seq: int = 0,
    pages_max: int = READ_PAGES_MAX,
) -> AsyncIterator[wire.FetchedPage]:
    """The pages of `mailbox` on one replica, at most `pages_max` of them. Raises MessengerError."""
    assert pages_max >= 1
    for _ in range(pages_max):
        page = await fetch_page(
            stub, mailbox, after_seq=after_seq, page_size=page_size, timeout_s=timeout_s, metadata=metadata
        )
        yield page
        if not page.more:
            return
        after_seq = page.next_after_seq


async def ack_keys(
    stub: pb_grpc.MessengerServiceAsyncStub,
    mailbox: str,
    keys: Sequence[str],
    *,
    timeout_s: float,
    metadata: Metadata = None,
) -> int:
    """Delete `keys` from `mailbox` on one replica; how many it deleted. Raises MessengerError."""
    request = wire.ack_request(mailbox, keys)
    with map_rpc_errors():
        response = await stub.Ack(request, timeout=timeout_s, metadata=metadata)
    return wire.acked_count(response)


def fetch_pages_sync(
    stub: pb_grpc.MessengerServiceStub,
    mailbox: str,
    *,
    page_size: int,
    timeout_s: float,
    metadata: Metadata = None,
    after_seq: int = 0,
    pages_max: int = READ_PAGES_MAX,
) -> Iterator[wire.FetchedPage]:
    """`fetch_pages` over a blocking channel (tests and tools)."""
    assert 1 <= page_size <= PAGE_SIZE_MAX
    assert pages_max >= 1
    for _ in range(pages_max):
        request = wire.fetch_request(mailbox, after_seq=after_seq, limit=page_size)
        with map_rpc_errors():
            response = stub.Fetch(request, timeout=timeout_s, metadata=metadata)
        page = wire.fetched_page(response)
        yield page
        if not page.more:
            return
        after_seq = page.next_after_seq


def ack_keys_sync(
    stub: pb_grpc.MessengerServiceStub,
    mailbox: str,
    keys: Sequence[str],
    *,
    timeout_s: float,
    metadata: Metadata = None,
) -> int:
    """`ack_keys` over a blocking channel (tests and tools)."""
    request = wire.ack_request(mailbox, keys)
    with map_rpc_errors():
        response = stub.Ack(request, timeout=timeout_s, metadata=metadata)
    return wire.acked_count(response)
