"""A replica in a private mount namespace with a small tmpfs over its data directory.

The tmpfs exists only inside that namespace: it disappears with the replica and
nothing outside sees it. `mount_namespace_unavailable` says why a machine cannot
do this (no unshare, no privilege), so tests skip with the reason.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from grpc_messenger.launch import READY_TIMEOUT_S

PROBE_TIMEOUT_S = 10.0


def tmpfs_prefix(mount_point: Path, size_bytes: int) -> tuple[str, ...]:
    """A command prefix: new mount namespace, tmpfs of `size_bytes` over `mount_point`, then exec the rest."""
    script = 'mount -t tmpfs -o "size=$1" tmpfs "$0" && shift && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(mount_point), str(size_bytes))


def mount_namespace_unavailable(scratch: Path) -> str:
    """Why a private tmpfs cannot be mounted here ("" when it can)."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = scratch / "mount-probe"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            [*tmpfs_prefix(probe, 1024 * 1024), "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"unshare --mount failed (needs root or CAP_SYS_ADMIN): {done.stderr.strip()[:200]}"
    return ""


class PrefixedReplica:
    """A replica started under a command prefix (stand-in until the shared launcher takes a prefix)."""

    def __init__(self, process: subprocess.Popen[bytes], ready: dict[str, object]) -> None:
        self.process = process
        self.ready = ready

    @property
    def pid(self) -> int:
        return int(str(self.ready["pid"]))

    @property
    def address(self) -> str:
        addresses = self.ready["addresses"]
        assert isinstance(addresses, list)
        return str(addresses[0])

    @property
    def metrics(self) -> str:
        return str(self.ready.get("metrics") or self.ready.get("metrics_address"))

    def terminate(self, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def spawn_replica(
    data_dir: Path, ready: Path, log: Path, *, prefix: tuple[str, ...], args: tuple[str, ...] = ()
) -> PrefixedReplica:
    """Start `messenger serve` under `prefix` on 127.0.0.1 port 0 and wait for its ready file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        *prefix, sys.executable, "-m", "grpc_messenger", "--log-level", "info", "serve",
        "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--ready-file", str(ready), "--grace", "5", *args,
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=10)
            raise RuntimeError(f"replica not ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    return PrefixedReplica(process, json.loads(ready.read_text()))
