"""`messenger serve`: run one replica; every option derived from ServerConfig (cli/serve_settings.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from grpc_messenger.cli import serve_settings
from grpc_messenger.config import DEFAULT_PORTS


@click.command()
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Replica config file (TOML; keys are the setting names, see `messenger config show`) "
    f"[env {serve_settings.CONFIG_ENV}].",
)
@click.option("--ip", help="Original form: host to listen on (with --port).")
@click.option("--port", type=click.IntRange(0, 65535), help="Original form: port to listen on (with --ip).")
@serve_settings.serve_options
def serve(config_file: Path | None, ip: str | None, port: int | None, **flags: Any) -> None:
    """Run one replica until SIGTERM or Ctrl-C (then drain and stop cleanly).

    Each setting comes from its flag, else its environment variable, else the
    replica config file, else its default; `messenger config show` prints them
    all with their source.
    """
    from grpc_messenger.server.replica import run_replica

    if ip is not None or port is not None:
        # the original form adds one listener to those given with --listen
        host = ip or "[::]"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        flags["listen"] = (*(flags.get("listen") or ()), f"{host}:{DEFAULT_PORTS[0] if port is None else port}")
    path, _ = serve_settings.config_file_path(config_file)
    resolved = serve_settings.resolve(flags, config_file=path)
    asyncio.run(run_replica(resolved.config))
