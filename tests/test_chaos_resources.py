"""Resource sampling of chaos runs: /proc figures, and the flat-or-growing verdict on a series."""

from __future__ import annotations

import os
from typing import Any

import pytest

from grpc_messenger.chaos.resources import sample, trends


def _events(rss_kib: list[int], *, pid: int = 10, process: str = "client") -> list[dict[str, Any]]:
    return [
        {"type": "resources", "t": i, "processes": {process: {"pid": pid, "rss_kib": r, "fds": 20, "threads": 10}}}
        for i, r in enumerate(rss_kib)
    ]


def test_sample_reads_this_process() -> None:
    found = sample(os.getpid())
    if found is None:
        pytest.skip("no /proc here")
    assert found.rss_kib > 0
    assert found.fds > 0
    assert found.threads >= 1


def test_sample_of_a_gone_process_is_none() -> None:
    assert sample(2**22 + 12345) is None


def test_a_flat_series_is_not_growing() -> None:
    found = {t.figure: t for t in trends(_events([70_000 + (i % 7) * 100 for i in range(100)]))}
    assert not any(t.growing for t in found.values())
    assert found["rss_kib"].peak == 70_600


def test_a_steady_climb_is_growing() -> None:
    found = {t.figure: t for t in trends(_events([70_000 + i * 2_000 for i in range(100)]))}
    assert found["rss_kib"].growing
    assert not found["fds"].growing


def test_a_restarted_replica_is_judged_on_its_longest_lived_process() -> None:
    # a short-lived start-up process with little memory must not read as growth
    events = _events([13_000, 14_000], pid=1, process="r1") + _events([70_000] * 50, pid=2, process="r1")
    found = {t.figure: t for t in trends(events)}
    assert found["rss_kib"].samples == 45  # the longest pid's series after warm-up
    assert not found["rss_kib"].growing
