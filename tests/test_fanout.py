"""The coalescer's waiting: callers of one batch wait on futures of their own.

Driven with fake replica calls (no network): a caller that gives up must not
cancel the batch for the others, and every caller hears the batch's outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from grpc_messenger import wire
from grpc_messenger.client.fanout import Coalescer, SendBytes
from grpc_messenger.model import Message, ReplicaState, new_key
from grpc_messenger.proto import messenger_pb2 as pb

REPLICAS = ("r1", "r2", "r3")


def message(i: int) -> Message:
    return Message(
        key=new_key(), sender="alice@example.org", recipient="bob@example.org", body=f"m{i}", created_unix_ms=1
    )


def gated_calls(gates: list[asyncio.Event]) -> list[SendBytes]:
    """One fake SendBatch per replica: answers 'stored' for every message once its gate opens."""

    def call(gate: asyncio.Event) -> Callable[[bytes], Awaitable[wire.SendBatchResponse]]:
        async def send(payload: bytes) -> wire.SendBatchResponse:
            n = len(pb.SendBatchRequest.FromString(payload).messages)
            await gate.wait()
            return wire.SendBatchResponse.FromString(wire.batch_response([wire.STORED] * n, [""] * n, {}))

        return send

    return [call(gate) for gate in gates]


def run_bounded(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout=20)

    asyncio.run(bounded())


def test_a_caller_that_gives_up_does_not_cancel_the_batch_for_the_others() -> None:
    async def scenario() -> None:
        gates = [asyncio.Event() for _ in REPLICAS]
        coalescer = Coalescer(
            replicas=REPLICAS,
            calls=gated_calls(gates),
            write_quorum=2,
            linger_s=0.001,
            batch_messages_max=100,
            timeout_s=10.0,
            observer=None,
        )
        tickets = [coalescer.submit(message(i)) for i in range(3)]
        coalescer.flush()
        assert len({id(t.batch) for t in tickets}) == 1
        quitter = asyncio.create_task(tickets[0].report())
        waiter = asyncio.create_task(tickets[1].report())
        settler = asyncio.create_task(tickets[2].report(settle=True))
        await asyncio.sleep(0.01)
        quitter.cancel()
        gates[0].set()
        gates[1].set()
        report = await waiter  # the quorum (2 of 3) wakes it though its neighbour gave up
        assert report.acknowledged == 2
        assert not settler.done()  # settle waits for the third answer
        gates[2].set()
        settled = await settler
        assert [r.state for r in settled.replicas] == [ReplicaState.STORED] * 3
        assert quitter.cancelled()
        # a late caller of an answered batch is told at once
        assert (await tickets[0].report(settle=True)).acknowledged == 3
        await coalescer.close()

    run_bounded(scenario())
