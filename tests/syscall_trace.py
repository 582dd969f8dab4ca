"""Reading an `strace -f` log: does every acknowledgement leave only after the fsync that covers it?

A kill -9 cannot show that an ack waited for its fsync (the page cache survives
a killed process, not a power cut); the order of system calls can. The trace is
taken with `strace -f -qq -s 8192 -e trace=TRACED_CALLS`, one line per call (or
an `<unfinished ...>` line at entry and a `<... resumed>` line at exit when
another thread's call came in between). strace writes lines in the order it saw
the events, so "fsync returned before the ack's sendmsg was entered" is "the
fsync's exit line comes before the sendmsg's entry line".

For each key: the first write of a page holding the key to the watched WAL file,
then the first fsync/fdatasync of that file entered after that write returned;
the ack is the first socket send whose bytes hold the key. The rule holds when
the fsync returned before the ack was entered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TRACED_CALLS = "openat,close,fsync,fdatasync,sendmsg,sendto,write,writev,pwrite64,pwritev"
STRACE_ARGS = ("strace", "-f", "-qq", "-s", "8192", "-e", f"trace={TRACED_CALLS}")

_SYNCS = {"fsync", "fdatasync"}
_FILE_WRITES = {"write", "writev", "pwrite64", "pwritev"}
_SENDS = {"sendmsg", "sendto", "write", "writev"}

_FULL = re.compile(r"^(\d+)\s+([a-z0-9_]+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. ([a-z0-9_]+) resumed>(.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
_FIRST_FD = re.compile(r"^(\d+)(?:[,)]|\s*<unfinished)")  # `fdatasync(8 <unfinished ...>` too
_OPENAT_PATH = re.compile(r'^[A-Z_]+, "((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Call:
    """One system call: where it entered and returned in the log, its fd's path, its arguments."""

    name: str
    pid: int
    entry: int  # line index of entry
    exit: int  # line index of return
    fd: int | None
    path: str | None  # the file the fd named at entry (None for sockets and unknown fds)
    args: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the trace says about one key."""

    key: str
    wal_write: int | None  # entry line of the first WAL write holding the key
    fsync: int | None  # exit line of the first WAL fsync after that write
    ack: int | None  # entry line of the first send holding the key

    @property
    def ok(self) -> bool:
        """Written to the WAL, fsynced, and only then acknowledged."""
        return self.wal_write is not None and self.fsync is not None and self.ack is not None and self.fsync < self.ack


def parse(lines: Sequence[str]) -> list[Call]:
    """The calls of a trace in entry order, each fd resolved to the file it named at the time."""
    pending: dict[int, tuple[str, int, str]] = {}  # pid -> (name, entry line, args)
    finished: list[tuple[str, int, int, int, str, str]] = []  # name, pid, entry, exit, args, result text
    for i, line in enumerate(lines):
        if m := _RESUMED.match(line):
            pid = int(m.group(1))
            started = pending.pop(pid, None)
            if started is None or started[0] != m.group(2):
                continue
            finished.append((started[0], pid, started[1], i, started[2], m.group(3)))
        elif m := _FULL.match(line):
            pid, name, rest = int(m.group(1)), m.group(2), m.group(3)
            if rest.endswith("<unfinished ...>"):
                pending[pid] = (name, i, rest)
            else:
                finished.append((name, pid, i, i, rest, rest))
    finished.sort(key=lambda c: c[2])
    # fds change meaning at open (effective on return) and close (on entry): replay both in line order
    opens: list[tuple[int, int, str]] = []  # (exit line, fd, path)
    closes: list[tuple[int, int]] = []  # (entry line, fd)
    for name, _pid, entry, exit_, args, result in finished:
        if name == "openat" and (path := _OPENAT_PATH.match(args)) and (ret := _RESULT.search(result)):
            if int(ret.group(1)) >= 0:
                opens.append((exit_, int(ret.group(1)), path.group(1)))
        elif name == "close" and (fd := _FIRST_FD.match(args)):
            closes.append((entry, int(fd.group(1))))
    changes = sorted([(at, fd, path) for at, fd, path in opens] + [(at, fd, None) for at, fd in closes])
    calls: list[Call] = []
    fd_path: dict[int, str | None] = {}
    j = 0
    for name, pid, entry, exit_, args, _result in finished:
        while j < len(changes) and changes[j][0] < entry:
            fd_path[changes[j][1]] = changes[j][2]
            j += 1
        fd_m = _FIRST_FD.match(args)
        fd = int(fd_m.group(1)) if fd_m else None
        calls.append(Call(name, pid, entry, exit_, fd, fd_path.get(fd) if fd is not None else None, args))
    return calls


def verdicts(calls: Sequence[Call], keys: Iterable[str], *, wal_suffix: str) -> list[Verdict]:
    """For each key, where its WAL write, covering fsync and first ack are (see module docstring)."""
    wal_writes = [c for c in calls if c.name in _FILE_WRITES and c.path is not None and c.path.endswith(wal_suffix)]
    wal_syncs = [c for c in calls if c.name in _SYNCS and c.path is not None and c.path.endswith(wal_suffix)]
    sends = [c for c in calls if c.name in _SENDS and c.path is None]  # an fd with no file path: a socket
    found = []
    for key in keys:
        write = next((c for c in wal_writes if key in c.args), None)
        sync = next((c for c in wal_syncs if write is not None and c.entry > write.exit), None)
        ack = next((c for c in sends if key in c.args), None)
        found.append(
            Verdict(
                key=key,
                wal_write=write.entry if write else None,
                fsync=sync.exit if sync else None,
                ack=ack.entry if ack else None,
            )
        )
    return found
