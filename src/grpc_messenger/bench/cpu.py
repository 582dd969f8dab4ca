"""CPU time per process, read from /proc: what each process spent on a row's measured part.

CPU per message is steady on a shared machine where msgs/s is not: a row that
waits for the cores gets fewer messages through, but each message costs the
same CPU. The figure is user + system time (utime + stime in /proc/PID/stat,
every thread of the process), read before and after the measured part of a
row (never the warm-up), for the client (the bench process itself) and for
each server process of the row, replicas and nats-server alike. An async
row waits for the servers to go idle before the block closes, so work still
in flight when the last call returned (other replicas at W=1) is counted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

CLIENT = "client"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# servers are idle again when they spent at most one tick over this interval (an idle replica: ~1 ms/s)
SETTLE_INTERVAL_S = 0.2
SETTLE_MAX_S = 10.0


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` in seconds (all its threads); None if it is gone or /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


@dataclass(slots=True)
class CpuMeter:
    """Measures the CPU seconds of named processes over one `measuring()` block.

    A workload opens the block around its measured part only (after warm-up,
    connections and set-up); `spent_s` is then per process name.
    """

    pids: Mapping[str, int]
    spent_s: dict[str, float] = field(default_factory=dict)

    async def settle(self) -> None:
        """Wait (bounded) until the server processes stop spending CPU.

        A row ends when its last call returned, but with W=1 the other
        replicas may still be storing the last batches (and JetStream
        followers applying them, or the stream processing acks): their CPU is
        part of this row, so the measured block closes only after it.
        Waits with asyncio, so the client keeps sending what it still owes.
        """
        servers = [pid for name, pid in self.pids.items() if name != CLIENT]
        deadline = time.monotonic() + SETTLE_MAX_S
        last = _total(servers)
        while time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_INTERVAL_S)
            now = _total(servers)
            if now - last <= 1.0 / _TICKS_PER_S:
                return
            last = now

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """CPU spent by each process between entering and leaving the block (added up if entered twice)."""
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        try:
            yield
        finally:
            for name, pid in self.pids.items():
                start, end = before[name], cpu_seconds(pid)
                if start is not None and end is not None:
                    self.spent_s[name] = self.spent_s.get(name, 0.0) + max(0.0, end - start)


def _total(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


@dataclass(frozen=True, slots=True)
class CpuPerMessage:
    """Microseconds of CPU per message: the client's, and each server process's by name."""

    client_us: float | None
    servers_us: tuple[tuple[str, float], ...]

    @property
    def server_max_us(self) -> float | None:
        """The busiest server process: what each replica must stay under."""
        return max((us for _, us in self.servers_us), default=None)

    @property
    def server_total_us(self) -> float | None:
        """All server processes of the row together."""
        return sum(us for _, us in self.servers_us) if self.servers_us else None


def per_message(spent_s: Mapping[str, float], messages: int) -> CpuPerMessage:
    """CPU seconds by process over `messages` as microseconds per message (nothing without messages)."""
    if messages <= 0:
        return CpuPerMessage(None, ())
    client = spent_s.get(CLIENT)
    servers = tuple((name, s * 1e6 / messages) for name, s in spent_s.items() if name != CLIENT)
    return CpuPerMessage(None if client is None else client * 1e6 / messages, servers)


NO_CPU = CpuPerMessage(None, ())
