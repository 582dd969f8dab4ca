"""Running the real `messenger` command in a subprocess, isolated from the caller's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

CLI_TIMEOUT_S = 60


def messenger(
    *args: str,
    servers: tuple[str, ...] | None = None,
    home: Path | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m grpc_messenger ARGS` with no MESSENGER_* settings but those given; never raises on exit status."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    clean["MESSENGER_CONFIG"] = "/nonexistent/grpc-messenger-test-config.toml"
    if servers is not None:
        clean["MESSENGER_SERVERS"] = ",".join(servers)
    if home is not None:
        clean["MESSENGER_HOME"] = str(home)
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "grpc_messenger", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def no_traceback(done: subprocess.CompletedProcess[str]) -> bool:
    """True when neither stream shows a Python traceback."""
    return "Traceback" not in done.stderr and "Traceback" not in done.stdout
