"""A real 3-replica cluster on loopback, every link behind a FaultProxy.

Replica i listens on its own port. Callers never use that port: senders reach
it through `sender_proxies[i]`, readers through `reader_proxies[i]`, and
replica j (repair) through `peer_proxies[(j, i)]`. Cutting "r1 <-> r2" is
setting peer_proxies[(0, 1)] and peer_proxies[(1, 0)] to CUT.

Replicas are `python -m grpc_messenger serve` processes we start and kill by
pid only; `close()` always stops every process and proxy it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpc_messenger.chaos.proxy import FaultProxy

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
STORE_FILE = "replica.sqlite3"  # what server/replica.py names it; the chaos harness never imports the server


class ReplicaStartError(Exception):
    """A replica process exited or did not become ready."""


@dataclass(slots=True)
class ChaosReplica:
    """One replica process: restartable on the same port and data directory."""

    name: str
    data_dir: Path
    log_path: Path
    ready_path: Path
    extra_args: tuple[str, ...] = ()
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        """Where the replica itself listens (callers go through proxies)."""
        assert self.port, f"{self.name} never started"
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The process id of the current (or last) process."""
        assert self.process is not None
        return self.process.pid

    @property
    def store_file(self) -> Path:
        """The SQLite file of this replica."""
        return self.data_dir / STORE_FILE

    async def start(self, *, peers: tuple[str, ...], repair_interval_s: float | None) -> None:
        """Start (or restart on the same port) and wait until the ready file appears."""
        assert not self.alive, f"{self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_path.unlink(missing_ok=True)
        args = [
            sys.executable, "-m", "grpc_messenger", "--log-level", "info", "serve",
            "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
            "--ready-file", str(self.ready_path), "--grace", "2", *self.extra_args,
        ]  # fmt: skip
        for peer in peers:
            args += ["--peer", peer]
        if peers and repair_interval_s is not None:
            args += ["--repair-interval", str(repair_interval_s)]
        self.process = await asyncio.to_thread(_spawn, args, self.log_path, f"start {self.starts + 1}")
        self.starts += 1
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready_path.exists():
            if self.process.poll() is not None:
                raise ReplicaStartError(f"{self.name} exited at start (code {self.process.returncode}): {self.tail()}")
            if time.monotonic() > deadline:
                await self.kill()
                raise ReplicaStartError(f"{self.name} not ready within {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.02)
        address = json.loads(self.ready_path.read_text())["addresses"][0]
        self.port = int(address.rpartition(":")[2])

    async def kill(self) -> None:
        """SIGKILL (no drain) and reap."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)

    async def stop(self) -> None:
        """SIGTERM (drain), SIGKILL if it does not exit in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            await self.kill()

    def tail(self, chars: int = 600) -> str:
        """The end of this replica's log, on one line."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:].replace("\n", " | ")
        except OSError:
            return "(no log)"


def _spawn(args: list[str], log_path: Path, label: str) -> subprocess.Popen[bytes]:
    """Start a process with its output appended to log_path (returns at once)."""
    with log_path.open("ab") as log_file:
        log_file.write(f"--- {label} at {time.time():.3f}: {' '.join(args)}\n".encode())
        log_file.flush()
        return subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


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


@dataclass(slots=True)
class ChaosCluster:
    """Replicas, their proxies, and the repair settings they run with."""

    root: Path
    n: int = 3
    repair: bool = True
    repair_interval_s: float = 1.0
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
            self.replicas.append(
                ChaosReplica(
                    name=name,
                    data_dir=self.root / name,
                    log_path=self.root / f"{name}.log",
                    ready_path=self.root / f"{name}.ready.json",
                )
            )
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
