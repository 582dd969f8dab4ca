"""A chaos sender as its own process, so the nemesis can kill it with SIGKILL and start it again.

`python -m grpc_messenger.chaos.sender_proc SPEC_JSON INCARNATION` runs the
same `Sender` workload as the in-harness senders, over the public library,
on a home directory that outlives the process: its outbox is what must carry
a dead sender's owed deliveries on the next start. Every incarnation writes
its own history file (each line flushed before the call it announces), keyed
so no incarnation reuses another's keys. SIGTERM stops it cleanly.

`SenderProcess` is the harness's handle: start, kill (at once, or right after
the next acknowledged send: the window between a replica's ack and the
outbox write), stop, and the history files to merge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from grpc_messenger import AsyncMessenger, ClientConfig
from grpc_messenger.chaos.history import History
from grpc_messenger.chaos.workload import Sender

MESSAGES_MAX = 10_000_000
STOP_TIMEOUT_S = 30.0
AFTER_ACK_WAIT_S = 3.0
AFTER_ACK_POLL_S = 0.001
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class SenderSpec:
    """What a sender process needs; JSON on its command line."""

    name: str
    run_tag: str
    servers: tuple[str, ...]
    home: str
    mailboxes: tuple[str, ...]
    seed: int
    rate_per_s: float
    timeout_s: float
    outbox_expiry_s: float
    history_dir: str
    t0_s: float  # the harness history's clock base (CLOCK_MONOTONIC is host-wide)
    in_flight_max: int = 16

    def history_path(self, incarnation: int) -> Path:
        """The history file of one incarnation."""
        return Path(self.history_dir) / f"{self.name}-i{incarnation}.jsonl"

    def client_config(self) -> ClientConfig:
        """The library settings of this sender (also what the harness flushes its outbox with)."""
        return ClientConfig(
            servers=self.servers,
            write_quorum=1,
            timeout_s=self.timeout_s,
            data_dir=Path(self.home),
            outbox=True,
            outbox_expiry_s=self.outbox_expiry_s,
        )


async def run_sender(spec: SenderSpec, incarnation: int) -> None:
    """The process body: open the old home, announce, send until SIGTERM, close."""
    history = History(spec.history_path(incarnation), t0_s=spec.t0_s, append=True, flush_each=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with AsyncMessenger(spec.client_config()) as messenger:
            owed, expired = await messenger.outbox_owed()
            history.record(
                "sender_started",
                process=spec.name,
                incarnation=incarnation,
                pid=os.getpid(),
                outbox_owed=owed,
                outbox_expired=expired,
            )
            sender = Sender(
                name=spec.name,
                run_tag=f"{spec.run_tag}i{incarnation}",
                messenger=messenger,
                mailboxes=spec.mailboxes,
                rng=random.Random(spec.seed * 1000 + incarnation),
                history=history,
                rate_per_s=spec.rate_per_s,
                in_flight_max=spec.in_flight_max,
            )
            await sender.run(stop, messages_max=MESSAGES_MAX)
    finally:
        history.close()


class SenderProcess:
    """The harness's handle on one sender process and its incarnations."""

    def __init__(self, spec: SenderSpec, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self.env = env or {}  # added to the process's environment (a lying clock)
        self.incarnation = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        """True while the current incarnation runs."""
        return self.process is not None and self.process.poll() is None

    @property
    def history_paths(self) -> list[Path]:
        """Every incarnation's history file so far."""
        return [self.spec.history_path(i) for i in range(1, self.incarnation + 1)]

    async def start(self) -> int:
        """Start the next incarnation on the same home; wait until it announced itself; return its pid."""
        assert not self.alive
        self.incarnation += 1
        path = self.spec.history_path(self.incarnation)
        args = [sys.executable, "-m", "grpc_messenger.chaos.sender_proc", json.dumps(asdict(self.spec))]
        args.append(str(self.incarnation))
        self.process = await asyncio.to_thread(_spawn, args, self.log_path, self.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (path.exists() and path.stat().st_size > 0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                break  # the run goes on; the report shows the sender never started
            await asyncio.sleep(0.02)
        return self.process.pid

    async def kill(self, *, after_ack: bool) -> dict[str, object]:
        """SIGKILL now, or right after the next send is reported acknowledged (bounded wait)."""
        process = self.process
        if process is None or process.poll() is not None:
            return {"skipped": "not running"}
        waited_ms = 0
        if after_ack:
            path = self.spec.history_path(self.incarnation)
            started = time.monotonic()
            seen = path.stat().st_size if path.exists() else 0
            found = False
            while not found and time.monotonic() - started < AFTER_ACK_WAIT_S:
                await asyncio.sleep(AFTER_ACK_POLL_S)
                with path.open("rb") as f:
                    f.seek(seen)
                    fresh = f.read()
                found = b'"type":"ok"' in fresh
                seen += len(fresh)
            waited_ms = int((time.monotonic() - started) * 1000)
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        return {"pid": process.pid, "moment": "after_ack" if after_ack else "random", "waited_ms": waited_ms}

    async def stop(self) -> None:
        """SIGTERM: finish sends in flight and exit; SIGKILL if it does not in time."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )


def main() -> None:
    """Entry point of the sender process."""
    fields = json.loads(sys.argv[1])
    fields["servers"] = tuple(fields["servers"])
    fields["mailboxes"] = tuple(fields["mailboxes"])
    asyncio.run(run_sender(SenderSpec(**fields), int(sys.argv[2])))


if __name__ == "__main__":
    main()
