"""Faults: a seeded schedule planned up front, and the nemesis that carries it out.

`plan_schedule` is pure: the same seed gives the same faults, targets and times,
so a run replays as far as the OS allows. The nemesis applies one fault at a
time: start it at its planned offset, hold it, end it (heal the link, restart
the replica), then wait for the next.

The fault model is the contract's: any number of kills, cuts, delays and lost
responses; data loss (lost disk, damaged file) on one replica at a time: the
schedule plans one per `data_loss_gap_s` at most, and the nemesis holds the next
one back until no replica reports itself rebuilding (Info), so a replica has
copied its peers' messages before another may lose its data. (The hour-long run
showed why a fixed gap is not enough: under load a rebuild took up to a minute,
and three disks lost within it lost the messages they held.) With W=1 a message
may live on one replica and the sender's outbox only; losing that replica's disk
is covered by the outbox (the `isolate_wipe` fault is exactly that case).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from grpc_messenger.chaos.cluster import ChaosCluster, ReplicaStartError, damage_file, wipe_data_dir
from grpc_messenger.chaos.history import History
from grpc_messenger.chaos.proxy import FaultProxy, ProxyMode
from grpc_messenger.chaos.sender_proc import SenderProcess
from grpc_messenger.errors import InvalidInput

log = logging.getLogger(__name__)

RESTART_ATTEMPTS_MAX = 3


class FaultKind(enum.Enum):
    """What the nemesis can do."""

    KILL = "kill"  # kill -9, down for hold_s, restart on the same port and data
    WIPE = "wipe"  # kill -9, lost disk (empty data dir), restart
    DAMAGE_FLIP = "damage_flip"  # clean stop, bytes flipped mid-file, restart
    DAMAGE_TRUNCATE = "damage_truncate"  # clean stop, file truncated, restart
    CUT_CLIENT = "cut_client"  # senders and readers <-> one replica: reset, refused
    CUT_PEER = "cut_peer"  # one replica <-> another (both directions)
    DROP_CLIENT = "drop_client"  # black hole between clients and one replica
    DELAY_CLIENT = "delay_client"  # clients <-> one replica slowed by delay_ms each way
    LOSE_CLIENT = "lose_client"  # requests to one replica delivered, responses lost
    LOSE_PEER = "lose_peer"  # the same between two replicas
    ISOLATE_WIPE = "isolate_wipe"  # senders reach only one replica, which cannot repair; then it loses its disk
    KILL_SENDER = "kill_sender"  # a sender process gets SIGKILL (at once, or right after an ack), restarts on its home

    @property
    def loses_data(self) -> bool:
        """True for faults that destroy a replica's data."""
        return self in _DATA_LOSS

    @property
    def stops_replica(self) -> bool:
        """True for faults that take a replica process down."""
        return self in _DATA_LOSS or self is FaultKind.KILL


_DATA_LOSS = {FaultKind.WIPE, FaultKind.DAMAGE_FLIP, FaultKind.DAMAGE_TRUNCATE, FaultKind.ISOLATE_WIPE}

# What every "mixed" run includes at least once (the short-run list, plus isolate_wipe).
MANDATORY = (
    FaultKind.KILL,
    FaultKind.WIPE,
    FaultKind.DAMAGE_FLIP,
    FaultKind.CUT_CLIENT,
    FaultKind.CUT_PEER,
    FaultKind.LOSE_CLIENT,
    FaultKind.ISOLATE_WIPE,
)
MIXED_WEIGHTS = {
    FaultKind.KILL: 4,
    FaultKind.WIPE: 1,
    FaultKind.DAMAGE_FLIP: 1,
    FaultKind.DAMAGE_TRUNCATE: 1,
    FaultKind.CUT_CLIENT: 3,
    FaultKind.CUT_PEER: 2,
    FaultKind.DROP_CLIENT: 2,
    FaultKind.DELAY_CLIENT: 2,
    FaultKind.LOSE_CLIENT: 3,
    FaultKind.LOSE_PEER: 2,
    FaultKind.ISOLATE_WIPE: 1,
    FaultKind.KILL_SENDER: 3,
}
# Named scenarios: the fault menu (and whether targets go round-robin).
SCENARIOS: dict[str, tuple[FaultKind, ...]] = {
    "mixed": tuple(k for k in MIXED_WEIGHTS if k is not FaultKind.KILL_SENDER),
    "isolate-wipe": (FaultKind.ISOLATE_WIPE,),
    "rolling-wipe": (FaultKind.WIPE,),
    "flaky-reads": (FaultKind.KILL, FaultKind.CUT_CLIENT, FaultKind.DROP_CLIENT, FaultKind.LOSE_CLIENT),
    "damage": (FaultKind.DAMAGE_FLIP, FaultKind.DAMAGE_TRUNCATE),
    "sender-crash": (FaultKind.KILL_SENDER, FaultKind.KILL, FaultKind.CUT_CLIENT, FaultKind.LOSE_CLIENT),
}
# Scenarios that need senders in their own processes (a harness cannot SIGKILL itself).
NEEDS_SENDER_PROCESSES = ("sender-crash",)


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault."""

    at_s: float  # offset from the start of the workload
    kind: FaultKind
    target: int  # replica index
    other: int = -1  # the other replica of a peer fault
    hold_s: float = 1.0
    delay_ms: int = 0
    after_ack: bool = False  # kill_sender: wait for the next acknowledged send, then kill

    def where(self, names: Sequence[str]) -> str:
        """The target's name (a sender for kill_sender, else a replica, or a replica pair)."""
        if self.kind is FaultKind.KILL_SENDER:
            return f"s{self.target + 1}"
        return names[self.target] + (f"<->{names[self.other]}" if self.other >= 0 else "")

    def describe(self, names: Sequence[str]) -> str:
        """One dense line: kind, target, parameters."""
        where = self.where(names)
        extra = f" delay_ms={self.delay_ms}" if self.delay_ms else ""
        extra += " after_ack" if self.after_ack else ""
        return f"{self.kind.value:<15} {where:<7} hold_s={self.hold_s:.1f}{extra}"


@dataclass(frozen=True, slots=True)
class SchedulePlan:
    """Knobs of the schedule."""

    duration_s: float
    scenario: str = "mixed"
    n: int = 3
    warmup_s: float = 2.0
    cooldown_s: float = 2.0
    hold_s: tuple[float, float] = (0.8, 3.5)
    gap_s: tuple[float, float] = (0.3, 2.0)
    data_loss_gap_s: float = 10.0
    sender_processes: int = 0  # > 0: senders run as processes, and `mixed` also kills them


def plan_schedule(rng: random.Random, plan: SchedulePlan) -> list[Fault]:
    """The faults of a run, in time order; a pure function of rng's state and the plan."""
    if plan.scenario not in SCENARIOS:
        raise InvalidInput(f"unknown scenario {plan.scenario!r}; choose from {', '.join(SCENARIOS)}")
    menu = SCENARIOS[plan.scenario]
    if plan.scenario == "mixed" and plan.sender_processes:
        menu = (*menu, FaultKind.KILL_SENDER)
    if FaultKind.KILL_SENDER in menu and not plan.sender_processes:
        raise InvalidInput(f"scenario {plan.scenario!r} kills senders: it needs sender processes")
    mandatory = [k for k in (*MANDATORY, FaultKind.KILL_SENDER) if k in menu] if plan.scenario == "mixed" else []
    if plan.scenario == "sender-crash":
        mandatory = [FaultKind.KILL_SENDER, FaultKind.KILL_SENDER]  # both moments, however short the run
    rng.shuffle(mandatory)
    round_robin = plan.scenario in ("rolling-wipe", "isolate-wipe", "damage")
    faults: list[Fault] = []
    t = plan.warmup_s
    last_loss_s = -1e9
    for _ in range(100_000):  # bound: a schedule never has more faults than this
        if t >= plan.duration_s - plan.cooldown_s:
            break
        kind = mandatory.pop() if mandatory else _weighted(rng, menu)
        if kind.loses_data and t - last_loss_s < plan.data_loss_gap_s:
            safe = [k for k in menu if not k.loses_data]
            if not safe:  # a data-loss-only scenario: wait for the gap instead
                t = last_loss_s + plan.data_loss_gap_s
                continue
            if kind in MANDATORY and plan.scenario == "mixed":
                mandatory.insert(0, kind)  # try again later
            kind = _weighted(rng, safe)
        target = len([f for f in faults if f.kind.loses_data]) % plan.n if round_robin else rng.randrange(plan.n)
        fault = Fault(at_s=round(t, 3), kind=kind, target=target, hold_s=round(rng.uniform(*plan.hold_s), 2))
        if kind in (FaultKind.CUT_PEER, FaultKind.LOSE_PEER):
            fault = replace(fault, other=(target + 1 + rng.randrange(plan.n - 1)) % plan.n)
        if kind is FaultKind.DELAY_CLIENT:
            fault = replace(fault, delay_ms=rng.choice((20, 100, 300, 1000)))
        if kind is FaultKind.ISOLATE_WIPE:
            fault = replace(fault, hold_s=round(max(fault.hold_s, 2.0), 2))  # time for sends to land only there
        if kind is FaultKind.KILL_SENDER:
            fault = replace(fault, target=rng.randrange(plan.sender_processes), after_ack=rng.random() < 0.5)
        if kind.loses_data:
            last_loss_s = t
        faults.append(fault)
        t += fault.hold_s + rng.uniform(*plan.gap_s)
    return faults


def _weighted(rng: random.Random, menu: Sequence[FaultKind]) -> FaultKind:
    weights = [MIXED_WEIGHTS[k] for k in menu]
    return rng.choices(list(menu), weights=weights)[0]


REBUILD_WAIT_MAX_S = 300.0
REBUILD_POLL_S = 0.5


class Nemesis:
    """Applies a schedule to a cluster, one fault at a time, recording each in the history."""

    def __init__(
        self,
        *,
        cluster: ChaosCluster,
        history: History,
        rng: random.Random,
        emit: Callable[[str], None],
        describe_state: Callable[[], str],
        senders: Sequence[SenderProcess] = (),
        rebuild_wait: bool = True,
    ) -> None:
        self._cluster = cluster
        self._rebuild_wait = rebuild_wait
        self._senders = senders
        self._history = history
        self._rng = rng  # for damage details only; the schedule is planned up front
        self._emit = emit
        self._describe_state = describe_state
        self.injected = 0
        self.start_failures = 0
        self.rebuild_wait_s = 0.0  # time data-loss faults were held back for a rebuild, in all
        self.rebuild_wait_timeouts = 0  # data-loss faults injected while a replica was still rebuilding

    @property
    def names(self) -> list[str]:
        """Replica names, by index."""
        return [r.name for r in self._cluster.replicas]

    async def run(self, schedule: Sequence[Fault], *, started_at: float, stop: asyncio.Event) -> None:
        """Carry out `schedule` (offsets from `started_at`, a monotonic time) until it ends or `stop` is set."""
        for fault in schedule:
            # after a wait for a rebuild the schedule catches up (no gaps until back on time),
            # so a short run still injects every fault it planned
            delay_s = started_at + fault.at_s - time.monotonic()
            if delay_s > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay_s)
                    return
                except TimeoutError:
                    pass
            if stop.is_set():
                return
            if fault.kind.loses_data and self._rebuild_wait and self._cluster.repair:
                await self._wait_for_rebuilds(stop)
                if stop.is_set():
                    return
            await self.apply(fault, stop=stop)

    async def _wait_for_rebuilds(self, stop: asyncio.Event) -> None:
        """Hold a data-loss fault back until every replica has rebuilt from its peers (bounded)."""
        started = time.monotonic()
        rebuilding = await self._cluster.rebuilding()
        while rebuilding and time.monotonic() - started < REBUILD_WAIT_MAX_S:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=REBUILD_POLL_S)
            if stop.is_set():
                break
            rebuilding = await self._cluster.rebuilding()
        waited_s = time.monotonic() - started
        self.rebuild_wait_s += waited_s
        if rebuilding and not stop.is_set():
            self.rebuild_wait_timeouts += 1
            self._history.record("rebuild_wait_timeout", replicas=rebuilding, waited_s=round(waited_s, 2))
            self._emit(
                f"WARNING data loss next while {', '.join(rebuilding)} still rebuilding (waited {waited_s:.0f} s)"
            )
        elif waited_s >= 1.0:
            self._history.record("rebuild_wait", waited_s=round(waited_s, 2))
            self._emit(f"waited {waited_s:.1f} s for the replicas to rebuild before the next data loss")

    async def apply(self, fault: Fault, *, stop: asyncio.Event) -> None:
        """Start a fault, hold it (cut short by `stop`), end it."""
        self.injected += 1
        detail = await self._start(fault)
        self._history.record("fault", phase="start", **_fault_fields(fault, self.names), **detail)
        self._emit(f"fault+ {fault.describe(self.names)} {_kv(detail)} | {self._describe_state()}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=fault.hold_s)
        detail = await self._end(fault)
        self._history.record("fault", phase="end", **_fault_fields(fault, self.names), **detail)
        self._emit(f"fault- {fault.kind.value:<15} {fault.where(self.names):<7} {_kv(detail)}")

    async def _start(self, fault: Fault) -> dict[str, object]:
        if fault.kind is FaultKind.KILL_SENDER:
            sender = self._senders[fault.target]
            killed = await sender.kill(after_ack=fault.after_ack)
            self._history.record("sender_killed", process=sender.spec.name, incarnation=sender.incarnation, **killed)
            return killed
        c = self._cluster
        i = fault.target
        replica = c.replicas[i]
        if fault.kind is FaultKind.ISOLATE_WIPE:
            # senders reach only replica i; i cannot hand anything to its peers
            for j, proxy in enumerate(c.sender_proxies):
                if j != i:
                    proxy.set_mode(ProxyMode.CUT)
            for (src, dst), proxy in c.peer_proxies.items():
                if i in (src, dst):
                    proxy.set_mode(ProxyMode.CUT)
            return {"pid": replica.pid}
        if fault.kind.stops_replica:
            pid = replica.pid if replica.alive else 0
            damages = fault.kind in (FaultKind.DAMAGE_FLIP, FaultKind.DAMAGE_TRUNCATE)
            # Damage is done to a cleanly stopped (checkpointed) file: after kill -9 the newest
            # pages live in the WAL, which would mask most flips in the main file.
            await (replica.stop() if damages else replica.kill())
            detail: dict[str, object] = {"pid": pid, "stop": "term" if damages else "kill"}
            if fault.kind is FaultKind.WIPE:
                detail["files_removed"] = wipe_data_dir(replica.data_dir)
            elif fault.kind in (FaultKind.DAMAGE_FLIP, FaultKind.DAMAGE_TRUNCATE):
                how = "flip" if fault.kind is FaultKind.DAMAGE_FLIP else "truncate"
                if replica.store_file.exists():
                    damage = damage_file(replica.store_file, self._rng, how=how)
                    detail.update(file_bytes=damage.file_bytes, offset=damage.offset, count=damage.count)
                else:
                    detail["skipped"] = "no data file"
            return detail
        for proxy in self._links(fault):
            if fault.kind in (FaultKind.CUT_CLIENT, FaultKind.CUT_PEER):
                proxy.set_mode(ProxyMode.CUT)
            elif fault.kind is FaultKind.DROP_CLIENT:
                proxy.set_mode(ProxyMode.DROP)
            elif fault.kind is FaultKind.DELAY_CLIENT:
                proxy.set_mode(ProxyMode.DELAY, delay_ms=fault.delay_ms)
            else:
                assert fault.kind in (FaultKind.LOSE_CLIENT, FaultKind.LOSE_PEER), fault.kind
                proxy.set_mode(ProxyMode.LOSE_RESPONSE)
        return {}

    async def _end(self, fault: Fault) -> dict[str, object]:
        if fault.kind is FaultKind.KILL_SENDER:
            sender = self._senders[fault.target]
            return {"pid": await sender.start(), "incarnation": sender.incarnation}
        c = self._cluster
        i = fault.target
        if fault.kind is FaultKind.ISOLATE_WIPE:
            replica = c.replicas[i]
            await replica.kill()
            files = wipe_data_dir(replica.data_dir)
            detail = await self._restart(i)
            c.heal_network()
            return {"files_removed": files, **detail}
        if fault.kind.stops_replica:
            return await self._restart(i)
        lost = sum(p.stats.responses_lost for p in self._links(fault))
        for proxy in self._links(fault):
            proxy.heal()
        return {"responses_lost_total": lost} if fault.kind in (FaultKind.LOSE_CLIENT, FaultKind.LOSE_PEER) else {}

    def _links(self, fault: Fault) -> list[FaultProxy]:
        c = self._cluster
        i = fault.target
        if fault.other >= 0:
            return [c.peer_proxies[(i, fault.other)], c.peer_proxies[(fault.other, i)]]
        return [c.sender_proxies[i], c.reader_proxies[i]]

    async def _restart(self, i: int) -> dict[str, object]:
        replica = self._cluster.replicas[i]
        started = time.monotonic()
        for attempt in range(1, RESTART_ATTEMPTS_MAX + 1):
            try:
                await self._cluster.start_replica(i)
            except ReplicaStartError as exc:
                self.start_failures += 1
                self._history.record("replica_start_failed", replica=replica.name, attempt=attempt, error=str(exc))
                self._emit(f"ERROR  {replica.name} failed to start (attempt {attempt}): {exc}")
                await asyncio.sleep(0.5)
                continue
            return {"pid": replica.pid, "restart_s": round(time.monotonic() - started, 2)}
        return {"restart": "failed"}

    async def heal_all(self) -> list[str]:
        """Every link back to PASS, every replica that is down started again; return what was done."""
        done: list[str] = []
        self._cluster.heal_network()
        for i, replica in enumerate(self._cluster.replicas):
            if not replica.alive:
                detail = await self._restart(i)
                done.append(f"{replica.name} restarted {_kv(detail)}")
        return done


def _fault_fields(fault: Fault, names: Sequence[str]) -> dict[str, object]:
    target = fault.where(names) if fault.kind is FaultKind.KILL_SENDER else names[fault.target]
    fields: dict[str, object] = {"kind": fault.kind.value, "target": target, "hold_s": fault.hold_s}
    if fault.other >= 0:
        fields["other"] = names[fault.other]
    if fault.delay_ms:
        fields["delay_ms"] = fault.delay_ms
    return fields


def _kv(detail: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in detail.items())
