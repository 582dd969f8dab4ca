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
from grpc_messenger.bench.cpu import CLIENT, NO_CPU, CpuMeter, CpuPerMessage, per_message
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

# quick: one round of fewer messages (enough that CPU per message, in 10 ms ticks, is within ~3 us),
# over fewer mailboxes so that each holds 100 messages as in full mode: reads pay per mailbox
QUICK = Workload(messages=4000, mailboxes=40, warmup_messages=500, legacy_messages=600, row_time_max_s=15.0)
FULL = Workload()
SCALE_REPLICAS = (1, 3, 5)
SCALE_MAILBOX_SIZES = (1_000, 100_000)
# a 1,000,000-message mailbox takes ~6 of the 10 minutes on 2 shared cores: only with --huge
SCALE_MAILBOX_HUGE = 1_000_000
SCALE_MAILBOX_COUNTS = (1, 1_000, 100_000)
SCALE_ROW_TIME_MAX_S = 240.0
# filling the 1,000,000-message mailbox needs ~3,300 msgs/s to finish within this bound
SCALE_HUGE_ROW_TIME_MAX_S = 300.0
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
    cpu: CpuPerMessage = NO_CPU

    def as_json(self) -> dict[str, Any]:
        """The JSON form; `peak_rss_mib` is the client's (the servers' is beside it).

        `server_cpu_us_per_msg` is the busiest server process's CPU per message
        (each replica stores every message: what one replica costs);
        `server_cpu_us_per_msg_total` adds up every server process of the row;
        `cpu_us_per_msg_by_process` has each process by name.
        """
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
            "client_cpu_us_per_msg": _round(self.cpu.client_us),
            "server_cpu_us_per_msg": _round(self.cpu.server_max_us),
            "server_cpu_us_per_msg_total": _round(self.cpu.server_total_us),
            "cpu_us_per_msg_by_process": {
                **({CLIENT: _round(self.cpu.client_us)} if self.cpu.client_us is not None else {}),
                **{name: _round(us) for name, us in self.cpu.servers_us},
            },
            "messages": self.messages,
            "seconds": _round(self.seconds),
            "note": self.note,
        }


def row_from_json(data: dict[str, Any]) -> Row:
    """A Row back from its JSON form (to redraw a saved run's tables and plot)."""
    by_process = dict(data.get("cpu_us_per_msg_by_process") or {})
    client = by_process.pop(CLIENT, None)
    return Row(
        name=data["name"],
        msgs_per_s=data["msgs_per_s"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        p999_ms=data["p999_ms"],
        messages=data["messages"],
        seconds=data["seconds"] or 0.0,
        client_peak_rss_mib=data.get("client_peak_rss_mib") or 0.0,
        server_peak_rss_mib=data.get("server_peak_rss_mib") or 0.0,
        note=data.get("note", ""),
        status=data.get("status", "ok"),
        cpu=CpuPerMessage(client, tuple((name, float(us)) for name, us in by_process.items() if us is not None)),
    )


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


def failed(name: str, why: str, seconds: float = 0.0) -> Row:
    """A row that was tried and failed (why in its note)."""
    return Row(name, None, None, None, None, 0, seconds, 0.0, 0.0, note=why[:300], status="failed")


# a row's work: given the meter to open around its measured part and a fresh client home
Work = Callable[[CpuMeter, Path], Timing]


@dataclass(slots=True)
class Run:
    """Options and results of one benchmark run."""

    workload: Workload
    quick: bool
    scale: bool
    progress: Progress
    homes: Path
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def measure(self, name: str, servers: Sequence[Child], work: Work, *, note: str = "", record: bool = True) -> Row:
        """Run one row with peak RSS reset on the client and `servers` first; never raises.

        The client (this process) and every process in `servers` have their
        CPU time measured around the row's measured part.
        """
        self.progress(f"{name} ...")
        pids = [c.pid for c in servers]
        for pid in (self_pid(), *pids):
            reset_peak_rss(pid)
        meter = CpuMeter({CLIENT: self_pid(), **{c.name: c.pid for c in servers}})
        home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.homes))
        started = time.perf_counter()
        try:
            timing = work(meter, home)
        except Exception as exc:  # a failed row is reported, the run goes on
            row = failed(name, repr(exc), time.perf_counter() - started)
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
                cpu=per_message(meter.spent_s, timing.messages),
            )
        if record:
            self.rows.append(row)
        cpu = row.cpu
        self.progress(
            f"{name}: {row.status} {row.msgs_per_s or 0:,.0f} msgs/s, CPU us/msg client {cpu.client_us or 0:.0f}"
            f" server {cpu.server_max_us or 0:.0f}"
        )
        return row


def run_suite(
    *, quick: bool, scale: bool, workload: Workload | None, progress: Progress, huge: bool = False
) -> list[Row]:
    """Every row; everything started is stopped at the end, also on failure.

    The main rows run in rounds (full mode: 3), interleaved so that each row
    and its baseline run seconds apart: on a shared machine the load moves
    within a run, and neighbours see the same load. Each row reports its
    median round. Servers, stores and client homes live in one temporary
    directory, removed at the end.
    """
    w = workload or (QUICK if quick else FULL)
    root = Path(tempfile.mkdtemp(prefix="messenger-bench-"))
    homes = root / "client-homes"
    homes.mkdir()
    run = Run(workload=w, quick=quick, scale=scale, progress=progress, homes=homes)
    procs = Processes(root)
    try:
        _main_rows(run, procs, rounds=1 if quick else FULL_ROUNDS)
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
    # JetStream clusters by row name (default settings; sync_interval: always), absent if they failed
    jetstream: dict[str, tuple[list[Child], list[str]]]
    jetstream_error: str | None


def _start_servers(procs: Processes, kind: str) -> tuple[list[Child], tuple[str, ...]]:
    started = [start_python_server(procs, f"{kind}-{i + 1}", ["grpc_messenger.bench.servers", kind]) for i in range(3)]
    return [c for c, _ in started], tuple(a for _, a in started)


JETSTREAM_CLUSTERS = {"jetstream-r3": False, "jetstream-r3-sync": True}  # row -> sync_interval: always


def _start_systems(run: Run, procs: Processes) -> _Systems:
    ceiling = _start_servers(procs, "ceiling")
    replicas = start_replicas(procs, n=3, tag="messenger")
    legacy = _start_servers(procs, "legacy")
    clusters: dict[str, tuple[list[Child], list[str]]] = {}
    error = jetstream.unavailable_reason()
    if error is None:
        for tag, sync_always in JETSTREAM_CLUSTERS.items():
            children, urls = jetstream.start_cluster(procs, tag=tag, sync_always=sync_always)
            try:
                asyncio.run(jetstream.create_stream(urls[0], children=children))
                clusters[tag] = (children, urls)
            except Exception as exc:  # reported in that cluster's rows; the others go on
                error = repr(exc)[:300]
                procs.stop(children)
    started = ", ".join(("3 ceiling", "3 replicas", "3 legacy", *(f"{tag} (3 nodes)" for tag in clusters)))
    run.progress(f"servers up: {started}")
    return _Systems(ceiling, replicas, legacy, clusters, error)


MAIN_ROWS = (
    "ceiling",
    "messenger-w1",
    "messenger-w2",
    "messenger-w3",
    "messenger-batch",
    "messenger-legacy",
    "reads",
    "legacy",
)
# row -> the cluster it runs on
JETSTREAM_ROWS = {
    "jetstream-r3": "jetstream-r3",
    "jetstream-r3-noid": "jetstream-r3",
    "jetstream-r3-sync": "jetstream-r3-sync",
    "jetstream-reads": "jetstream-r3",
}


def _main_rows(run: Run, procs: Processes, *, rounds: int) -> None:
    w = run.workload
    systems = _start_systems(run, procs)
    ceiling_children, ceiling = systems.ceiling
    replica_children, replicas = systems.replicas
    legacy_children, legacy = systems.legacy
    by_round: dict[str, list[Row]] = {}

    def measure(name: str, servers: list[Child], work: Work, note: str) -> Row:
        row = run.measure(name, servers, work, note=note, record=False)
        by_round.setdefault(name, []).append(row)
        return row

    def sends(name: str, write_quorum: int, r: int, note: str) -> None:
        tag = f"{name.removeprefix('messenger-')}r{r}"
        measure(
            name,
            replica_children,
            lambda m, h: asyncio.run(messenger_sends(replicas, w, tag=tag, write_quorum=write_quorum, meter=m, home=h)),
            note,
        )

    def publishes(name: str, r: int, *, msg_ids: bool, note: str) -> None:
        cluster = systems.jetstream.get(JETSTREAM_ROWS[name])
        if cluster is None:
            return
        children, urls = cluster
        tag = f"{name.removeprefix('jetstream-').replace('-', '')}x{r}"
        measure(
            name,
            children,
            lambda m, h: asyncio.run(jetstream.publishes(urls[0], w, tag=tag, meter=m, msg_ids=msg_ids)),
            note,
        )

    def one_round(r: int) -> None:
        measure(
            "ceiling",
            ceiling_children,
            lambda m, h: asyncio.run(messenger_sends(ceiling, w, tag=f"ceiling{r}", write_quorum=1, meter=m, home=h)),
            "coalescing client, W=1, 3 servers that store nothing",
        )
        publishes(
            "jetstream-r3",
            r,
            msg_ids=True,
            note=f"default: fsync every 2 min; {w.concurrency} publishers with Nats-Msg-Id awaiting PubAck",
        )
        sends("messenger-w1", 1, r, f"{w.concurrency} concurrent send(), W=1, SQLite fsync before ack")
        sends("messenger-w2", 2, r, f"{w.concurrency} concurrent send(), W=2: ack after 2 of 3 replicas fsynced")
        publishes(
            "jetstream-r3-sync",
            r,
            msg_ids=True,
            note=f"sync_interval: always (fsync before ack); {w.concurrency} publishers with Nats-Msg-Id",
        )
        sends("messenger-w3", 3, r, f"{w.concurrency} concurrent send(), W=3")
        publishes(
            "jetstream-r3-noid",
            r,
            msg_ids=False,
            note=f"as jetstream-r3 without Nats-Msg-Id (no de-duplication); {w.concurrency} publishers",
        )
        measure(
            "messenger-batch",
            replica_children,
            lambda m, h: asyncio.run(messenger_batches(replicas, w, tag=f"batch{r}", meter=m, home=h)),
            f"send_many() of {w.batch_messages}, {w.batch_callers} in flight; latency per list",
        )
        measure(
            "legacy",
            legacy_children,
            lambda m, h: legacy_sends(legacy, w, tag=f"legacy{r}", meter=m),
            "original design: sync server, dict in memory, sync client to 3 in turn",
        )
        measure(
            "messenger-legacy",
            replica_children,
            lambda m, h: legacy_sends(replicas, w, tag=f"mlegacy{r}", meter=m),
            "original sync client: unary Send to 3 replicas in turn",
        )

    for r in range(rounds):
        one_round(r)
    # reads consume what the first round wrote, once: ours, then JetStream's right after
    boxes = mailboxes_of("w3r0", mailboxes=w.mailboxes)
    measure(
        "reads",
        replica_children,
        lambda m, h: asyncio.run(messenger_reads(replicas, w, boxes=boxes, meter=m, home=h)),
        f"receive() of the first messenger-w3 mailboxes, {w.read_callers} in flight; latency per mailbox",
    )
    first_js = by_round.get("jetstream-r3", [])
    if first_js and first_js[0].status == "ok" and first_js[0].messages > 0:
        js_children, urls = systems.jetstream["jetstream-r3"]
        total = first_js[0].messages
        measure(
            "jetstream-reads",
            js_children,
            lambda m, h: asyncio.run(jetstream.pull_reads(urls[0], w, tag="r3x0", total=total, meter=m)),
            "pull consumer: fetch 100, ack each; latency per fetch",
        )
    for name in MAIN_ROWS:
        run.rows.append(_median(by_round[name]))
    for name, cluster in JETSTREAM_ROWS.items():
        if name in by_round:
            run.rows.append(_median(by_round[name]))
        elif jetstream.unavailable_reason() is not None:
            run.rows.append(skipped(name, systems.jetstream_error or "no JetStream cluster"))
        else:
            run.rows.append(failed(name, systems.jetstream_error or f"{cluster} did not start"))
    for children in (ceiling_children, replica_children, legacy_children):
        procs.stop(children)
    for children, _ in systems.jetstream.values():
        procs.stop(children)


def _median(rows: list[Row]) -> Row:
    """The round with the median msgs/s (failed rounds sort first); its note says how many rounds."""
    ordered = sorted(rows, key=lambda r: (r.status == "ok", r.msgs_per_s or 0.0))
    chosen = ordered[(len(ordered) - 1) // 2] if all(r.status == "ok" for r in rows) else ordered[0]
    if len(rows) > 1:
        spread = ", ".join(f"{r.msgs_per_s or 0:,.0f}" for r in rows)
        chosen = replace(chosen, note=f"{chosen.note}; median of {len(rows)} rounds ({spread} msgs/s)")
    return chosen


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
        lambda m, h: asyncio.run(messenger_sends(servers, w, tag=tag, write_quorum=1, meter=m, home=h)),
        note=f"{n} replicas, W=1 sends",
    )
    boxes = mailboxes_of(tag, mailboxes=w.mailboxes)
    run.measure(
        f"scale-replicas-{n}-read",
        children,
        lambda m, h: asyncio.run(messenger_reads(servers, w, boxes=boxes, meter=m, home=h)),
        note=f"{n} replicas, receive() of every mailbox",
    )
    procs.stop(children)


def _scale_mailbox_size(run: Run, procs: Processes, *, size: int) -> None:
    w = replace(
        run.workload, row_time_max_s=SCALE_HUGE_ROW_TIME_MAX_S if size >= SCALE_MAILBOX_HUGE else SCALE_ROW_TIME_MAX_S
    )
    tag = f"scale-m{size}"
    children, servers = start_replicas(procs, n=3, tag=tag)
    run.measure(
        f"scale-mailbox-{_short(size)}",
        children,
        lambda m, h: asyncio.run(messenger_batches(servers, w, tag=tag, mailboxes=1, messages=size, meter=m, home=h)),
        note=f"up to {size:,} messages into one mailbox with send_many() (bounded by time)",
    )
    boxes = mailboxes_of(tag, mailboxes=1)
    run.measure(
        f"scale-mailbox-{_short(size)}-read",
        children,
        lambda m, h: asyncio.run(messenger_reads(servers, w, boxes=boxes, meter=m, home=h)),
        note="receive(limit=10,000) of that mailbox until empty; latency: the whole mailbox",
    )
    procs.stop(children)


def _scale_mailbox_count(run: Run, children: list[Child], servers: tuple[str, ...], *, count: int) -> None:
    w = run.workload
    tag = f"scale-b{count}"
    run.measure(
        f"scale-mailboxes-{_short(count)}",
        children,
        lambda m, h: asyncio.run(
            messenger_sends(servers, w, tag=tag, write_quorum=1, mailboxes=count, meter=m, home=h)
        ),
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
