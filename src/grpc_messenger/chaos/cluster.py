"""A real 3-replica cluster on loopback, every link behind a FaultProxy.

Replica i listens on its own port. Callers never use that port: senders reach
it through `sender_proxies[i]`, readers through `reader_proxies[i]`, and
replica j (repair) through `peer_proxies[(j, i)]`. Cutting "r1 <-> r2" is
setting peer_proxies[(0, 1)] and peer_proxies[(1, 0)] to CUT.

Replicas are `python -m grpc_messenger serve` processes started through
grpc_messenger.launch and killed by pid only; `close()` always stops every process and proxy it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from grpc_messenger import wire
from grpc_messenger.chaos.proxy import FaultProxy
from grpc_messenger.launch import LaunchError, ServeProcess
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
INFO_TIMEOUT_S = 2.0
STORE_FILE = "replica.sqlite3"  # what server/replica.py names it; the chaos harness never imports the server
GRACE_S = 2.0  # the drain a stopped replica gets: short, chaos stops replicas often

# a replica that exits at start or never becomes ready; the faults catch it by this name
ReplicaStartError = LaunchError


@dataclass(slots=True)
class ChaosReplica:
    """One replica process (through the shared launcher): restartable on the same port and data directory."""

    name: str
    data_dir: Path
    log_path: Path
    ready_path: Path
    extra_args: tuple[str, ...] = ()
    launcher: ServeProcess = field(init=False)

    def __post_init__(self) -> None:
        self.launcher = ServeProcess(
            data_dir=self.data_dir, name=self.name, log_path=self.log_path, ready_path=self.ready_path
        )

    @property
    def address(self) -> str:
        """Where the replica itself listens (callers go through proxies)."""
        return self.launcher.address

    @property
    def port(self) -> int:
        """Its port (0 before the first start)."""
        return self.launcher.port

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.launcher.alive

    @property
    def pid(self) -> int:
        """The process id of the current (or last) process."""
        return self.launcher.pid

    @property
    def starts(self) -> int:
        """How many times it was started."""
        return self.launcher.starts

    @property
    def store_file(self) -> Path:
        """The SQLite file of this replica."""
        return self.data_dir / STORE_FILE

    async def start(self, *, peers: tuple[str, ...], repair_interval_s: float | None) -> None:
        """Start (or restart on the same port) and wait until the ready record appears."""
        assert not self.alive, f"{self.name} is already running"
        args = ["--grace", str(GRACE_S), *self.extra_args]
        for peer in peers:
            args += ["--peer", peer]
        if peers and repair_interval_s is not None:
            args += ["--repair-interval", str(repair_interval_s)]
        self.launcher.args = tuple(args)
        await asyncio.to_thread(self.launcher.start)

    async def kill(self) -> None:
        """SIGKILL (no drain) and reap."""
        await asyncio.to_thread(self.launcher.kill)

    async def stop(self) -> None:
        """SIGTERM (drain), SIGKILL if it does not exit in time."""
        await asyncio.to_thread(self.launcher.stop, timeout_s=STOP_TIMEOUT_S)

    def tail(self, chars: int = 600) -> str:
        """The end of this replica's log, on one line."""
        return self.launcher.log_tail(chars).replace("\n", " | ") or "(no log)"


@dataclass(frozen=True, slots=True)
class DiskDamage:
    """What was done to a data file."""

    how: str  # "flip" or "truncate"
    file_bytes: int
    offset: int  # first flipped byte, or the new length
    count: int  # bytes flipped (0 for truncate)


def wipe_data_dir(data_dir: Path) -> int:
    """A lost disk: remove everything under data_dir; return how many files went."""
    files = sum(1 for p in data_dir.rglob("*") if p.is_file()) if data_dir.exists() else 0
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    return files


def damage_file(path: Path, rng: random.Random, *, how: str) -> DiskDamage:
    """Flip bytes in the middle third of `path`, or truncate it to 30-70 % of its size."""
    size = path.stat().st_size
    if how == "truncate":
        new_size = int(size * rng.uniform(0.3, 0.7))
        os.truncate(path, new_size)
        return DiskDamage(how="truncate", file_bytes=size, offset=new_size, count=0)
    assert how == "flip", how
    count = rng.randint(8, 64)
    start = size // 3 + rng.randrange(max(1, size // 3 - count))
    with path.open("r+b") as f:
        f.seek(start)
        data = bytearray(f.read(count))
        for i in range(len(data)):
            data[i] ^= rng.randint(1, 255)  # never 0: every byte really changes
        f.seek(start)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return DiskDamage(how="flip", file_bytes=size, offset=start, count=len(data))


async def _rebuilt(replica: ChaosReplica) -> bool:
    if not replica.alive:
        return False
    try:
        async with grpc.aio.insecure_channel(replica.address) as channel:
            info = await pb_grpc.MessengerServiceStub(channel).Info(wire.info_request(), timeout=INFO_TIMEOUT_S)
    except grpc.RpcError:
        return False
    return not info.rebuilding


@dataclass(slots=True)
class ChaosCluster:
    """Replicas, their proxies, and the repair settings they run with."""

    root: Path
    n: int = 3
    repair: bool = True
    repair_interval_s: float = 1.0
    replica_args: tuple[str, ...] = ()  # given to every replica
    replica_env: dict[str, dict[str, str]] = field(default_factory=dict)  # by name: e.g. a lying clock
    replicas: list[ChaosReplica] = field(default_factory=list)
    sender_proxies: list[FaultProxy] = field(default_factory=list)
    reader_proxies: list[FaultProxy] = field(default_factory=list)
    peer_proxies: dict[tuple[int, int], FaultProxy] = field(default_factory=dict)

    @property
    def sender_servers(self) -> tuple[str, ...]:
        """What senders are configured with."""
        return tuple(p.address for p in self.sender_proxies)

    @property
    def reader_servers(self) -> tuple[str, ...]:
        """What readers are configured with."""
        return tuple(p.address for p in self.reader_proxies)

    def all_proxies(self) -> list[FaultProxy]:
        """Every proxy, client links first."""
        return [*self.sender_proxies, *self.reader_proxies, *self.peer_proxies.values()]

    def peers_of(self, i: int) -> tuple[str, ...]:
        """The proxy addresses replica i uses to reach each other replica (empty without repair)."""
        if not self.repair:
            return ()
        return tuple(self.peer_proxies[(i, j)].address for j in range(self.n) if j != i)

    async def start(self) -> None:
        """Start proxies, then every replica, then point the proxies at the replicas."""
        for i in range(self.n):
            name = f"r{i + 1}"
            replica = ChaosReplica(
                name=name,
                data_dir=self.root / name,
                log_path=self.root / f"{name}.log",
                ready_path=self.root / f"{name}.ready.json",
                extra_args=self.replica_args,
            )
            replica.launcher.env = self.replica_env.get(name, {})
            self.replicas.append(replica)
            self.sender_proxies.append(FaultProxy(name=f"send->{name}"))
            self.reader_proxies.append(FaultProxy(name=f"read->{name}"))
        for i in range(self.n):
            for j in range(self.n):
                if i != j:
                    self.peer_proxies[(i, j)] = FaultProxy(name=f"r{i + 1}->r{j + 1}")
        for proxy in self.all_proxies():
            await proxy.start()
        await asyncio.gather(*(self.start_replica(i) for i in range(self.n)))

    async def start_replica(self, i: int) -> None:
        """(Re)start replica i on its port and point every proxy in front of it there."""
        replica = self.replicas[i]
        await replica.start(peers=self.peers_of(i), repair_interval_s=self.repair_interval_s if self.repair else None)
        for proxy in self._proxies_to(i):
            proxy.upstream = replica.address

    def _proxies_to(self, i: int) -> list[FaultProxy]:
        return [
            self.sender_proxies[i],
            self.reader_proxies[i],
            *(p for (src, dst), p in self.peer_proxies.items() if dst == i),
        ]

    async def rebuilding(self) -> list[str]:
        """Replicas not known to hold what their peers hold: rebuilding, down, or not answering Info.

        Asked on each replica's own port, past the proxies, so a cut link does not hide the answer.
        """
        rebuilt = await asyncio.gather(*map(_rebuilt, self.replicas))
        return [r.name for r, ok in zip(self.replicas, rebuilt, strict=True) if not ok]

    def heal_network(self) -> None:
        """Every proxy back to PASS."""
        for proxy in self.all_proxies():
            proxy.heal()

    async def close(self) -> None:
        """Stop every replica (SIGKILL: nothing is left to drain) and every proxy."""
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                await replica.kill()
        for proxy in self.all_proxies():
            with contextlib.suppress(Exception):
                await proxy.close()
