"""What a run means: ratios, targets met or missed, a table, JSON and a plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from grpc_messenger.bench.suite import Row

BASELINES = ("jetstream-r3", "ceiling", "legacy")


@dataclass(frozen=True, slots=True)
class Target:
    """One goal of issue 4: `row`'s figure over `baseline`'s must reach `ratio_min`."""

    label: str
    row: str
    baseline: str
    ratio_min: float
    metric: str = "msgs_per_s"  # or "p99_ms", where lower is better


TARGETS = (
    Target("messenger-w1 >= 1.0x jetstream-r3", "messenger-w1", "jetstream-r3", 1.0),
    Target("messenger-w1 >= 0.6x ceiling", "messenger-w1", "ceiling", 0.6),
    Target("messenger-w3 >= 0.8x jetstream-r3", "messenger-w3", "jetstream-r3", 0.8),
    Target("p99 messenger-w1 <= p99 jetstream-r3", "messenger-w1", "jetstream-r3", 1.0, metric="p99_ms"),
    Target("messenger-batch >= 3x jetstream-r3", "messenger-batch", "jetstream-r3", 3.0),
    Target("messenger-legacy >= 0.7x legacy", "messenger-legacy", "legacy", 0.7),
    Target("reads >= 1.0x jetstream pull consumer", "reads", "jetstream-reads", 1.0),
)
# the largest mailbox read of the run is judged (1M with --huge)
RSS_TARGET_ROWS = ("scale-mailbox-1M-read", "scale-mailbox-100k-read")
RSS_TARGET_MIB = 200.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A target with its measured ratio; `met` is None when a row is missing."""

    target: Target
    ratio: float | None
    met: bool | None


def _by_name(rows: Sequence[Row]) -> dict[str, Row]:
    return {r.name: r for r in rows if r.status == "ok"}


def ratio(rows: Sequence[Row], name: str, baseline: str) -> float | None:
    """msgs/s of `name` over msgs/s of `baseline`, when both ran."""
    by = _by_name(rows)
    a, b = by.get(name), by.get(baseline)
    if a is None or b is None or not a.msgs_per_s or not b.msgs_per_s:
        return None
    return a.msgs_per_s / b.msgs_per_s


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    """Every target, met or missed, with its ratio (as "how many times the need": >= 1 is met for p99)."""
    by = _by_name(rows)
    out: list[Verdict] = []
    for t in TARGETS:
        a, b = by.get(t.row), by.get(t.baseline)
        value: float | None = None
        if a is not None and b is not None:
            if t.metric == "p99_ms" and a.p99_ms and b.p99_ms:
                value = b.p99_ms / a.p99_ms  # > 1: ours is lower
            elif a.msgs_per_s and b.msgs_per_s:
                value = a.msgs_per_s / b.msgs_per_s
        out.append(Verdict(t, value, None if value is None else value >= t.ratio_min))
    big = next((by[name] for name in RSS_TARGET_ROWS if name in by), None)
    if big is not None:
        label = f"client RSS reading {big.messages:,}-msg mailbox < {RSS_TARGET_MIB:.0f} MiB"
        t = Target(label, big.name, "", 1.0, "rss")
        value = RSS_TARGET_MIB / big.client_peak_rss_mib if big.client_peak_rss_mib else None
        out.append(Verdict(t, value, None if value is None else value >= 1.0))
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(console: Console, rows: Sequence[Row], *, machine: dict[str, Any]) -> None:
    """The rows with ratios against each baseline, then every target met or missed."""
    table = Table(title=f"messenger bench ({machine['cpus']} CPUs, Python {machine['python']})")
    for header in ("row", "msgs", "msgs/s", "p50 ms", "p99 ms", "p99.9 ms", "client MiB", "server MiB"):
        table.add_column(header, justify="left" if header == "row" else "right")
    for baseline in BASELINES:
        table.add_column(f"vs {baseline}", justify="right")
    for row in rows:
        if row.status != "ok":
            table.add_row(row.name, "", row.status, *[""] * 8, style="yellow")
            continue
        ratios = [_fmt(ratio(rows, row.name, b), ".2f") for b in BASELINES]
        table.add_row(
            row.name,
            f"{row.messages:,}",
            _fmt(row.msgs_per_s, ",.0f"),
            _fmt(row.p50_ms, ".2f"),
            _fmt(row.p99_ms, ".2f"),
            _fmt(row.p999_ms, ".2f"),
            _fmt(row.client_peak_rss_mib, ".0f"),
            _fmt(row.server_peak_rss_mib, ".0f"),
            *ratios,
        )
    console.print(table)
    for row in rows:
        console.print(f"  {row.name}: {row.note}" if row.note else f"  {row.name}")
    targets = Table(title="targets (same run)")
    for header in ("target", "measured", "needed", "verdict"):
        targets.add_column(header)
    for v in verdicts(rows):
        verdict = "n/a" if v.met is None else "[green]met[/]" if v.met else "[red]missed[/]"
        targets.add_row(v.target.label, _fmt(v.ratio, ".2f") + "x", f"{v.target.ratio_min:.1f}x", verdict)
    console.print(targets)


def to_json(rows: Sequence[Row], *, machine: dict[str, Any], command: str) -> dict[str, Any]:
    """{"rows": [...], "targets": [...], "machine": {...}, "command": "..."}."""
    return {
        "rows": [r.as_json() for r in rows],
        "targets": [
            {"target": v.target.label, "ratio": None if v.ratio is None else round(v.ratio, 3), "met": v.met}
            for v in verdicts(rows)
        ],
        "machine": machine,
        "command": command,
    }


def to_markdown(rows: Sequence[Row], *, machine: dict[str, Any], command: str) -> str:
    """The rows and the targets as Markdown tables (for docs/performance.md)."""
    lines = [
        f"`{command}` on {machine['cpus']} CPUs, Python {machine['python']}, load average at the end"
        f" {machine['loadavg_1m']}",
        "",
        "| row | msgs | msgs/s | p50 ms | p99 ms | p99.9 ms | client MiB | server MiB | vs jetstream-r3 | vs ceiling"
        " | vs legacy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.name} | | {row.status} | | | | | | | | |")
            continue
        ratios = " | ".join(_fmt(ratio(rows, row.name, b), ".2f") for b in BASELINES)
        lines.append(
            f"| {row.name} | {row.messages:,} | {_fmt(row.msgs_per_s, ',.0f')} | {_fmt(row.p50_ms, '.1f')}"
            f" | {_fmt(row.p99_ms, '.1f')} | {_fmt(row.p999_ms, '.1f')} | {row.client_peak_rss_mib:.0f}"
            f" | {row.server_peak_rss_mib:.0f} | {ratios} |"
        )
    lines += ["", "| target | measured | needed | verdict |", "|---|--:|--:|---|"]
    for v in verdicts(rows):
        verdict = "n/a" if v.met is None else "met" if v.met else "missed"
        lines.append(f"| {v.target.label} | {_fmt(v.ratio, '.2f')}x | {v.target.ratio_min:.1f}x | {verdict} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the JSON report (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(rows: Sequence[Row], path: Path) -> Path | None:
    """Throughput and p99 of the main rows as a PNG; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shown = [r for r in rows if r.status == "ok" and r.msgs_per_s and not r.name.startswith("scale-")]
    if not shown:
        return None
    names = [r.name for r in shown]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colors = ["#2b6cb0" if n.startswith(("messenger", "reads")) else "#a0aec0" for n in names]
    left.barh(names, [r.msgs_per_s or 0 for r in shown], color=colors)
    left.set_xlabel("messages/s (higher is better)")
    left.invert_yaxis()
    right.barh(names, [r.p99_ms or 0 for r in shown], color=colors)
    right.set_xlabel("p99 latency, ms (lower is better)")
    right.set_xscale("log")
    right.invert_yaxis()
    fig.suptitle("messenger bench: same machine, same run (blue: ours)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
