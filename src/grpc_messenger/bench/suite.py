"""The run: start each system, measure each row, stop everything; one list of Rows.

A row that fails is reported as failed (with why) and the run goes on; a row
that cannot run here (no nats-server) is reported as skipped.
"""

from __future__ import annotations

import asyncio
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from grpc_messenger._version import __version__
from grpc_messenger.bench import jetstream
from grpc_messenger.bench.procs import (
    Child,
    Processes,
    peak_rss_mib,
    reset_peak_rss,
    self_pid,
    start_python_server,
    start_replicas,
)
from grpc_messenger.bench.workload import (
    Timing,
    Workload,
    legacy_sends,
    mailboxes_of,
    messenger_batches,
    messenger_reads,
    messenger_sends,
)

Progress = Callable[[str], None]

QUICK = Workload(messages=3000, warmup_messages=500, legacy_messages=600, row_time_max_s=15.0)
FULL = Workload()
SCALE_REPLICAS = (1, 3, 5)
SCALE_MAILBOX_SIZES = (1_000, 100_000)
# a 1,000,000-message mailbox takes ~6 of the 10 minutes on 2 shared cores: only with --huge
SCALE_MAILBOX_HUGE = 1_000_000
SCALE_MAILBOX_COUNTS = (1, 1_000, 100_000)
SCALE_ROW_TIME_MAX_S = 240.0


@dataclass(frozen=True, slots=True)
class Row:
    """One measured configuration."""

    name: str
    msgs_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    messages: int
    seconds: float
    client_peak_rss_mib: float
    server_peak_rss_mib: float
    note: str = ""
    status: str = "ok"  # ok | skipped | failed

    def as_json(self) -> dict[str, Any]:
        """The JSON form; `peak_rss_mib` is the client's (the servers' is beside it)."""
        return {
            "name": self.name,
            "status": self.status,
            "msgs_per_s": _round(self.msgs_per_s),
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "p999_ms": _round(self.p999_ms),
            "peak_rss_mib": _round(self.client_peak_rss_mib),
            "client_peak_rss_mib": _round(self.client_peak_rss_mib),
            "server_peak_rss_mib": _round(self.server_peak_rss_mib),
            "messages": self.messages,
            "seconds": _round(self.seconds),
            "note": self.note,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def percentile_ms(latencies_s: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 < q < 1, nearest rank) in milliseconds; None without samples."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    rank = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


def skipped(name: str, why: str) -> Row:
    """A row that could not run here."""
    return Row(name, None, None, None, None, 0, 0.0, 0.0, 0.0, note=why, status="skipped")


@dataclass(slots=True)
class Run:
    """Options and results of one benchmark run."""

    workload: Workload
    quick: bool
    scale: bool
    progress: Progress
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def measure(self, name: str, servers: Sequence[Child], work: Callable[[], Timing], *, note: str = "") -> Row:
        """Run one row with peak RSS reset on the client and `servers` first; never raises."""
        self.progress(f"{name} ...")
        pids = [c.pid for c in servers]
        for pid in (self_pid(), *pids):
            reset_peak_rss(pid)
        started = time.perf_counter()
        try:
            timing = work()
        except Exception as exc:  # a failed row is reported, the run goes on
            row = Row(
                name, None, None, None, None, 0, time.perf_counter() - started, 0.0, 0.0, note=repr(exc)[:300],
                status="failed",
            )  # fmt: skip
        else:
            row = Row(
                name=name,
                msgs_per_s=timing.msgs_per_s,
                p50_ms=percentile_ms(timing.latencies_s, 0.50),
                p99_ms=percentile_ms(timing.latencies_s, 0.99),
                p999_ms=percentile_ms(timing.latencies_s, 0.999),
                messages=timing.messages,
                seconds=timing.elapsed_s,
                client_peak_rss_mib=peak_rss_mib(self_pid()),
                server_peak_rss_mib=max((peak_rss_mib(pid) for pid in pids), default=0.0),
                note=note,
            )
        self.rows.append(row)
        self.progress(f"{name}: {row.status} {row.msgs_per_s or 0:,.0f} msgs/s")
        return row


def run_suite(
    *, quick: bool, scale: bool, workload: Workload | None, progress: Progress, huge: bool = False
) -> list[Row]:
    """Every row of issue 4, each against freshly started servers; everything is stopped at the end."""
    w = workload or (QUICK if quick else FULL)
    run = Run(workload=w, quick=quick, scale=scale, progress=progress)
    root = Path(tempfile.mkdtemp(prefix="messenger-bench-"))
    procs = Processes(root)
    try:
        _ceiling(run, procs)
        _messenger(run, procs)
        _legacy(run, procs)
        _jetstream(run, procs)
        if scale:
            _scale(run, procs, huge=huge)
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)
    return run.rows


def _ceiling(run: Run, procs: Processes) -> None:
    started = [
        start_python_server(procs, f"ceiling-{i + 1}", ["grpc_messenger.bench.servers", "ceiling"]) for i in range(3)
    ]
    children = [c for c, _ in started]
    servers = tuple(a for _, a in started)
    w = run.workload
    run.measure(
        "ceiling",
        children,
        lambda: asyncio.run(messenger_sends(servers, w, tag="ceiling", write_quorum=1)),
        note="coalescing client, W=1, 3 servers that store nothing",
    )
    procs.stop(children)


def _messenger(run: Run, procs: Processes) -> None:
    w = run.workload
    children, servers = start_replicas(procs, n=3, tag="messenger")
    run.measure(
        "messenger-w1",
        children,
        lambda: asyncio.run(messenger_sends(servers, w, tag="w1", write_quorum=1)),
        note=f"{w.concurrency} concurrent send(), W=1, SQLite fsync before ack",
    )
    run.measure(
        "messenger-w3",
        children,
        lambda: asyncio.run(messenger_sends(servers, w, tag="w3", write_quorum=3)),
        note=f"{w.concurrency} concurrent send(), W=3",
    )
    run.measure(
        "messenger-batch",
        children,
        lambda: asyncio.run(messenger_batches(servers, w, tag="batch")),
        note=f"send_many() of {w.batch_messages}, {w.batch_callers} in flight; latency per list",
    )
    run.measure(
        "messenger-legacy",
        children,
        lambda: legacy_sends(servers, w, tag="mlegacy"),
        note="original sync client: unary Send to 3 replicas in turn",
    )
    home = procs.root / "reader-home"
    boxes = mailboxes_of("w3", mailboxes=w.mailboxes)
    run.measure(
        "reads",
        children,
        lambda: asyncio.run(messenger_reads(servers, w, boxes=boxes, home=home)),
        note=f"receive() of the messenger-w3 mailboxes, {w.read_callers} in flight; latency per mailbox",
    )
    procs.stop(children)


def _legacy(run: Run, procs: Processes) -> None:
    w = run.workload
    started = [
        start_python_server(procs, f"legacy-{i + 1}", ["grpc_messenger.bench.servers", "legacy"]) for i in range(3)
    ]
    children = [c for c, _ in started]
    servers = tuple(a for _, a in started)
    run.measure(
        "legacy",
        children,
        lambda: legacy_sends(servers, w, tag="legacy"),
        note="original design: sync server, dict in memory, sync client to 3 in turn",
    )
    procs.stop(children)


def _jetstream(run: Run, procs: Processes) -> None:
    why = jetstream.unavailable_reason()
    if why is not None:
        for name in ("jetstream-r3", "jetstream-reads", "jetstream-r3-sync"):
            run.rows.append(skipped(name, why))
        return
    _jetstream_cluster(run, procs, name="jetstream-r3", sync_always=False)
    _jetstream_cluster(run, procs, name="jetstream-r3-sync", sync_always=True)


def _jetstream_cluster(run: Run, procs: Processes, *, name: str, sync_always: bool) -> None:
    w = run.workload
    wanted = [name] if sync_always else [name, "jetstream-reads"]
    children, urls = jetstream.start_cluster(procs, tag=name, sync_always=sync_always)
    try:
        asyncio.run(jetstream.create_stream(urls[0], children=children))
        row = run.measure(
            name,
            children,
            lambda: asyncio.run(jetstream.publishes(urls[0], w, tag=name)),
            note=("sync_interval: always" if sync_always else "default: fsync every 2 min")
            + f"; {w.concurrency} publishers awaiting PubAck",
        )
        if not sync_always:
            run.measure(
                "jetstream-reads",
                children,
                lambda: asyncio.run(jetstream.pull_reads(urls[0], w, tag=name, total=row.messages)),
                note="pull consumer: fetch 100, ack each; latency per fetch",
            )
    except Exception as exc:  # the cluster would not come up: say so in its rows, go on
        done = {r.name for r in run.rows}
        for missing in wanted:
            if missing not in done:
                run.rows.append(Row(missing, None, None, None, None, 0, 0.0, 0.0, 0.0, repr(exc)[:300], "failed"))
    finally:
        procs.stop(children)


def _scale(run: Run, procs: Processes, *, huge: bool) -> None:
    for n in SCALE_REPLICAS:
        _scale_replicas(run, procs, n=n)
    for size in (*SCALE_MAILBOX_SIZES, *((SCALE_MAILBOX_HUGE,) if huge else ())):
        _scale_mailbox_size(run, procs, size=size)
    children, servers = start_replicas(procs, n=3, tag="scale-boxes")
    for count in SCALE_MAILBOX_COUNTS:
        _scale_mailbox_count(run, children, servers, count=count)
    procs.stop(children)


def _scale_replicas(run: Run, procs: Processes, *, n: int) -> None:
    w = run.workload
    tag = f"scale-r{n}"
    children, servers = start_replicas(procs, n=n, tag=tag)
    run.measure(
        f"scale-replicas-{n}",
        children,
        lambda: asyncio.run(messenger_sends(servers, w, tag=tag, write_quorum=1)),
        note=f"{n} replicas, W=1 sends",
    )
    boxes = mailboxes_of(tag, mailboxes=w.mailboxes)
    run.measure(
        f"scale-replicas-{n}-read",
        children,
        lambda: asyncio.run(messenger_reads(servers, w, boxes=boxes, home=procs.root / f"{tag}-home")),
        note=f"{n} replicas, receive() of every mailbox",
    )
    procs.stop(children)


def _scale_mailbox_size(run: Run, procs: Processes, *, size: int) -> None:
    w = replace(run.workload, row_time_max_s=SCALE_ROW_TIME_MAX_S)
    tag = f"scale-m{size}"
    children, servers = start_replicas(procs, n=3, tag=tag)
    run.measure(
        f"scale-mailbox-{_short(size)}",
        children,
        lambda: asyncio.run(messenger_batches(servers, w, tag=tag, mailboxes=1, messages=size)),
        note=f"up to {size:,} messages into one mailbox with send_many() (bounded by time)",
    )
    boxes = mailboxes_of(tag, mailboxes=1)
    run.measure(
        f"scale-mailbox-{_short(size)}-read",
        children,
        lambda: asyncio.run(messenger_reads(servers, w, boxes=boxes, home=procs.root / f"{tag}-home")),
        note="receive(limit=10,000) of that mailbox until empty; latency: the whole mailbox",
    )
    procs.stop(children)


def _scale_mailbox_count(run: Run, children: list[Child], servers: tuple[str, ...], *, count: int) -> None:
    w = run.workload
    tag = f"scale-b{count}"
    run.measure(
        f"scale-mailboxes-{_short(count)}",
        children,
        lambda: asyncio.run(messenger_sends(servers, w, tag=tag, write_quorum=1, mailboxes=count)),
        note=f"W=1 sends spread over {count:,} mailboxes",
    )


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k" if n >= 1000 else str(n)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "version": __version__,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
