"""A replica in a private mount namespace with a small tmpfs over its data directory.

The tmpfs exists only inside that namespace: it disappears with the replica and
nothing outside sees it. `mount_namespace_unavailable` says why a machine cannot
do this (no unshare, no privilege), so tests skip with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
