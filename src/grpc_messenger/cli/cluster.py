"""`messenger cluster`: run N local replicas as child processes, stop them all cleanly.

Each replica is a real `messenger serve` process, so killing one (to see reads
go on without it) is exactly what happens on a real host.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grpc_messenger.errors import MessengerError

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """Where one local replica listens and keeps its data."""

    name: str
    listen: str
    data_dir: Path
    peers: tuple[str, ...] = ()

    def serve_args(self, *, store: str) -> list[str]:
        """The `messenger serve` arguments that (re)start this replica."""
        peer_args = [arg for peer in self.peers for arg in ("--peer", peer)]
        return ["serve", "--listen", self.listen, "--data-dir", str(self.data_dir), "--store", store, *peer_args]


@dataclass(slots=True)
class RunningReplica:
    """A started replica process."""

    spec: ReplicaSpec
    process: subprocess.Popen[bytes]
    ready_file: Path

    @property
    def address(self) -> str:
        """Where it really listens (differs from spec.listen when that asked for port 0)."""
        return str(ready_info(self)["addresses"][0])  # type: ignore[index]


def plan(*, replicas: int, host: str, base_port: int, data_dir: Path) -> list[ReplicaSpec]:
    """The specs of a local cluster: consecutive ports, one data directory each."""
    if not 1 <= replicas <= 9:
        raise MessengerError("a local cluster has 1 to 9 replicas")
    if not 0 <= base_port <= 65535 - replicas:
        raise MessengerError(f"base port {base_port} leaves no room for {replicas} replicas")
    listen_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    # base port 0: every replica takes any free port (tests, several clusters on one
    # host); their addresses are unknown up front, so they start without repair peers
    listens = [f"{listen_host}:{base_port + i if base_port else 0}" for i in range(replicas)]
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else listen_host
    connects = [f"{connect_host}:{base_port + i}" for i in range(replicas)] if base_port else []
    return [
        ReplicaSpec(
            name=f"replica-{i + 1}",
            listen=listens[i],
            data_dir=data_dir / f"replica-{i + 1}",
            peers=tuple(c for j, c in enumerate(connects) if j != i),
        )
        for i in range(replicas)
    ]


def start(specs: list[ReplicaSpec], *, store: str, log_level: str) -> list[RunningReplica]:
    """Start every replica and wait until each has written its ready file."""
    running: list[RunningReplica] = []
    try:
        for spec in specs:
            spec.data_dir.mkdir(parents=True, exist_ok=True)
            ready = spec.data_dir / "ready.json"
            ready.unlink(missing_ok=True)
            args = [sys.executable, "-m", "grpc_messenger", "--log-level", log_level, *spec.serve_args(store=store)]
            process = subprocess.Popen([*args, "--ready-file", str(ready)], stdin=subprocess.DEVNULL)
            running.append(RunningReplica(spec, process, ready))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for replica in running:
            while not replica.ready_file.exists():
                if replica.process.poll() is not None:
                    raise MessengerError(f"{replica.spec.name} exited at start (code {replica.process.returncode})")
                if time.monotonic() > deadline:
                    raise MessengerError(f"{replica.spec.name} did not start within {READY_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
    except BaseException:
        stop(running)
        raise
    return running


def ready_info(replica: RunningReplica) -> dict[str, object]:
    """What the replica wrote when it became ready (addresses, id, pid)."""
    info: dict[str, object] = json.loads(replica.ready_file.read_text())
    return info


def stop(running: list[RunningReplica]) -> dict[str, int | None]:
    """SIGTERM every live replica (they drain), wait, SIGKILL stragglers; exit codes by name."""
    for replica in running:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for replica in running:
        try:
            codes[replica.spec.name] = replica.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            replica.process.kill()
            codes[replica.spec.name] = replica.process.wait()
    return codes


def supervise(running: list[RunningReplica], *, on_exit: Callable[[RunningReplica, int], None]) -> None:
    """Block until SIGINT/SIGTERM; report replicas that die meanwhile (the rest go on)."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    reported: set[str] = set()
    try:
        while not stopping:
            for replica in running:
                code = replica.process.poll()
                if code is not None and replica.spec.name not in reported:
                    reported.add(replica.spec.name)
                    on_exit(replica, code)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
