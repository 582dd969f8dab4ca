"""The ready record: what a started replica tells whoever launched it.

`messenger serve --ready-file F` writes one JSON object to F once every
listener is bound and the replica answers health checks. The launcher
(grpc_messenger.launch), the tests, the chaos and bench harnesses and
`messenger cluster` all read it back through `ReadyRecord`, never as a bare
dict. This module imports nothing of ours and nothing of grpc, so a launcher
can read the record without loading the server.

Unknown fields are dropped when reading, so a newer replica never breaks an
older launcher.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ReadyRecord:
    """A replica (or a reference server of the benchmark) that is up and serving."""

    addresses: tuple[str, ...]  # every bound listener as host:port (the real port, also when asked for port 0)
    pid: int  # the serving process itself
    replica_id: str = ""  # the store's id; empty for servers that are not replicas
    metrics_address: str | None = None  # host:port of /metrics, when serving metrics
    store: str = ""  # "sqlite" or "memory"; empty for servers that are not replicas
    version: str = ""  # the package version the process runs

    def __post_init__(self) -> None:
        if not self.addresses or not all(isinstance(a, str) and a for a in self.addresses):
            raise ValueError("a ready record needs at least one address")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid <= 0:
            raise ValueError(f"a ready record needs a positive pid, not {self.pid!r}")

    @property
    def address(self) -> str:
        """The first listener: where a local client connects."""
        return self.addresses[0]

    @property
    def port(self) -> int:
        """The port of the first listener."""
        return int(self.address.rpartition(":")[2])

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReadyRecord:
        """Parse a record; unknown fields are dropped, missing required ones raise ValueError."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"ready record is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("ready record is not a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "addresses" not in values or "pid" not in values:
            raise ValueError("ready record lacks addresses or pid")
        addresses = values["addresses"]
        if not isinstance(addresses, list):
            raise ValueError("ready record addresses is not a list")
        values["addresses"] = tuple(addresses)
        for name in ("replica_id", "store", "version"):
            if not isinstance(values.get(name, ""), str):
                raise ValueError(f"ready record {name} is not a string")
        if not isinstance(values.get("metrics_address"), str | None):
            raise ValueError("ready record metrics_address is not a string")
        return cls(**values)

    def write(self, path: Path) -> None:
        """Write then rename, so a reader never sees half a record."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> ReadyRecord:
        """Read the record at `path` (OSError if absent, ValueError if malformed)."""
        return cls.from_json(path.read_text())
