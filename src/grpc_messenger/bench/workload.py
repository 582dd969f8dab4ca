"""Bounded workloads and their timing: what one row of the benchmark does.

Every loop here has two bounds, a count and a deadline. Latency is measured
per call, from just before the call to just after it returned; a call that
carries many messages counts once with its own latency. CPU is measured by
the row's `CpuMeter` around the measured part only, never the warm-up. Every
client keeps its inbox and outbox in the `home` it is given (a directory of
the run), never in the user's home.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from grpc_messenger import AsyncMessenger, ClientConfig, Draft
from grpc_messenger.bench.cpu import CpuMeter
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 30.0
# receive() returns at most this many per call: client memory is bounded by it, not by the mailbox
READ_SLICE_MESSAGES = 10_000


@dataclass(frozen=True, slots=True)
class Workload:
    """The shape of a run: how many messages, how big, to how many mailboxes, how many in flight."""

    messages: int = 10_000
    body_bytes: int = 200
    mailboxes: int = 100
    concurrency: int = 64
    warmup_messages: int = 1000
    # the sequential legacy clients are ~20x slower; fewer messages keep the run short
    legacy_messages: int = 2000
    batch_messages: int = 100
    batch_callers: int = 8
    read_callers: int = 4
    row_time_max_s: float = 60.0

    def body(self) -> str:
        """A printable body of exactly body_bytes bytes."""
        return ("benchmark message body " * (self.body_bytes // 23 + 1))[: self.body_bytes]


@dataclass(frozen=True, slots=True)
class Timing:
    """What a workload measured: messages moved, wall time, per-call latencies."""

    messages: int
    elapsed_s: float
    latencies_s: tuple[float, ...]

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0


def mailbox(tag: str, i: int, *, mailboxes: int) -> str:
    """The i-th message's recipient among `mailboxes` mailboxes of a row."""
    return f"box{i % mailboxes}@{tag}.bench.example"


def mailboxes_of(tag: str, *, mailboxes: int) -> list[str]:
    """Every mailbox a row writes to."""
    return [mailbox(tag, i, mailboxes=mailboxes) for i in range(mailboxes)]


def sender(tag: str) -> str:
    """The sender address of a row (legacy keys derive from it, so it differs per row)."""
    return f"sender@{tag}.bench.example"


async def drive(call: Callable[[int], Awaitable[int]], *, calls: int, concurrency: int, time_max_s: float) -> Timing:
    """Run call(0..calls-1) with `concurrency` in flight; each returns how many messages it moved.

    Stops early at the deadline; what was done by then is what is reported.
    """
    assert calls >= 0
    assert concurrency >= 1
    next_call = 0
    moved = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + time_max_s

    async def worker() -> None:
        nonlocal next_call, moved
        while next_call < calls and time.perf_counter() < deadline:
            index = next_call
            next_call += 1
            started = time.perf_counter()
            count = await call(index)
            latencies.append(time.perf_counter() - started)
            moved += count  # not `moved += await ...`: that reads `moved` before the await

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, max(calls, 1))):
            group.create_task(worker())
    return Timing(moved, time.perf_counter() - started, tuple(latencies))


# --- the messenger client ----------------------------------------------------------------


def client_config(servers: Sequence[str], *, home: Path, write_quorum: int = 1) -> ClientConfig:
    """The client configuration every messenger row uses (library defaults otherwise; inbox and outbox in `home`)."""
    home.mkdir(parents=True, exist_ok=True)
    return ClientConfig(servers=tuple(servers), write_quorum=write_quorum, timeout_s=CALL_TIMEOUT_S, data_dir=home)


async def messenger_sends(
    servers: Sequence[str],
    w: Workload,
    *,
    tag: str,
    write_quorum: int,
    meter: CpuMeter,
    home: Path,
    mailboxes: int | None = None,
) -> Timing:
    """`w.concurrency` concurrent single send() calls through the public async client."""
    boxes = mailboxes or w.mailboxes
    body = w.body()
    async with AsyncMessenger(client_config(servers, write_quorum=write_quorum, home=home)) as messenger:

        async def send_to(prefix: str, i: int) -> int:
            await messenger.send(sender=sender(tag), recipient=mailbox(prefix, i, mailboxes=boxes), body=body)
            return 1

        async def warm(i: int) -> int:
            return await send_to(f"warm-{tag}", i)

        async def measured(i: int) -> int:
            return await send_to(tag, i)

        await drive(warm, calls=w.warmup_messages, concurrency=w.concurrency, time_max_s=w.row_time_max_s)
        with meter.measuring():
            timing = await drive(measured, calls=w.messages, concurrency=w.concurrency, time_max_s=w.row_time_max_s)
            await meter.settle()
        return timing


async def messenger_batches(
    servers: Sequence[str],
    w: Workload,
    *,
    tag: str,
    meter: CpuMeter,
    home: Path,
    mailboxes: int | None = None,
    messages: int | None = None,
) -> Timing:
    """send_many() with lists of `w.batch_messages` drafts, `w.batch_callers` lists in flight."""
    boxes = mailboxes or w.mailboxes
    total = messages or w.messages
    body = w.body()
    size = w.batch_messages
    async with AsyncMessenger(client_config(servers, home=home)) as messenger:

        async def send_batch(prefix: str, index: int) -> int:
            first = index * size
            count = min(size, total - first)
            drafts = [Draft(sender(tag), mailbox(prefix, first + j, mailboxes=boxes), body) for j in range(count)]
            reports = await messenger.send_many(drafts)
            failed = sum(1 for r in reports if not r.ok)
            if failed:
                raise RuntimeError(f"{failed} of {count} messages of a batch missed the quorum")
            return count

        async def warm(i: int) -> int:
            return await send_batch(f"warm-{tag}", i)

        async def measured(i: int) -> int:
            return await send_batch(tag, i)

        calls = -(-total // size)
        warm_calls = max(1, w.warmup_messages // size)
        await drive(warm, calls=warm_calls, concurrency=w.batch_callers, time_max_s=w.row_time_max_s)
        with meter.measuring():
            timing = await drive(measured, calls=calls, concurrency=w.batch_callers, time_max_s=w.row_time_max_s)
            await meter.settle()
        return timing


async def messenger_reads(
    servers: Sequence[str], w: Workload, *, boxes: Sequence[str], meter: CpuMeter, home: Path
) -> Timing:
    """receive() of every mailbox in `boxes`: fetch from all replicas, merge, store locally, ack."""
    async with AsyncMessenger(client_config(servers, home=home)) as messenger:

        async def read(i: int) -> int:
            moved = 0
            # a very large mailbox takes several receive() calls (each is bounded)
            for _ in range(1000):
                report = await messenger.receive(boxes[i], limit=READ_SLICE_MESSAGES)
                moved += len(report.messages)
                if not report.more:
                    break
            return moved

        with meter.measuring():
            timing = await drive(read, calls=len(boxes), concurrency=w.read_callers, time_max_s=w.row_time_max_s * 4)
            await meter.settle()
        return timing


# --- the original synchronous client ----------------------------------------------------


def legacy_sends(servers: Sequence[str], w: Workload, *, tag: str, meter: CpuMeter) -> Timing:
    """The original client: unary Send to each server one after another, one message at a time."""
    channels = [grpc.insecure_channel(address) for address in servers]
    try:
        stubs = [pb_grpc.MessengerServiceStub(channel) for channel in channels]
        body = w.body()

        def send(i: int, *, prefix: str, id_base: int) -> None:
            request = pb.SendRequest(
                id=id_base + i, msg=body, self_email=sender(tag), dest_email=mailbox(prefix, i, mailboxes=w.mailboxes)
            )
            for stub in stubs:
                response = stub.Send(request, timeout=CALL_TIMEOUT_S)
                if not response.success:
                    raise RuntimeError(f"legacy Send failed: {response.debug_message}")

        warm_deadline = time.perf_counter() + w.row_time_max_s
        for i in range(min(w.warmup_messages, w.legacy_messages) // 4):
            if time.perf_counter() > warm_deadline:
                break
            send(i, prefix=f"warm-{tag}", id_base=1_000_000)
        latencies: list[float] = []
        with meter.measuring():
            started = time.perf_counter()
            deadline = started + w.row_time_max_s
            for i in range(w.legacy_messages):
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                send(i, prefix=tag, id_base=1)
                latencies.append(time.perf_counter() - t0)
            return Timing(len(latencies), time.perf_counter() - started, tuple(latencies))
    finally:
        for channel in channels:
            channel.close()
