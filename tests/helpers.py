"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# The short chaos run in CI (test_chaos_run) and the check that its schedule has every
# required fault (test_chaos_checker) must agree on these.
CI_SEED = 5
CI_DURATION_S = 35.0
CI_DATA_LOSS_GAP_S = 7.0


def messenger(
    *args: str,
    servers: tuple[str, ...] | None = None,
    home: Path | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `messenger ARGS` in a child process, isolated from the caller's MESSENGER_* settings and config file."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    child_env["MESSENGER_CONFIG"] = "/nonexistent/grpc-messenger-test-config.toml"
    if servers is not None:
        child_env["MESSENGER_SERVERS"] = ",".join(servers)
    if home is not None:
        child_env["MESSENGER_HOME"] = str(home)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "grpc_messenger", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
        check=False,
    )
