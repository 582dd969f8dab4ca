"""Where CLI settings come from: flag, then environment, then config file, then default.

Defaults live in one place, `ClientConfig`: a setting given nowhere is simply
not passed, so the library's own default applies.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from grpc_messenger.client.inbox import default_data_dir
from grpc_messenger.config import ClientConfig, servers_from_text
from grpc_messenger.errors import InvalidInput


def default_config_path() -> Path:
    """$MESSENGER_CONFIG, else $XDG_CONFIG_HOME/grpc-messenger/config.toml."""
    if explicit := os.environ.get("MESSENGER_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "grpc-messenger" / "config.toml"


@dataclass(frozen=True, slots=True)
class FileSettings:
    """The keys a config file may set (all optional)."""

    servers: tuple[str, ...] | None = None
    write_quorum: int | None = None
    timeout_s: float | None = None
    home: Path | None = None
    token: str | None = None
    tls: bool | None = None
    tls_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


_PATH_KEYS = ("tls_ca", "client_cert", "client_key")


def load_file(path: Path, *, required: bool) -> FileSettings:
    """Read a TOML config file; a missing optional file means no settings."""
    if not path.exists():
        if required:
            raise InvalidInput(f"config file {path} does not exist")
        return FileSettings()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"config file {path}: {exc}") from exc
    unknown = set(data) - {"servers", "write_quorum", "timeout_s", "home", "token", "tls", *_PATH_KEYS}
    if unknown:
        raise InvalidInput(f"config file {path}: unknown keys {', '.join(sorted(unknown))}")
    servers = data.get("servers")
    if isinstance(servers, str):
        servers = list(servers_from_text(servers))
    if servers is not None and not (isinstance(servers, list) and all(isinstance(s, str) for s in servers)):
        raise InvalidInput(f"config file {path}: servers must be a list of host:port strings")
    quorum = data.get("write_quorum")
    if quorum is not None and not isinstance(quorum, int):
        raise InvalidInput(f"config file {path}: write_quorum must be an integer")
    timeout = data.get("timeout_s")
    if timeout is not None and not isinstance(timeout, int | float):
        raise InvalidInput(f"config file {path}: timeout_s must be a number")
    home = data.get("home")
    if home is not None and not isinstance(home, str):
        raise InvalidInput(f"config file {path}: home must be a path")
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise InvalidInput(f"config file {path}: token must be a string")
    use_tls = data.get("tls")
    if use_tls is not None and not isinstance(use_tls, bool):
        raise InvalidInput(f"config file {path}: tls must be true or false")
    paths: dict[str, Path | None] = {}
    for name in _PATH_KEYS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"config file {path}: {name} must be a path")
        # relative paths are relative to the config file, not to where the command runs
        paths[name] = (path.parent / Path(value).expanduser()) if value else None
    return FileSettings(
        servers=tuple(servers) if servers is not None else None,
        write_quorum=quorum,
        timeout_s=float(timeout) if timeout is not None else None,
        home=Path(home).expanduser() if home else None,
        token=token,
        tls=use_tls,
        tls_ca=paths["tls_ca"],
        client_cert=paths["client_cert"],
        client_key=paths["client_key"],
    )


def resolve_servers(flag: str | None, file: FileSettings) -> tuple[str, ...] | None:
    """--servers / MESSENGER_SERVERS (click merges those), then the file; None: the library's default.

    An explicit empty list (`--servers ""`) is an error, never a silent fall-back to the local cluster.
    """
    if flag is not None:
        return servers_from_text(flag)
    return file.servers


def client_default(name: str) -> Any:
    """The default of one ClientConfig field: the only place client defaults are written down."""
    for f in fields(ClientConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Globals:
    """Options shared by the client commands (None: not given on the command line)."""

    servers: str | None
    file: FileSettings
    timeout_s: float | None
    home: Path | None
    token: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def client_config(self, *, write_quorum: int | None = None) -> ClientConfig:
        """Flag, then file; what neither sets keeps ClientConfig's default."""
        given: dict[str, Any] = {
            "servers": resolve_servers(self.servers, self.file),
            "write_quorum": write_quorum or self.file.write_quorum,
            "timeout_s": self.timeout_s or self.file.timeout_s,
            "data_dir": self.home or self.file.home,
            "token": self.token or self.file.token,
            "tls": self.tls or self.file.tls,
            "tls_ca": self.tls_ca or self.file.tls_ca,
            "tls_client_cert": self.client_cert or self.file.client_cert,
            "tls_client_key": self.client_key or self.file.client_key,
        }
        return ClientConfig(**{name: value for name, value in given.items() if value is not None})


def home_of(config: ClientConfig) -> Path:
    """The directory holding the local inbox and outbox (the library's default when unset)."""
    return config.data_dir or default_data_dir()
