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
    """One goal: `row`'s figure over `baseline`'s must reach `need` (a ratio), or a figure must stay <= `need`.

    `metric` is "msgs_per_s" (a ratio against `baseline` in the same run,
    higher is better), or an absolute figure of `row` where lower is better:
    "server_cpu_us" (the busiest server process's CPU per message),
    "client_cpu_us", "client_rss_mib".
    """

    label: str
    row: str
    baseline: str
    need: float
    metric: str = "msgs_per_s"

    @property
    def unit(self) -> str:
        return {"msgs_per_s": "x", "server_cpu_us": "us", "client_cpu_us": "us", "client_rss_mib": "MiB"}[self.metric]

    @property
    def needed(self) -> str:
        """The bound as written in the tables (">= 1.0x", "<= 30 us")."""
        return f">= {self.need:.1f}x" if self.metric == "msgs_per_s" else f"<= {self.need:.0f} {self.unit}"


CPU_REPLICA_US_MAX = 30.0
CPU_CLIENT_US_MAX = 40.0
RSS_TARGET_MIB = 200.0

TARGETS = (
    Target("messenger-w1 >= 1.0x jetstream-r3 (with msg ids)", "messenger-w1", "jetstream-r3", 1.0),
    Target("messenger-w1 >= 0.6x ceiling", "messenger-w1", "ceiling", 0.6),
    Target("messenger-w2 >= 1.0x jetstream-r3-sync", "messenger-w2", "jetstream-r3-sync", 1.0),
    Target("messenger-w3 >= 0.8x jetstream-r3", "messenger-w3", "jetstream-r3", 0.8),
    Target("messenger-batch >= 3x jetstream-r3", "messenger-batch", "jetstream-r3", 3.0),
    Target("messenger-legacy >= 0.7x legacy", "messenger-legacy", "legacy", 0.7),
    Target("reads >= 1.0x jetstream pull consumer with acks", "reads", "jetstream-reads", 1.0),
    Target(
        f"replica CPU per message in messenger-w1 <= {CPU_REPLICA_US_MAX:.0f} us",
        "messenger-w1",
        "",
        CPU_REPLICA_US_MAX,
        "server_cpu_us",
    ),
    Target(
        f"client CPU per message in messenger-w1 <= {CPU_CLIENT_US_MAX:.0f} us",
        "messenger-w1",
        "",
        CPU_CLIENT_US_MAX,
        "client_cpu_us",
    ),
)
# the largest mailbox read of the run is judged (1M with --huge; without it, the largest there is)
RSS_TARGET_ROWS = ("scale-mailbox-1M-read", "scale-mailbox-100k-read")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A target with what was measured (a ratio, or the figure itself); `met` is None when a row is missing."""

    target: Target
    measured: float | None
    met: bool | None

    @property
    def shown(self) -> str:
        """The measured figure with its unit ("0.83x", "24.1 us", "-")."""
        if self.measured is None:
            return "-"
        if self.target.metric == "msgs_per_s":
            return f"{self.measured:.2f}x"
        return f"{self.measured:.1f} {self.target.unit}"


def _by_name(rows: Sequence[Row]) -> dict[str, Row]:
    return {r.name: r for r in rows if r.status == "ok"}


def ratio(rows: Sequence[Row], name: str, baseline: str) -> float | None:
    """msgs/s of `name` over msgs/s of `baseline`, when both ran."""
    by = _by_name(rows)
    a, b = by.get(name), by.get(baseline)
    if a is None or b is None or not a.msgs_per_s or not b.msgs_per_s:
        return None
    return a.msgs_per_s / b.msgs_per_s


def _figure(row: Row, metric: str) -> float | None:
    if metric == "server_cpu_us":
        return row.cpu.server_max_us
    if metric == "client_cpu_us":
        return row.cpu.client_us
    if metric == "client_rss_mib":
        return row.client_peak_rss_mib or None
    raise ValueError(metric)


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    """Every target, met or missed, with its measured ratio or figure."""
    by = _by_name(rows)
    targets = list(TARGETS)
    big = next((by[name] for name in RSS_TARGET_ROWS if name in by), None)
    if big is not None:
        label = f"client RSS reading a {big.messages:,}-message mailbox < {RSS_TARGET_MIB:.0f} MiB"
        targets.append(Target(label, big.name, "", RSS_TARGET_MIB, "client_rss_mib"))
    else:
        label = f"client RSS reading a 1,000,000-message mailbox < {RSS_TARGET_MIB:.0f} MiB (full run, --huge)"
        targets.append(Target(label, RSS_TARGET_ROWS[0], "", RSS_TARGET_MIB, "client_rss_mib"))
    out: list[Verdict] = []
    for t in targets:
        a = by.get(t.row)
        value: float | None = None
        if t.metric == "msgs_per_s":
            value = ratio(rows, t.row, t.baseline)
        elif a is not None:
            value = _figure(a, t.metric)
        met = None if value is None else value >= t.need if t.metric == "msgs_per_s" else value <= t.need
        out.append(Verdict(t, value, met))
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _servers_us(row: Row) -> str:
    """Each server process's CPU per message, in process-name order ("31/30/29")."""
    return "/".join(f"{us:.0f}" for _, us in sorted(row.cpu.servers_us)) or "-"


HEADERS = (
    "row",
    "msgs",
    "msgs/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "client MiB",
    "server MiB",
    "CPU us/msg client",
    "CPU us/msg servers",
    *(f"vs {b}" for b in BASELINES),
)


def _cells(rows: Sequence[Row], row: Row, *, latency: str) -> list[str]:
    ratios = [_fmt(ratio(rows, row.name, b), ".2f") for b in BASELINES]
    return [
        row.name,
        f"{row.messages:,}",
        _fmt(row.msgs_per_s, ",.0f"),
        _fmt(row.p50_ms, latency),
        _fmt(row.p99_ms, latency),
        _fmt(row.p999_ms, latency),
        f"{row.client_peak_rss_mib:.0f}",
        f"{row.server_peak_rss_mib:.0f}",
        _fmt(row.cpu.client_us, ".0f"),
        _servers_us(row),
        *ratios,
    ]


def print_report(console: Console, rows: Sequence[Row], *, machine: dict[str, Any]) -> None:
    """The rows with CPU per message and ratios against each baseline, then every target met or missed."""
    table = Table(title=f"messenger bench ({machine['cpus']} CPUs, Python {machine['python']})")
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "row" else "right", no_wrap=header == "row")
    for row in rows:
        if row.status != "ok":
            table.add_row(row.name, "", row.status, *[""] * (len(HEADERS) - 3), style="yellow")
            continue
        table.add_row(*_cells(rows, row, latency=".2f"))
    console.print(table)
    for row in rows:
        console.print(f"  {row.name}: {row.note}" if row.note else f"  {row.name}")
    targets = Table(title="targets (same run)")
    for header in ("target", "measured", "needed", "verdict"):
        targets.add_column(header)
    for v in verdicts(rows):
        verdict = "n/a" if v.met is None else "[green]met[/]" if v.met else "[red]missed[/]"
        targets.add_row(v.target.label, v.shown, v.target.needed, verdict)
    console.print(targets)


def to_json(rows: Sequence[Row], *, machine: dict[str, Any], command: str) -> dict[str, Any]:
    """{"rows": [...], "targets": [...], "machine": {...}, "command": "..."}.

    A target's `measured` is a ratio for "x" targets and the figure itself
    otherwise (`unit`); `ratio` is kept for the ratio targets.
    """
    targets = []
    for v in verdicts(rows):
        measured = None if v.measured is None else round(v.measured, 3)
        targets.append(
            {
                "target": v.target.label,
                "measured": measured,
                "unit": v.target.unit,
                "needed": v.target.needed,
                "ratio": measured if v.target.metric == "msgs_per_s" else None,
                "met": v.met,
            }
        )
    return {"rows": [r.as_json() for r in rows], "targets": targets, "machine": machine, "command": command}


def to_markdown(rows: Sequence[Row], *, machine: dict[str, Any], command: str) -> str:
    """The rows, CPU per message by process and the targets as Markdown tables (for docs/performance.md)."""
    lines = [
        f"`{command}` on {machine['cpus']} CPUs, Python {machine['python']}, load average at the end"
        f" {machine['loadavg_1m']}",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "--:|" * (len(HEADERS) - 1),
    ]
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.name} | | {row.status} |" + " |" * (len(HEADERS) - 3))
            continue
        lines.append("| " + " | ".join(_cells(rows, row, latency=".1f")) + " |")
    lines += ["", "| target | measured | needed | verdict |", "|---|--:|--:|---|"]
    for v in verdicts(rows):
        verdict = "n/a" if v.met is None else "met" if v.met else "missed"
        lines.append(f"| {v.target.label} | {v.shown} | {v.target.needed} | {verdict} |")
    return "\n".join(lines) + "\n"


def compare_markdown(before: Sequence[Row], after: Sequence[Row], *, before_label: str, after_label: str) -> str:
    """msgs/s and CPU per message of every row in two runs, side by side (Markdown)."""
    old = _by_name(before)
    lines = [
        f'before: {before_label}; after: {after_label}. CPU in us per message; "busiest" is the server process'
        ' that spent the most, "all" adds up every server process of the row.',
        "",
        "| row | msgs/s before | msgs/s after | client before | client after | busiest server before"
        " | busiest server after | all servers before | all servers after |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in after:
        was = old.get(row.name)
        if row.status != "ok" or was is None:
            continue
        cells = [
            _fmt(was.msgs_per_s, ",.0f"),
            _fmt(row.msgs_per_s, ",.0f"),
            _fmt(was.cpu.client_us, ".0f"),
            _fmt(row.cpu.client_us, ".0f"),
            _fmt(was.cpu.server_max_us, ".0f"),
            _fmt(row.cpu.server_max_us, ".0f"),
            _fmt(was.cpu.server_total_us, ".0f"),
            _fmt(row.cpu.server_total_us, ".0f"),
        ]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the JSON report (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(rows: Sequence[Row], path: Path) -> Path | None:
    """Throughput, p99 and CPU per message of the main rows as a PNG; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    except ImportError:
        return None
    shown = [r for r in rows if r.status == "ok" and r.msgs_per_s and not r.name.startswith("scale-")]
    if not shown:
        return None
    names = [r.name for r in shown]
    fig, (left, right, cpu) = plt.subplots(1, 3, figsize=(18, 5.5))
    colors = ["#2b6cb0" if n.startswith(("messenger", "reads")) else "#a0aec0" for n in names]
    left.barh(names, [r.msgs_per_s or 0 for r in shown], color=colors)
    left.set_xlabel("messages/s (higher is better)")
    left.invert_yaxis()
    right.barh(names, [r.p99_ms or 0 for r in shown], color=colors)
    right.set_xlabel("p99 latency, ms (lower is better)")
    right.set_xscale("log")
    # plain numbers at 1, 2 and 5 of each decade: labelled minor ticks run into each other
    right.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    right.xaxis.set_major_formatter(ScalarFormatter())
    right.xaxis.set_minor_formatter(NullFormatter())
    right.invert_yaxis()
    clients = [r.cpu.client_us or 0.0 for r in shown]
    servers = [r.cpu.server_total_us or 0.0 for r in shown]
    cpu.barh(names, clients, color="#ed8936", label="client")
    cpu.barh(names, servers, left=clients, color="#4a5568", label="servers")
    # the unary legacy rows cost ~10x the others: clip them, with their figure written beside
    totals = [c + s for c, s in zip(clients, servers, strict=True)]
    batched = [t for r, t in zip(shown, totals, strict=True) if "legacy" not in r.name] or totals
    limit = 1.3 * max(batched, default=0.0)
    if limit > 0:
        cpu.set_xlim(0, limit)
        for i, total in enumerate(totals):
            if total > limit:
                cpu.text(limit * 0.98, i, f"{total:,.0f} >", ha="right", va="center", color="white", fontsize=8)
    cpu.set_xlabel("CPU us per message: client + every server process (lower is better)")
    cpu.legend(loc="lower right")
    cpu.invert_yaxis()
    fig.suptitle("messenger bench: same machine, same run (blue: ours)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
