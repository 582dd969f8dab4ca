"""Batches on one long-lived SendBatchStream call per replica: order, deadlines, older replicas, stops.

The replicas here are real gRPC servers on loopback: a whole replica process
where the test needs one, or an in-process server with the real servicer and a
real SQLite store where it must leave a method out (an older version) or hold
answers back (a stalled replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from grpc_messenger import ClientConfig, Messenger, wire
from grpc_messenger.client.links import Link, open_links
from grpc_messenger.config import ServerConfig
from grpc_messenger.model import Message, new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.server.servicer import MessengerServicer
from grpc_messenger.store import SqliteStore
from tests.conftest import ReplicaFactory

T = TypeVar("T")
SERVICE = "messenger.MessengerService"


def run_bounded(coro: Awaitable[T], timeout_s: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=timeout_s)

    return asyncio.run(bounded())


def batch(n: int, tag: str = "") -> list[Message]:
    return [
        Message(
            key=new_key(), sender="alice@example.org", recipient="bob@example.org", body=f"{tag}{i}", created_unix_ms=1
        )
        for i in range(n)
    ]


class CallCounter(grpc.aio.ServerInterceptor):
    """Counts calls by method name, including methods the server does not have."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        name = handler_call_details.method.rsplit("/", 1)[-1]
        self.calls[name] = self.calls.get(name, 0) + 1
        return await continuation(handler_call_details)


async def serve(
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]], counter: CallCounter
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[counter])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@dataclass
class Served:
    link: Link
    store: SqliteStore
    counter: CallCounter


@contextlib.asynccontextmanager
async def replica_serving(path: Path, *, stream: bool, config: ServerConfig | None = None) -> AsyncIterator[Served]:
    """The real servicer on a real store, serving SendBatchStream, or (an older version) SendBatch only."""
    store = SqliteStore(path)
    servicer = MessengerServicer(store, config or ServerConfig())
    decode, encode = pb.SendBatchRequest.FromString, wire.serialize_reply
    handlers = (
        {"SendBatchStream": grpc.stream_stream_rpc_method_handler(servicer.SendBatchStream, decode, encode)}
        if stream
        else {"SendBatch": grpc.unary_unary_rpc_method_handler(servicer.SendBatch, decode, encode)}
    )
    counter = CallCounter()
    server, address = await serve(handlers, counter)
    link = link_to(address, timeout_s=20)
    try:
        yield Served(link, store, counter)
    finally:
        await link.close()
        await server.stop(0)
        await store.close()


def link_to(address: str, timeout_s: float) -> Link:
    (link,) = open_links(ClientConfig(servers=(address,), timeout_s=timeout_s))
    return link


def stored_outcomes(response: wire.SendBatchResponse) -> list[int]:
    return [r.outcome for r in response.results]


def test_an_older_replica_without_the_stream_is_sent_unary_batches(tmp_path: Path) -> None:
    """UNIMPLEMENTED once, then SendBatch calls only; every message stored."""

    async def scenario() -> None:
        async with replica_serving(tmp_path / "old.sqlite3", stream=False) as served:
            sent = [batch(n + 1) for n in range(4)]
            for messages in sent:
                response = await served.link.send_bytes(wire.batch_payload(messages))
                assert stored_outcomes(response) == [pb.SEND_OUTCOME_STORED] * len(messages)
            assert served.counter.calls == {"SendBatchStream": 1, "SendBatch": 4}
            assert (await served.store.counts()).messages == sum(len(m) for m in sent)

    run_bounded(scenario())


def test_concurrent_batches_on_one_stream_get_their_own_answers(tmp_path: Path) -> None:
    """Forty batches of different sizes at once, one stream: each answer has its own batch's length."""

    async def scenario() -> None:
        async with replica_serving(tmp_path / "s.sqlite3", stream=True) as served:
            sent = [batch(1 + n % 7, tag=f"b{n}-") for n in range(40)]
            answers = await asyncio.gather(*(served.link.send_bytes(wire.batch_payload(m)) for m in sent))
            for messages, answer in zip(sent, answers, strict=True):
                assert stored_outcomes(answer) == [pb.SEND_OUTCOME_STORED] * len(messages)
            assert served.counter.calls == {"SendBatchStream": 1}
            assert (await served.store.counts()).messages == sum(len(m) for m in sent)

    run_bounded(scenario())


def test_a_batch_refused_whole_ends_the_stream_and_the_batches_behind_it_stay_retryable(tmp_path: Path) -> None:
    """The refusal is the refused batch's alone: a batch behind it is in doubt (UNAVAILABLE), not refused."""

    async def scenario() -> None:
        config = ServerConfig(batch_messages_max=5)
        async with replica_serving(tmp_path / "s.sqlite3", stream=True, config=config) as served:
            fine, too_big, behind = batch(2), batch(6), batch(3)
            answers = await asyncio.gather(
                *(served.link.send_bytes(wire.batch_payload(m)) for m in (fine, too_big, behind)),
                return_exceptions=True,
            )
            first, refused, unanswered = answers
            assert isinstance(first, wire.SendBatchResponse)
            assert stored_outcomes(first) == [pb.SEND_OUTCOME_STORED] * 2
            assert isinstance(refused, grpc.aio.AioRpcError)
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert isinstance(unanswered, grpc.aio.AioRpcError)
            assert unanswered.code() == grpc.StatusCode.UNAVAILABLE
            # sent again, on a new stream, it is stored (or was already, if the replica read it)
            again = await served.link.send_bytes(wire.batch_payload(behind))
            assert set(stored_outcomes(again)) <= {pb.SEND_OUTCOME_STORED, pb.SEND_OUTCOME_ALREADY_STORED}
            assert served.counter.calls == {"SendBatchStream": 2}
            assert (await served.store.counts()).messages == 5

    run_bounded(scenario())


def test_a_stalled_stream_fails_its_batches_at_the_deadline_and_the_next_batch_opens_a_new_one() -> None:
    async def scenario() -> None:
        counter = CallCounter()
        read: list[int] = []

        async def never_answer(requests: AsyncIterator[pb.SendBatchRequest], context: Any) -> AsyncIterator[bytes]:
            async for request in requests:
                read.append(len(request.messages))
            if False:  # an async generator that never yields
                yield b""

        server, address = await serve(
            {
                "SendBatchStream": grpc.stream_stream_rpc_method_handler(
                    never_answer, request_deserializer=pb.SendBatchRequest.FromString
                )
            },
            counter,
        )
        link = link_to(address, timeout_s=0.5)
        try:
            started = time.monotonic()
            failed = await asyncio.gather(
                *(link.send_bytes(wire.batch_payload(batch(n))) for n in (1, 2)), return_exceptions=True
            )
            for failure in failed:
                assert isinstance(failure, grpc.aio.AioRpcError), failure
                assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 30  # bounded by the deadline, not hanging
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await link.send_bytes(wire.batch_payload(batch(3)))
            assert again.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert counter.calls == {"SendBatchStream": 2}  # a new stream for the batch after the stall
            assert sorted(read) == [1, 2, 3]
        finally:
            await link.close()
            await server.stop(0)

    run_bounded(scenario())


def test_a_stopping_replica_ends_its_send_streams_instead_of_waiting_out_its_grace(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    grace_s = 120
    replica = replica_factory.replica(extra_args=("--grace", str(grace_s)))
    with Messenger(ClientConfig(servers=(replica.address,), data_dir=client_home, timeout_s=10)) as messenger:
        report = messenger.send(sender="alice@example.org", recipient="bob@example.org", body="before the stop")
        assert report.ok
        started = time.monotonic()
        assert replica.terminate(timeout_s=grace_s) == 0
        # the client's stream stays open until the client closes: the stop must not wait for it
        assert time.monotonic() - started < grace_s / 2
