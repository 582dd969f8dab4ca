"""`messenger config show`: the effective settings of the client and of `serve`, and where each came from.

Sources, strongest first: flag, env, file, default. For the client these are
the global options, the MESSENGER_* variables and the client config file; for
`serve` the environment and the replica config file (a `serve` flag wins over
both, but `config show` has none to read).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from grpc_messenger.cli import serve_settings
from grpc_messenger.cli.serve_settings import SettingRow, Source
from grpc_messenger.cli.settings import default_config_path
from grpc_messenger.config import ClientConfig
from grpc_messenger.display import escape_control

if TYPE_CHECKING:
    from grpc_messenger.cli.settings import Globals

# ClientConfig fields whose global option or config-file key has another name
_CLIENT_PARAM = {"data_dir": "home", "tls": "use_tls", "tls_client_cert": "client_cert", "tls_client_key": "client_key"}
_CLIENT_FILE_KEY = {"data_dir": "home", "tls_client_cert": "client_cert", "tls_client_key": "client_key"}
_CLIENT_SECRETS = frozenset({"token"})
# set by programs, not by people
_CLIENT_SKIP = frozenset({"metadata"})


@click.group("config")
def config_group() -> None:
    """Inspect settings."""


@config_group.command("show")
@click.option(
    "--serve-config-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help=f"The replica config file `serve` would read [env {serve_settings.CONFIG_ENV}].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, serve_config_file: Path | None, as_json: bool) -> None:
    """Print every client and `serve` setting, its effective value and its source (flag/env/file/default)."""
    root = ctx.find_root()
    g: Globals = ctx.obj
    client_file, client_file_source = _client_config_file(root)
    client_rows = client_settings(root, g)
    serve_file, serve_file_source = serve_settings.config_file_path(serve_config_file)
    resolved = serve_settings.resolve({}, config_file=serve_file)
    report = {
        "client": {
            "config_file": _file_dict(client_file, client_file_source),
            "settings": _settings_dict(client_rows),
        },
        "serve": {
            "config_file": _file_dict(serve_file, serve_file_source),
            "settings": _settings_dict(resolved.rows()),
        },
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    out = Console(highlight=False, soft_wrap=True)
    for part, rows, path, source in (
        ("client", client_rows, client_file, client_file_source),
        ("serve", resolved.rows(), serve_file, serve_file_source),
    ):
        note = f"{path} ({source})" if path is not None else "none"
        if path is not None and not path.exists():
            note += ", absent"
        table = Table(title=f"{part} settings; config file: {note}", title_justify="left", box=None)
        for column in ("setting", "value", "source"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row.name, escape_control(row.shown), row.source)
        out.print(table)
        out.print()


def client_settings(root: click.Context, g: Globals) -> list[SettingRow]:
    """Every ClientConfig field with its effective value and source."""
    config = g.client_config()
    return [
        SettingRow(f.name, getattr(config, f.name), _client_source(root, g, f.name), secret=f.name in _CLIENT_SECRETS)
        for f in dataclasses.fields(ClientConfig)
        if f.name not in _CLIENT_SKIP
    ]


def _client_source(root: click.Context, g: Globals, name: str) -> Source:
    param = _CLIENT_PARAM.get(name, name)
    if any(p.name == param for p in root.command.params):
        given = root.get_parameter_source(param)
        if given is ParameterSource.COMMANDLINE:
            return "flag"
        if given is ParameterSource.ENVIRONMENT:
            return "env"
    if getattr(g.file, _CLIENT_FILE_KEY.get(name, name), None) is not None:
        return "file"
    return "default"


def _client_config_file(root: click.Context) -> tuple[Path, Source]:
    flag = root.params.get("config_path")
    if flag is not None:
        return Path(flag), "flag"
    path = default_config_path()
    return path, "env" if os.environ.get("MESSENGER_CONFIG") else "default"


def _file_dict(path: Path | None, source: Source | None) -> dict[str, Any] | None:
    if path is None:
        return None
    return {"path": str(path), "source": source, "exists": path.exists()}


def _settings_dict(rows: list[SettingRow]) -> dict[str, dict[str, Any]]:
    return {row.name: row.to_dict() for row in rows}
