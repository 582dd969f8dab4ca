"""Child processes of the benchmark: started on loopback, ready-checked, always stopped.

Every process the suite starts is owned by one `Processes` group, which stops
them (SIGTERM, then SIGKILL after a bound) by PID when the group closes, also
when the run fails. Peak RSS is read from /proc and reset between rows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from grpc_messenger.launch import LaunchError, ServeProcess, wait_ready

STOP_TIMEOUT_S = 10.0


class BenchError(Exception):
    """The benchmark could not set something up (a process would not start, ...)."""


@dataclass(slots=True)
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Processes:
    """Owns every child process of a run; `close` stops them all, by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[Child] = []

    def spawn(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> Child:
        """Start `args` with output to a log file under root."""
        log_path = self.root / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def adopt(self, name: str, process: subprocess.Popen[bytes], log_path: Path) -> Child:
        """Own a process started elsewhere (by the replica launcher): `close` stops it too."""
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, children: list[Child]) -> None:
        """SIGTERM these children, wait (bounded), SIGKILL what is left."""
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=STOP_TIMEOUT_S)
        for child in children:
            if child in self.children:
                self.children.remove(child)

    def close(self) -> None:
        """Stop every child still owned."""
        self.stop(list(self.children))


def start_python_server(procs: Processes, name: str, module_args: list[str]) -> tuple[Child, str]:
    """Start `python -m <module_args> --ready-file F`; return the child and its address."""
    ready = procs.root / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    child = procs.spawn(name, [sys.executable, "-m", *module_args, "--ready-file", str(ready)])
    try:
        record = wait_ready(child.process, ready, name=name, log_path=child.log_path)
    except LaunchError as exc:
        raise BenchError(str(exc)) from exc
    return child, record.address


def start_replicas(procs: Processes, *, n: int, tag: str) -> tuple[list[Child], tuple[str, ...]]:
    """Start n `messenger serve` replicas (SQLite default) on 127.0.0.1 port 0, through the shared launcher."""
    children: list[Child] = []
    addresses: list[str] = []
    for i in range(n):
        name = f"{tag}-replica-{i + 1}"
        replica = ServeProcess(
            data_dir=procs.root / name,
            name=name,
            args=("--grace", "2"),
            log_path=procs.root / f"{name}.log",
            ready_path=procs.root / f"{name}.ready.json",
            log_level="warning",
        )
        try:
            replica.start()
        except LaunchError as exc:
            raise BenchError(str(exc)) from exc
        finally:
            if replica.process is not None:  # owned by the group from the start, so it is always stopped
                children.append(procs.adopt(name, replica.process, replica.log_path or procs.root))
        addresses.append(replica.address)
    return children, tuple(addresses)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (the kernel picks them; far from 50051-50053)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --- memory -----------------------------------------------------------------------


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, MiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


def reset_peak_rss(pid: int) -> None:
    """Restart the VmHWM count of a process (Linux: write 5 to clear_refs); best effort."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def self_pid() -> int:
    """The benchmark's own PID (the client side of every row)."""
    return os.getpid()
