"""One chaos run: cluster up, workload and nemesis, heal, settle, drain, check.

Everything it starts (replica processes, proxies, clients, the temporary
directory) is stopped and removed in `finally`, whatever happens.

Beyond the public API, the settle step counts the copies of each message on
each replica with the client's per-replica paged Fetch
(grpc_messenger.client.pages) over a generated stub: the public client merges
replicas, and settling is about each one alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from grpc_messenger import AsyncMessenger, ClientConfig, InvalidInput, MessengerError
from grpc_messenger.chaos.checker import CheckReport, check
from grpc_messenger.chaos.clocks import ClockSpec, by_name, clock_env, set_offset
from grpc_messenger.chaos.cluster import ChaosCluster
from grpc_messenger.chaos.faults import (
    NEEDS_SENDER_PROCESSES,
    SCENARIOS,
    Fault,
    Nemesis,
    SchedulePlan,
    plan_schedule,
)
from grpc_messenger.chaos.history import History, merge_histories, read_history
from grpc_messenger.chaos.resources import Trend, sample, trends
from grpc_messenger.chaos.sender_proc import SenderProcess, SenderSpec
from grpc_messenger.chaos.workload import RawReader, Reader, Sender, mailbox_names
from grpc_messenger.client.pages import fetch_pages
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

TICK_S = 5.0
SETTLE_POLL_S = 0.5
CLIENT_TIMEOUT_S = 3.0
OUTBOX_EXPIRY_S = 3600.0  # longer than any run: nothing may expire while we watch
FETCH_TIMEOUT_S = 5.0
FETCH_PAGE_SIZE = 500
MESSAGES_PER_SENDER_MAX = 10_000_000
PLAN_FAULTS_SHOWN_MAX = 20


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """Everything a run needs; the seed makes it replayable."""

    seed: int
    duration_s: float = 60.0
    scenario: str = "mixed"
    senders: int = 4
    readers: int = 2
    mailboxes: int = 40
    rate_per_s: float = 150.0  # all senders together
    in_flight_max: int = 16  # sends in flight per sender (what lets the client batch)
    read_pause_s: tuple[float, float] = (0.05, 0.4)
    outbox: bool = True
    repair: bool = True
    inbox_dedup: bool = True
    repair_interval_s: float = 1.0
    data_loss_gap_s: float = 10.0
    rebuild_wait: bool = True  # hold each data-loss fault back until no replica is rebuilding
    settle_max_s: float = 60.0
    sample_interval_s: float = TICK_S  # RSS, fds and threads of every process into the history
    sender_processes: bool = False  # senders in their own processes (killable with SIGKILL, restarted)
    clocks: tuple[ClockSpec, ...] = ()  # lying clocks (libfaketime) of replicas and sender processes
    tombstone_grace_s: float | None = None  # passed to every replica (default: the replica's own)
    work_dir: Path | None = None  # default: a new temporary directory, removed at the end
    history_path: Path | None = None  # keep a copy of the history here

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise InvalidInput(f"unknown scenario {self.scenario!r}; choose from {', '.join(SCENARIOS)}")
        if not (self.duration_s > 0 and self.senders >= 1 and self.readers >= 1 and self.mailboxes >= self.readers):
            raise InvalidInput("need a positive duration, a sender, a reader, and at least one mailbox per reader")
        if self.scenario in NEEDS_SENDER_PROCESSES and not self.sender_processes:
            raise InvalidInput(f"scenario {self.scenario} kills senders: add --sender-processes")
        names = {f"r{i + 1}" for i in range(3)} | {f"s{i + 1}" for i in range(self.senders) if self.sender_processes}
        for name in by_name(self.clocks):
            if name not in names:
                raise InvalidInput(f"clock spec for {name}: no such process (senders need --sender-processes)")
        if self.sender_processes and not self.outbox:
            raise InvalidInput("sender processes always keep an outbox (it is what a restart must carry)")


@dataclass(frozen=True, slots=True)
class ChaosResult:
    """The report plus how the run was set up."""

    config: ChaosConfig
    report: CheckReport
    messages_per_s: float
    outbox_owed_end: int | None
    replicas_down_end: int
    replica_start_failures: int
    history_lines: int
    rebuild_wait_s: float = 0.0  # data-loss faults held back until every replica had rebuilt, in all
    data_loss_while_rebuilding: int = 0  # data-loss faults injected after the wait for a rebuild timed out
    resources: tuple[Trend, ...] = ()

    @property
    def growing(self) -> tuple[Trend, ...]:
        """The resource series that kept climbing (a leak, in a long run)."""
        return tuple(t for t in self.resources if t.growing)

    @property
    def ok(self) -> bool:
        """The checker found nothing wrong and every replica is running at the end."""
        return self.report.ok and self.replicas_down_end == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: the checker's figures first, then the run's settings."""
        return {
            **self.report.to_dict(),
            "ok": self.ok,
            "seed": self.config.seed,
            "duration_s": self.config.duration_s,
            "scenario": self.config.scenario,
            "sender_processes": self.config.sender_processes,
            "clocks": [c.describe() for c in self.config.clocks],
            "defences": {
                "outbox": self.config.outbox,
                "repair": self.config.repair,
                "inbox_dedup": self.config.inbox_dedup,
                "rebuild_wait": self.config.rebuild_wait,
            },
            "messages_per_s": round(self.messages_per_s, 1),
            "outbox_owed_end": self.outbox_owed_end,
            "replicas_down_end": self.replicas_down_end,
            "replica_start_failures": self.replica_start_failures,
            "history_lines": self.history_lines,
            "rebuild_wait_s": round(self.rebuild_wait_s, 1),
            "data_loss_while_rebuilding": self.data_loss_while_rebuilding,
            "resources": [t.to_dict() for t in self.resources],
            "resources_growing": [f"{t.process}.{t.figure}" for t in self.growing],
        }


class _Printer:
    """Progress lines: elapsed time, then one dense event."""

    def __init__(self, history: History, emit: Callable[[str], None]) -> None:
        self._history = history
        self._emit = emit

    def __call__(self, line: str) -> None:
        self._emit(f"{self._history.elapsed_s():8.2f}s {line}")


async def run_chaos(config: ChaosConfig, *, emit: Callable[[str], None] = print) -> ChaosResult:
    """Run the whole thing; always clean up."""
    root = config.work_dir or Path(tempfile.mkdtemp(prefix="messenger-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    history = History(root / "history.jsonl")
    say = _Printer(history, emit)
    clocks = by_name(config.clocks)
    for spec in clocks.values():
        set_offset(_offset_file(root, spec.name), spec.offset)
    cluster = ChaosCluster(
        root=root / "cluster",
        repair=config.repair,
        repair_interval_s=config.repair_interval_s,
        replica_args=("--tombstone-grace", str(config.tombstone_grace_s)) if config.tombstone_grace_s else (),
        replica_env={n: clock_env(_offset_file(root, n)) for n in clocks if n.startswith("r")},
    )
    (root / "cluster").mkdir(exist_ok=True)
    senders: list[Sender] = []
    processes: list[SenderProcess] = []
    flushers: list[AsyncMessenger] = []
    readers: list[Reader] = []
    try:
        try:
            say(
                f"start  seed={config.seed} scenario={config.scenario} duration_s={config.duration_s:g} "
                f"senders={config.senders}{' (processes)' if config.sender_processes else ''} "
                f"readers={config.readers} mailboxes={config.mailboxes} "
                f"rate_per_s={config.rate_per_s:g} outbox={_onoff(config.outbox)} "
                f"repair={_onoff(config.repair)} inbox_dedup={_onoff(config.inbox_dedup)} "
                + (f"clocks={','.join(c.describe() for c in config.clocks)} " if config.clocks else "")
                + f"dir={root}"
            )
            await cluster.start()
            say("cluster " + " ".join(f"{r.name}=pid:{r.pid}@{r.address}" for r in cluster.replicas))
            rng = random.Random(config.seed)
            schedule = schedule_for(config, rng)
            say(_plan_line(schedule))
            mailboxes = mailbox_names(config.mailboxes)
            if config.sender_processes:
                processes = [
                    _sender_process(config, cluster, root, history, rng, i, mailboxes) for i in range(config.senders)
                ]
                pids = [await p.start() for p in processes]
                say("senders " + " ".join(f"{p.spec.name}=pid:{pid}" for p, pid in zip(processes, pids, strict=True)))
            else:
                senders = [_sender(config, cluster, root, history, rng, i, mailboxes) for i in range(config.senders)]
            readers = [_reader(config, cluster, root, history, rng, i, mailboxes) for i in range(config.readers)]
            nemesis = Nemesis(
                cluster=cluster,
                history=history,
                rng=random.Random(rng.random()),
                emit=say,
                describe_state=lambda: _state_line(cluster, history, processes),
                senders=processes,
                rebuild_wait=config.rebuild_wait,
            )
            started = time.monotonic()
            await _run_workload(
                config, schedule, cluster, nemesis, senders, readers, history, say, started, processes, root
            )
            load_s = time.monotonic() - started
            # sender processes finish their sends in flight and exit; their homes (outboxes) stay
            await asyncio.gather(*(p.stop() for p in processes))

            for line in await nemesis.heal_all():
                say(f"heal   {line}")
            say(f"heal   all links pass, all replicas up | {_state_line(cluster, history, processes)}")
            flushers = [AsyncMessenger(p.spec.client_config()) for p in processes]
            messengers = [s.messenger for s in senders] + flushers
            owed_end = await _settle(config, cluster, messengers, mailboxes, history, say)
            drained = sum([await r.drain() for r in readers])
            leftover = await _queued_anywhere(cluster, mailboxes)
            say(f"drain  shown={drained} still_queued={leftover}")
            history.record("drained", shown=drained, still_queued=leftover)
            down = sum(1 for r in cluster.replicas if not r.alive)
        finally:
            for messenger in [s.messenger for s in senders] + flushers:
                with contextlib.suppress(Exception):
                    await messenger.close()
            for process in processes:
                with contextlib.suppress(Exception):
                    await process.stop()
            for reader in readers:
                with contextlib.suppress(Exception):
                    await reader.close()
            await cluster.close()
            history.close()
        merge_histories(history.path, [path for p in processes for path in p.history_paths])
        events = list(read_history(history.path))
        report = check(events)
    finally:
        history.close()
        if config.history_path is not None and history.path.exists():
            shutil.copyfile(history.path, config.history_path)
        if config.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return ChaosResult(
        config=config,
        report=report,
        messages_per_s=report.sent / load_s if load_s else 0.0,
        outbox_owed_end=owed_end,
        replicas_down_end=down,
        replica_start_failures=nemesis.start_failures,
        history_lines=len(events),
        rebuild_wait_s=nemesis.rebuild_wait_s,
        data_loss_while_rebuilding=nemesis.rebuild_wait_timeouts,
        resources=tuple(trends(events)),
    )


def schedule_for(config: ChaosConfig, rng: random.Random | None = None) -> list[Fault]:
    """The fault schedule of a run: the first draw of the run's seeded generator seeds it."""
    rng = rng or random.Random(config.seed)
    plan = SchedulePlan(
        duration_s=config.duration_s,
        scenario=config.scenario,
        data_loss_gap_s=config.data_loss_gap_s,
        sender_processes=config.senders if config.sender_processes else 0,
    )
    return plan_schedule(random.Random(rng.random()), plan)


def _plan_line(schedule: Sequence[Fault]) -> str:
    shown = ", ".join(f"{f.at_s:.0f}s {f.kind.value}" for f in schedule[:PLAN_FAULTS_SHOWN_MAX])
    more = f", ... ({len(schedule) - PLAN_FAULTS_SHOWN_MAX} more)" if len(schedule) > PLAN_FAULTS_SHOWN_MAX else ""
    return f"plan   {len(schedule)} faults: {shown}{more}"


def _onoff(on: bool) -> str:
    return "on" if on else "OFF"


def _sender(
    config: ChaosConfig,
    cluster: ChaosCluster,
    root: Path,
    history: History,
    rng: random.Random,
    i: int,
    mailboxes: Sequence[str],
) -> Sender:
    client_config = ClientConfig(
        servers=cluster.sender_servers,
        write_quorum=1,
        timeout_s=CLIENT_TIMEOUT_S,
        data_dir=root / f"sender-{i + 1}",
        outbox=config.outbox,
        outbox_expiry_s=OUTBOX_EXPIRY_S,
    )
    return Sender(
        name=f"s{i + 1}",
        run_tag=f"c{config.seed}",
        messenger=AsyncMessenger(client_config),
        mailboxes=mailboxes,
        rng=random.Random(rng.random()),
        history=history,
        rate_per_s=config.rate_per_s / config.senders,
        in_flight_max=config.in_flight_max,
    )


def _sender_process(
    config: ChaosConfig,
    cluster: ChaosCluster,
    root: Path,
    history: History,
    rng: random.Random,
    i: int,
    mailboxes: Sequence[str],
) -> SenderProcess:
    spec = SenderSpec(
        name=f"s{i + 1}",
        run_tag=f"c{config.seed}",
        servers=cluster.sender_servers,
        home=str(root / f"sender-{i + 1}"),
        mailboxes=tuple(mailboxes),
        seed=rng.randrange(2**31),
        rate_per_s=config.rate_per_s / config.senders,
        timeout_s=CLIENT_TIMEOUT_S,
        outbox_expiry_s=OUTBOX_EXPIRY_S,
        history_dir=str(root),
        t0_s=history.t0_s,
        in_flight_max=config.in_flight_max,
    )
    clock = by_name(config.clocks).get(spec.name)
    env = clock_env(_offset_file(root, spec.name)) if clock else None
    return SenderProcess(spec, log_path=root / f"sender-{i + 1}.log", env=env)


def _offset_file(root: Path, name: str) -> Path:
    return root / f"clock-{name}.txt"


async def _jump_clocks(
    config: ChaosConfig, root: Path, history: History, say: Callable[[str], None], stop: asyncio.Event
) -> None:
    """At each spec's time, move that process's clock to its new offset."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for spec in sorted((c for c in config.clocks if c.jump_to), key=lambda c: c.jump_at_s):
        assert spec.jump_to is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, started + spec.jump_at_s - loop.time()))
        if stop.is_set():
            return
        set_offset(_offset_file(root, spec.name), spec.jump_to)
        history.record("clock_jump", process=spec.name, offset_from=spec.offset, offset_to=spec.jump_to)
        say(f"clock  {spec.name} jumps {spec.offset} -> {spec.jump_to}")


def _reader(
    config: ChaosConfig,
    cluster: ChaosCluster,
    root: Path,
    history: History,
    rng: random.Random,
    i: int,
    mailboxes: Sequence[str],
) -> Reader:
    own = mailboxes[i :: config.readers]
    if not config.inbox_dedup:
        return RawReader(
            name=f"d{i + 1}",
            servers=cluster.reader_servers,
            mailboxes=own,
            rng=random.Random(rng.random()),
            history=history,
            timeout_s=CLIENT_TIMEOUT_S,
        )
    client_config = ClientConfig(
        servers=cluster.reader_servers, timeout_s=CLIENT_TIMEOUT_S, data_dir=root / f"reader-{i + 1}", outbox=False
    )
    return Reader(
        name=f"d{i + 1}",
        messenger=AsyncMessenger(client_config),
        mailboxes=own,
        rng=random.Random(rng.random()),
        history=history,
    )


async def _run_workload(
    config: ChaosConfig,
    schedule: Sequence[Fault],
    cluster: ChaosCluster,
    nemesis: Nemesis,
    senders: Sequence[Sender],
    readers: Sequence[Reader],
    history: History,
    say: Callable[[str], None],
    started: float,
    processes: Sequence[SenderProcess] = (),
    root: Path = Path(),
) -> None:
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=TICK_S)
            say(f"tick   {_state_line(cluster, history, processes)}")

    async with asyncio.TaskGroup() as tg:
        for s in senders:
            tg.create_task(s.run(stop, messages_max=MESSAGES_PER_SENDER_MAX))
        for r in readers:
            tg.create_task(r.run(stop, pause_s=config.read_pause_s))
        tg.create_task(nemesis.run(schedule, started_at=started, stop=stop))
        tg.create_task(ticker())
        tg.create_task(_sample_resources(cluster, processes, history, stop, interval_s=config.sample_interval_s))
        tg.create_task(_jump_clocks(config, root, history, say, stop))
        await asyncio.sleep(config.duration_s)
        stop.set()
        say("stop   workload stopping; waiting for sends in flight")


async def _sample_resources(
    cluster: ChaosCluster,
    processes: Sequence[SenderProcess],
    history: History,
    stop: asyncio.Event,
    *,
    interval_s: float,
) -> None:
    """Every interval: RSS, open fds and threads of the harness (the clients) and each replica."""
    while not stop.is_set():
        pids = {"client": os.getpid(), **{r.name: r.pid for r in cluster.replicas if r.alive and r.ready_path.exists()}}
        pids.update({p.spec.name: p.process.pid for p in processes if p.process is not None and p.alive})
        found = {name: sample(pid) for name, pid in pids.items()}
        history.record(
            "resources",
            processes={
                name: {"pid": s.pid, "rss_kib": s.rss_kib, "fds": s.fds, "threads": s.threads}
                for name, s in found.items()
                if s is not None
            },
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


def _state_line(cluster: ChaosCluster, history: History, processes: Sequence[SenderProcess] = ()) -> str:
    c = history.counts
    replicas = " ".join(f"{r.name}:{'up' if r.alive else 'DOWN'}" for r in cluster.replicas)
    if processes:  # their sends are counted in their own files, merged at the end
        replicas += " | " + " ".join(f"{p.spec.name}:{'up' if p.alive else 'DOWN'}#{p.incarnation}" for p in processes)
    links = [p.name + ":" + p.mode.value for p in cluster.all_proxies() if p.mode.value != "pass"]
    # sender processes count their sends in their own files (merged at the end): no zeros that look like a stall
    sends = (
        ""
        if processes
        else f"sent={c.get('invoke', 0)} ok={c.get('ok', 0)} fail={c.get('fail', 0)} unk={c.get('info', 0)} "
    )
    return f"{sends}shown={c.get('deliver', 0)} rfail={c.get('read_fail', 0)} | {replicas}" + (
        f" | {' '.join(links)}" if links else ""
    )


async def _flush_outboxes(messengers: Sequence[AsyncMessenger]) -> int:
    """Push every sender's owed deliveries now; return how many are still owed in all."""
    owed = 0
    for messenger in messengers:
        owed += await messenger.flush_outbox()
    return owed


async def _settle(
    config: ChaosConfig,
    cluster: ChaosCluster,
    messengers: Sequence[AsyncMessenger],
    mailboxes: Sequence[str],
    history: History,
    say: Callable[[str], None],
) -> int | None:
    """Flush outboxes and wait (bounded) until every queued message is on every replica."""
    started = time.monotonic()
    use_outbox = config.outbox
    owed: int | None = None
    copies: dict[str, int] = {}
    settle_s: float | None = None
    last_report = 0.0
    while True:
        if use_outbox:
            try:
                owed = await asyncio.wait_for(_flush_outboxes(messengers), timeout=30.0)
            except Exception as exc:  # a flush that fails is a finding, not a reason to stop checking
                say(f"settle flush_outbox failed: {type(exc).__name__}: {exc}")
                owed = -1
        copies = await _copies(cluster, mailboxes)
        short = sum(1 for n in copies.values() if n < len(cluster.replicas))
        elapsed = time.monotonic() - started
        if short == 0 and (owed is None or owed == 0):
            settle_s = round(elapsed, 2)
            break
        if elapsed > config.settle_max_s:
            break
        if elapsed - last_report >= 5.0:
            last_report = elapsed
            say(f"settle waiting: queued={len(copies)} not_on_all={short} outbox_owed={owed}")
        await asyncio.sleep(SETTLE_POLL_S)
    short_keys = sorted(k for k, n in copies.items() if n < len(cluster.replicas))
    history.record("settled", settle_s=settle_s, owed=owed)
    history.record("replication", under_replicated=len(short_keys), queued=len(copies), sample=short_keys[:10])
    say(
        f"settle {'done in ' + str(settle_s) + ' s' if settle_s is not None else 'NOT settled'} "
        f"(bound {config.settle_max_s:g} s): queued={len(copies)} under_replicated={len(short_keys)} "
        f"outbox_owed={owed}"
    )
    return owed


async def _copies(cluster: ChaosCluster, mailboxes: Sequence[str]) -> dict[str, int]:
    """For every message queued on any replica: on how many replicas (Fetch, straight to each replica)."""
    counts: dict[str, int] = {}
    for replica in cluster.replicas:
        keys: set[str] = set()
        async with grpc.aio.insecure_channel(replica.address) as channel:
            stub = pb_grpc.MessengerServiceStub(channel)
            for mailbox in mailboxes:
                keys |= await _fetch_keys(stub, mailbox)
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return counts


async def _fetch_keys(stub: pb_grpc.MessengerServiceAsyncStub, mailbox: str) -> set[str]:
    keys: set[str] = set()
    try:
        async for page in fetch_pages(stub, mailbox, page_size=FETCH_PAGE_SIZE, timeout_s=FETCH_TIMEOUT_S):
            keys.update(page.keys)
    except MessengerError as exc:
        log.info("event=chaos.fetch_failed mailbox=%s error=%r", mailbox, str(exc))
    return keys


async def _queued_anywhere(cluster: ChaosCluster, mailboxes: Sequence[str]) -> int:
    return len(await _copies(cluster, mailboxes))


def report_json(result: ChaosResult) -> str:
    """The report as JSON text."""
    return json.dumps(result.to_dict(), indent=2, sort_keys=False)
