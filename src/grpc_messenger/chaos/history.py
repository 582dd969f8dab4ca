"""The history of a chaos run: every operation and its outcome, one JSON object per line.

Event types (all carry `t`, seconds since the run started, and `type`):

- invoke   {process, key, mailbox, body}   a send is about to be made
- ok       {process, key, acked, by}       send() reported success; `by` names the replicas that held it ("13": r1, r3)
- fail     {process, key, error}           send() raised QuorumNotReached (may still arrive later)
- info     {process, key, error}           any other outcome (unknown whether stored)
- deliver  {process, mailbox, key, body}   a reader was shown this message
- read_fail{process, mailbox, error}
- fault    {phase: start|end, kind, ...}   the nemesis acted
- replication {under_replicated, queued, sample}   Fetch on every replica before the final drain
- settled  {settle_s, owed}             outboxes empty and replicas agree (settle_s null: bound passed)
- resources {processes: {name: {pid, rss_kib, fds, threads}}}   sampled every few seconds
- sender_killed {process, incarnation, moment}   a sender process got SIGKILL (its sends in flight are in doubt)
- sender_started {process, incarnation, pid, outbox_owed}   a sender process (re)started on its old home
- rebuild_wait {waited_s}   a data-loss fault was held back until no replica was rebuilding
- rebuild_wait_timeout {replicas, waited_s}   ... and the wait's bound passed (the loss is outside the model)

A sender running as its own process writes its own file with the same clock
base (CLOCK_MONOTONIC is shared by every process of the host); the runner
merges the files by `t` before checking.

The checker reads nothing else, so a hand-written history tests it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


class History:
    """Appends events to a JSON-lines file and keeps running counts for progress lines."""

    def __init__(
        self,
        path: Path,
        *,
        clock_s: Callable[[], float] = time.monotonic,
        t0_s: float | None = None,
        append: bool = False,
        flush_each: bool = False,
    ) -> None:
        self.path = path
        self._clock_s = clock_s
        self._t0 = clock_s() if t0_s is None else t0_s
        self._file: IO[str] = path.open("a" if append else "w", encoding="utf-8")
        # a process that may be killed at any moment flushes each line: an `invoke` must
        # reach the file before its send can, or a delivered message would look made up
        self._flush_each = flush_each
        self.counts: dict[str, int] = {}

    @property
    def t0_s(self) -> float:
        """The clock reading the history's `t` counts from."""
        return self._t0

    def elapsed_s(self) -> float:
        """Seconds since the history began."""
        return self._clock_s() - self._t0

    def record(self, type_: str, **fields: Any) -> None:
        """Append one event."""
        event = {"t": round(self.elapsed_s(), 4), "type": type_, **fields}
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        if self._flush_each:
            self._file.flush()
        self.counts[type_] = self.counts.get(type_, 0) + 1

    def close(self) -> None:
        """Flush and close the file."""
        if not self._file.closed:
            self._file.close()


def read_history(path: Path) -> Iterator[dict[str, Any]]:
    """The events of a history file, in order."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                event: dict[str, Any] = json.loads(line)
                yield event


def merge_histories(main: Path, others: list[Path]) -> None:
    """Fold other processes' histories into `main`, every event in `t` order (stable)."""
    events = list(read_history(main))
    for path in others:
        if path.exists():
            events.extend(_complete_lines(path))
    events.sort(key=lambda e: float(e["t"]))
    with main.open("w", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps(event, separators=(",", ":")) + "\n")


def _complete_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The events of a file a killed process wrote: a torn last line is skipped."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                event: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            yield event
