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
FULL_ROUNDS = 3


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

    def measure(
        self, name: str, servers: Sequence[Child], work: Callable[[], Timing], *, note: str = "", record: bool = True
    ) -> Row:
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
        if record:
            self.rows.append(row)
        self.progress(f"{name}: {row.status} {row.msgs_per_s or 0:,.0f} msgs/s")
        return row


def run_suite(
    *, quick: bool, scale: bool, workload: Workload | None, progress: Progress, huge: bool = False
) -> list[Row]:
    """Every row of issue 4; everything started is stopped at the end, also on failure.

    The main rows run in rounds (full mode: 3), interleaved so that each row
    and its baseline run seconds apart: on a shared machine the load moves
    within a run, and neighbours see the same load. Each row reports its
    median round.
    """
    w = workload or (QUICK if quick else FULL)
    run = Run(workload=w, quick=quick, scale=scale, progress=progress)
    root = Path(tempfile.mkdtemp(prefix="messenger-bench-"))
    procs = Processes(root)
    try:
        _main_rows(run, procs, rounds=1 if quick else FULL_ROUNDS)
        _jetstream_sync(run, procs)
        if scale:
            _scale(run, procs, huge=huge)
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)
    return run.rows


@dataclass(slots=True)
class _Systems:
    """Everything the main rows talk to, started once and idle between rows."""

    ceiling: tuple[list[Child], tuple[str, ...]]
    replicas: tuple[list[Child], tuple[str, ...]]
    legacy: tuple[list[Child], tuple[str, ...]]
    jetstream: tuple[list[Child], list[str]] | None
    jetstream_error: str | None


def _start_servers(procs: Processes, kind: str) -> tuple[list[Child], tuple[str, ...]]:
    started = [start_python_server(procs, f"{kind}-{i + 1}", ["grpc_messenger.bench.servers", kind]) for i in range(3)]
    return [c for c, _ in started], tuple(a for _, a in started)


def _start_systems(run: Run, procs: Processes) -> _Systems:
    ceiling = _start_servers(procs, "ceiling")
    replicas = start_replicas(procs, n=3, tag="messenger")
    legacy = _start_servers(procs, "legacy")
    js: tuple[list[Child], list[str]] | None = None
    error = jetstream.unavailable_reason()
    if error is None:
        children, urls = jetstream.start_cluster(procs, tag="jetstream-r3", sync_always=False)
        try:
            asyncio.run(jetstream.create_stream(urls[0], children=children))
            js = (children, urls)
        except Exception as exc:  # reported in the JetStream rows; the others go on
            error = repr(exc)[:300]
            procs.stop(children)
    run.progress("servers up: 3 ceiling, 3 replicas, 3 legacy" + (", JetStream R3" if js else ""))
    return _Systems(ceiling, replicas, legacy, js, error)


def _main_rows(run: Run, procs: Processes, *, rounds: int) -> None:
    w = run.workload
    systems = _start_systems(run, procs)
    ceiling_children, ceiling = systems.ceiling
    replica_children, replicas = systems.replicas
    legacy_children, legacy = systems.legacy
    by_round: dict[str, list[Row]] = {}

    def measure(name: str, servers: list[Child], work: Callable[[], Timing], note: str) -> Row:
        row = run.measure(name, servers, work, note=note, record=False)
        by_round.setdefault(name, []).append(row)
        return row

    js_rows: dict[str, Row] = {}

    def one_round(r: int) -> None:
        measure(
            "ceiling",
            ceiling_children,
            lambda: asyncio.run(messenger_sends(ceiling, w, tag=f"ceiling{r}", write_quorum=1)),
            "coalescing client, W=1, 3 servers that store nothing",
        )
        if systems.jetstream is not None:
            js_children, urls = systems.jetstream
            js_rows[f"r{r}"] = measure(
                "jetstream-r3",
                js_children,
                lambda: asyncio.run(jetstream.publishes(urls[0], w, tag=f"js{r}")),
                f"default: fsync every 2 min; {w.concurrency} publishers awaiting PubAck",
            )
        measure(
            "messenger-w1",
            replica_children,
            lambda: asyncio.run(messenger_sends(replicas, w, tag=f"w1r{r}", write_quorum=1)),
            f"{w.concurrency} concurrent send(), W=1, SQLite fsync before ack",
        )
        measure(
            "messenger-w3",
            replica_children,
            lambda: asyncio.run(messenger_sends(replicas, w, tag=f"w3r{r}", write_quorum=3)),
            f"{w.concurrency} concurrent send(), W=3",
        )
        measure(
            "messenger-batch",
            replica_children,
            lambda: asyncio.run(messenger_batches(replicas, w, tag=f"batch{r}")),
            f"send_many() of {w.batch_messages}, {w.batch_callers} in flight; latency per list",
        )
        measure(
            "legacy",
            legacy_children,
            lambda: legacy_sends(legacy, w, tag=f"legacy{r}"),
            "original design: sync server, dict in memory, sync client to 3 in turn",
        )
        measure(
            "messenger-legacy",
            replica_children,
            lambda: legacy_sends(replicas, w, tag=f"mlegacy{r}"),
            "original sync client: unary Send to 3 replicas in turn",
        )

    for r in range(rounds):
        one_round(r)
    # reads consume what the first round wrote, once: ours, then JetStream's right after
    boxes = mailboxes_of("w3r0", mailboxes=w.mailboxes)
    measure(
        "reads",
        replica_children,
        lambda: asyncio.run(messenger_reads(replicas, w, boxes=boxes, home=procs.root / "reader-home")),
        f"receive() of the first messenger-w3 mailboxes, {w.read_callers} in flight; latency per mailbox",
    )
    if systems.jetstream is not None and "r0" in js_rows:
        js_children, urls = systems.jetstream
        total = js_rows["r0"].messages
        measure(
            "jetstream-reads",
            js_children,
            lambda: asyncio.run(jetstream.pull_reads(urls[0], w, tag="js0", total=total)),
            "pull consumer: fetch 100, ack each; latency per fetch",
        )
    for name in ("ceiling", "messenger-w1", "messenger-w3", "messenger-batch", "messenger-legacy", "reads", "legacy"):
        run.rows.append(_median(by_round[name]))
    for name in ("jetstream-r3", "jetstream-reads"):
        if name in by_round:
            run.rows.append(_median(by_round[name]))
        else:
            run.rows.append(
                skipped(name, systems.jetstream_error or "no JetStream cluster")
                if jetstream.unavailable_reason() is not None
                else Row(name, None, None, None, None, 0, 0.0, 0.0, 0.0, systems.jetstream_error or "", "failed")
            )
    for children in (ceiling_children, replica_children, legacy_children):
        procs.stop(children)
    if systems.jetstream is not None:
        procs.stop(systems.jetstream[0])


def _median(rows: list[Row]) -> Row:
    """The round with the median msgs/s (failed rounds sort first); its note says how many rounds."""
    ordered = sorted(rows, key=lambda r: (r.status == "ok", r.msgs_per_s or 0.0))
    chosen = ordered[(len(ordered) - 1) // 2] if all(r.status == "ok" for r in rows) else ordered[0]
    if len(rows) > 1:
        spread = ", ".join(f"{r.msgs_per_s or 0:,.0f}" for r in rows)
        chosen = replace(chosen, note=f"{chosen.note}; median of {len(rows)} rounds ({spread} msgs/s)")
    return chosen


def _jetstream_sync(run: Run, procs: Processes) -> None:
    w = run.workload
    name = "jetstream-r3-sync"
    why = jetstream.unavailable_reason()
    if why is not None:
        run.rows.append(skipped(name, why))
        return
    children, urls = jetstream.start_cluster(procs, tag=name, sync_always=True)
    try:
        asyncio.run(jetstream.create_stream(urls[0], children=children))
        run.measure(
            name,
            children,
            lambda: asyncio.run(jetstream.publishes(urls[0], w, tag=name)),
            note=f"sync_interval: always; {w.concurrency} publishers awaiting PubAck",
        )
    except Exception as exc:  # the cluster would not come up: say so in its row, go on
        run.rows.append(Row(name, None, None, None, None, 0, 0.0, 0.0, 0.0, repr(exc)[:300], "failed"))
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
