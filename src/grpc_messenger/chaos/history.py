"""The history of a chaos run: every operation and its outcome, one JSON object per line.

Event types (all carry `t`, seconds since the run started, and `type`):

- invoke   {process, key, mailbox, body}   a send is about to be made
- ok       {process, key, acked}           send() reported success
- fail     {process, key, error}           send() raised QuorumNotReached (may still arrive later)
- info     {process, key, error}           any other outcome (unknown whether stored)
- deliver  {process, mailbox, key, body}   a reader was shown this message
- read_fail{process, mailbox, error}
- fault    {phase: start|end, kind, ...}   the nemesis acted
- replication {under_replicated, queued, sample}   Fetch on every replica before the final drain
- settled  {settle_s, owed}             outboxes empty and replicas agree (settle_s null: bound passed)

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

    def __init__(self, path: Path, *, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock_s = clock_s
        self._t0 = clock_s()
        self._file: IO[str] = path.open("w", encoding="utf-8")
        self.counts: dict[str, int] = {}

    def elapsed_s(self) -> float:
        """Seconds since the history began."""
        return self._clock_s() - self._t0

    def record(self, type_: str, **fields: Any) -> None:
        """Append one event."""
        event = {"t": round(self.elapsed_s(), 4), "type": type_, **fields}
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
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
