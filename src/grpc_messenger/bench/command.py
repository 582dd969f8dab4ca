"""The `messenger bench` command (registered on the CLI group by cli/main.py)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console


@click.command()
@click.option("--quick", is_flag=True, help="Fewer messages, no scale rows: under 90 s (what CI runs).")
@click.option("--scale/--no-scale", default=None, help="Scale rows (replicas, mailbox size, mailbox count) [full: on].")
@click.option("--huge", is_flag=True, help="Add the 1,000,000-message mailbox to the scale rows (~6 more minutes).")
@click.option("--messages", type=click.IntRange(100, 1_000_000), help="Messages per row [10,000; quick 4,000].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the PNG goes [bench-results/bench-<time>.png].",
)
@click.option("--no-plot", is_flag=True, help="Do not draw a plot.")
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run nothing: print, plot and write the tables of a run saved with --json.",
)
@click.option(
    "--compare",
    "compare_json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A run saved with --json: add a before/after table of msgs/s and CPU per message to --markdown.",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the tables as Markdown (what docs/performance.md shows).",
)
def bench(
    quick: bool,
    scale: bool | None,
    huge: bool,
    messages: int | None,
    json_path: Path | None,
    plot_path: Path | None,
    no_plot: bool,
    markdown_path: Path | None,
    from_json: Path | None,
    compare_json: Path | None,
) -> None:
    """Measure every configuration side by side and print ratios (starts its own servers)."""
    from dataclasses import replace

    from grpc_messenger.bench import report, suite

    # SIGTERM unwinds like Ctrl-C, so the suite still stops every process it started
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, highlight=False)
    started = time.monotonic()
    workload = suite.QUICK if quick else suite.FULL
    if messages is not None:
        workload = replace(workload, messages=messages)

    def progress(line: str) -> None:
        err.print(f"[dim]{time.monotonic() - started:6.1f}s {line}[/]")

    if from_json is not None:
        saved = json.loads(from_json.read_text())
        rows = [suite.row_from_json(r) for r in saved["rows"]]
        machine, command = saved["machine"], saved["command"]
    else:
        rows = suite.run_suite(
            quick=quick, scale=(not quick) if scale is None else scale, workload=workload, progress=progress, huge=huge
        )
        machine = suite.machine()
        command = " ".join(["messenger", *(shlex.quote(a) for a in sys.argv[1:])])
    report.print_report(out, rows, machine=machine)
    if json_path is not None:
        report.write_json(json_path, report.to_json(rows, machine=machine, command=command))
        out.print(f"JSON: {json_path}")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        text = report.to_markdown(rows, machine=machine, command=command)
        if compare_json is not None:
            before = json.loads(compare_json.read_text())
            text += "\n" + report.compare_markdown(
                [suite.row_from_json(r) for r in before["rows"]],
                rows,
                before_label=f"`{before['command']}`",
                after_label=f"`{command}`",
            )
        markdown_path.write_text(text)
        out.print(f"Markdown: {markdown_path}")
    if not no_plot:
        path = plot_path or Path("bench-results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.png"
        drawn = report.plot(rows, path)
        out.print(f"plot: {drawn}" if drawn else "plot: skipped (matplotlib missing: pip install -e '.[bench]')")
    out.print(f"total {time.monotonic() - started:.0f} s")
