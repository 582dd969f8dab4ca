"""Start `python -m grpc_messenger serve` as a child process, wait until it is ready, stop it by PID.

The one launcher behind the tests (tests/conftest.py), the chaos harness,
`messenger cluster` and the benchmark. A `ServeProcess` is restartable on the
same port and data directory: the first start may ask for port 0, and every
later start reuses the port the replica reported in its ready record.

`prefix` runs the replica under another command, e.g. ("ip", "netns", "exec",
"ns1") or ("faketime", "-f", "+1h"). The prefix must exec the replica (those
two do, and so does `unshare` without --fork): signals go to the PID we
started, and the ready record's pid says which process really serves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grpc_messenger.errors import MessengerError
from grpc_messenger.ready import ReadyRecord

READY_TIMEOUT_S = 30.0  # a cold start on a loaded 2-core machine takes a few seconds; a broken one never ends
STOP_TIMEOUT_S = 15.0  # longer than the default --grace of the tests and harnesses
READY_POLL_S = 0.02
LOG_TAIL_CHARS = 3000


class LaunchError(MessengerError):
    """A child process exited at start or did not write its ready record in time."""


def serve_command(
    *,
    listen: str,
    data_dir: Path,
    ready_path: Path,
    log_level: str = "info",
    args: Iterable[str] = (),
    prefix: Iterable[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The argv that starts one replica listening on `listen`."""
    return [
        *prefix, python, "-m", "grpc_messenger", "--log-level", log_level, "serve",
        "--listen", listen, "--data-dir", str(data_dir), "--ready-file", str(ready_path), *args,
    ]  # fmt: skip


def wait_ready(
    process: subprocess.Popen[bytes],
    ready_path: Path,
    *,
    name: str,
    log_path: Path | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> ReadyRecord:
    """Poll until `process` wrote its ready record; LaunchError (with the log's tail) if it died or timed out.

    On a timeout the process is killed: a launcher never leaves behind a child it gave up on.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if ready_path.exists():
            try:
                return ReadyRecord.read(ready_path)
            except (OSError, ValueError) as exc:
                kill(process)
                raise LaunchError(f"{name} wrote a bad ready record: {exc}") from exc
        code = process.poll()
        if code is not None:
            raise LaunchError(f"{name} exited at start (code {code}){_tail_note(log_path)}")
        if time.monotonic() > deadline:
            kill(process)
            raise LaunchError(f"{name} not ready within {timeout_s:.0f} s{_tail_note(log_path)}")
        time.sleep(READY_POLL_S)


def kill(process: subprocess.Popen[bytes], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGKILL `process` if it still runs, and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=timeout_s)


def stop_all(processes: Iterable[ServeProcess], *, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int | None]:
    """SIGTERM every live one at once (they drain in parallel), wait with one deadline, SIGKILL stragglers.

    Returns the exit code of each by name (None: never started).
    """
    group = list(processes)
    for replica in group:
        if replica.alive:
            assert replica.process is not None
            replica.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    codes: dict[str, int | None] = {}
    for replica in group:
        if replica.process is None:
            codes[replica.name] = None
            continue
        try:
            codes[replica.name] = replica.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill(replica.process)
            codes[replica.name] = replica.process.returncode
    return codes


@dataclass(slots=True)
class ServeProcess:
    """One `messenger serve` process we own: start, wait for ready, kill, terminate, restart.

    `args` are further `serve` flags (peers, TLS, ...); change them and
    `restart()` to run the same replica differently. `env` is added to this
    process's environment. Without `log_path` the child shares our stdout and
    stderr.
    """

    data_dir: Path
    name: str = "replica"
    listen: str = "127.0.0.1:0"
    args: tuple[str, ...] = ()
    log_path: Path | None = None
    ready_path: Path | None = None
    log_level: str = "info"
    env: Mapping[str, str] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    ready: ReadyRecord | None = None
    starts: int = 0

    @property
    def ready_file(self) -> Path:
        """Where the replica writes its ready record."""
        return self.ready_path if self.ready_path is not None else self.data_dir / "ready.json"

    @property
    def address(self) -> str:
        """Where the replica listens (its first listener), as it reported when ready."""
        assert self.ready is not None, f"{self.name} never became ready"
        return self.ready.address

    @property
    def port(self) -> int:
        """The port it listens on (0 until the first start asked for any port)."""
        return int(self.listen.rpartition(":")[2])

    @property
    def pid(self) -> int:
        """The PID we started (of the current or last process)."""
        assert self.process is not None, f"{self.name} never started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The argv the next start runs."""
        return serve_command(
            listen=self.listen,
            data_dir=self.data_dir,
            ready_path=self.ready_file,
            log_level=self.log_level,
            args=self.args,
            prefix=self.prefix,
        )

    def spawn(self) -> None:
        """Start the process and return at once (`wait_ready` waits for it)."""
        assert not self.alive, f"{self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        self.ready = None
        argv = self.command()
        env = {**os.environ, **self.env} if self.env else None
        self.starts += 1
        if self.log_path is None:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} at {time.time():.3f}: {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def wait_ready(self, *, timeout_s: float = READY_TIMEOUT_S) -> ReadyRecord:
        """Wait for the ready record; from now on restarts reuse the port it reports."""
        assert self.process is not None, f"{self.name} never started"
        self.ready = wait_ready(
            self.process, self.ready_file, name=self.name, log_path=self.log_path, timeout_s=timeout_s
        )
        self.listen = self.ready.address
        return self.ready

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> ReadyRecord:
        """Spawn and wait until ready."""
        self.spawn()
        return self.wait_ready(timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL: no drain, no clean close (what was acknowledged must survive it)."""
        if self.process is not None:
            kill(self.process)

    def terminate(self, *, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM: the replica drains and closes its store; its exit code (TimeoutExpired if it hangs)."""
        assert self.process is not None, f"{self.name} never started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; its exit code."""
        if self.process is None:
            return None
        try:
            return self.terminate(timeout_s=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def restart(self, *, timeout_s: float = READY_TIMEOUT_S) -> ReadyRecord:
        """Kill (if running) and start again on the same port and data directory."""
        self.kill()
        return self.start(timeout_s=timeout_s)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the log file ("" without one)."""
        return _read_tail(self.log_path, chars)


def _read_tail(path: Path | None, chars: int) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _tail_note(log_path: Path | None) -> str:
    tail = _read_tail(log_path, LOG_TAIL_CHARS)
    return f":\n{tail}" if tail else ""
