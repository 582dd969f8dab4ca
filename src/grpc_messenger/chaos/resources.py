"""Resource use of a run's processes over time: RSS, open file descriptors, threads.

A long run passes only if these stay flat: a leak (a channel, a task, a file
per fault) shows as a line that keeps climbing. Samples come from /proc (Linux);
elsewhere they are skipped. `trend` is pure: samples in, a verdict out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# A series grows when its last stretch sits this much above its first (after warm-up).
GROWTH_RATIO_MAX = 1.5
GROWTH_ABS = {"rss_kib": 64 * 1024, "fds": 32, "threads": 8}  # below these a rise is noise, not a leak
WINDOW_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class Sample:
    """One process at one moment."""

    pid: int
    rss_kib: int
    fds: int
    threads: int


def sample(pid: int, proc: Path = PROC) -> Sample | None:
    """Read one process's figures from /proc; None if it is gone (or there is no /proc)."""
    try:
        status = (proc / str(pid) / "status").read_text()
        fds = len(os.listdir(proc / str(pid) / "fd"))
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])
    threads = int(fields.get("Threads", "0"))
    return Sample(pid=pid, rss_kib=rss_kib, fds=fds, threads=threads)


@dataclass(frozen=True, slots=True)
class Trend:
    """One process's series of one figure: start, end and peak, and whether it kept growing."""

    process: str
    figure: str
    samples: int
    first: float  # median of the first window after warm-up
    last: float  # median of the last window
    peak: int

    @property
    def growing(self) -> bool:
        """The last stretch sits well above the first (by ratio and by an absolute margin)."""
        rise = self.last - self.first
        return rise > GROWTH_ABS[self.figure] and self.last > self.first * GROWTH_RATIO_MAX

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "process": self.process,
            "figure": self.figure,
            "samples": self.samples,
            "first": self.first,
            "last": self.last,
            "peak": self.peak,
            "growing": self.growing,
        }


def _median(values: Sequence[int]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def trends(events: Iterable[Mapping[str, Any]], *, warmup_fraction: float = 0.1) -> list[Trend]:
    """Per process and figure: first window vs last window of its `resources` samples.

    A replica restarted by a fault is a new process; its series restarts with
    it, so a replica is judged on the samples of its longest-lived pid.
    """
    series: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for event in events:
        if event["type"] != "resources":
            continue
        for process, figures in event["processes"].items():
            series.setdefault((process, int(figures["pid"])), []).append(figures)
    longest: dict[str, list[Mapping[str, Any]]] = {}
    for (process, _pid), rows in series.items():
        if len(rows) > len(longest.get(process, [])):
            longest[process] = rows
    found = []
    for process, rows in sorted(longest.items()):
        body = rows[int(len(rows) * warmup_fraction) :] or rows
        window = max(1, int(len(body) * WINDOW_FRACTION))
        for figure in ("rss_kib", "fds", "threads"):
            values = [int(r[figure]) for r in body]
            found.append(
                Trend(
                    process=process,
                    figure=figure,
                    samples=len(values),
                    first=_median(values[:window]),
                    last=_median(values[-window:]),
                    peak=max(values),
                )
            )
    return found
