"""Lying clocks: one process's wall clock skewed, or made to jump, with libfaketime.

Debian's `faketime` package ships libfaketime; preloaded into a replica or a
sender process, it shifts what that process reads as the wall clock
(CLOCK_REALTIME: `time.time()`, SQLite, UUIDv7 keys) while the monotonic clock
stays real, as it does when an operator or NTP steps a host clock (timers,
deadlines and the history's timeline keep working). The offset is read from a
file, re-read every second, so the runner can make a clock jump mid-run.

A spec names a process and its clock: `r1=+40d` (a replica 40 days ahead),
`s2=-1d` (a sender a day behind), `r3=+0>-2h@20` (right until 20 s into the
workload, then two hours back).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grpc_messenger.errors import InvalidInput

LIBFAKETIME_PATHS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
_OFFSET = r"[+-]\d+(?:\.\d+)?[smhdy]?"
_SPEC = re.compile(rf"^(?P<name>[rs]\d+)=(?P<start>{_OFFSET})(?:>(?P<jump>{_OFFSET})@(?P<at>\d+(?:\.\d+)?))?$")


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """One process's clock: an offset from the start, and optionally a jump to another offset."""

    name: str  # r1.. (replica) or s1.. (sender process)
    offset: str  # libfaketime relative offset: +40d, -1d, +0
    jump_to: str | None = None
    jump_at_s: float = 0.0  # seconds into the workload

    @classmethod
    def parse(cls, text: str) -> ClockSpec:
        """`r1=+40d`, `s2=-1d`, `r3=+0>-2h@20`."""
        m = _SPEC.match(text.strip())
        if m is None:
            raise InvalidInput(f"bad clock spec {text!r}: use NAME=OFFSET or NAME=OFFSET>OFFSET@SECONDS (r1=+40d)")
        at = m.group("at")
        return cls(name=m.group("name"), offset=m.group("start"), jump_to=m.group("jump"), jump_at_s=float(at or 0))

    def describe(self) -> str:
        """The spec as it was written."""
        jump = f">{self.jump_to}@{self.jump_at_s:g}" if self.jump_to else ""
        return f"{self.name}={self.offset}{jump}"


def libfaketime() -> Path | None:
    """Where libfaketime is installed (apt-get install faketime), or None."""
    for candidate in LIBFAKETIME_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return None


def clock_env(offset_file: Path) -> dict[str, str]:
    """The environment that makes a process read its wall clock through `offset_file`."""
    lib = libfaketime()
    if lib is None:
        raise InvalidInput("clock skew needs libfaketime: apt-get install faketime")
    return {
        "LD_PRELOAD": str(lib),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_CACHE_DURATION": "1",  # re-read the file every second: jumps take effect
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # a stepped wall clock leaves the monotonic clock alone
    }


def set_offset(offset_file: Path, offset: str) -> None:
    """Point every process reading this file at a new offset (atomically)."""
    tmp = offset_file.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    tmp.replace(offset_file)


def by_name(specs: Sequence[ClockSpec]) -> dict[str, ClockSpec]:
    """Specs keyed by process name; one spec per process."""
    found: dict[str, ClockSpec] = {}
    for spec in specs:
        if spec.name in found:
            raise InvalidInput(f"two clock specs for {spec.name}")
        found[spec.name] = spec
    return found
