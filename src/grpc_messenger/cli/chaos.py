"""`messenger chaos`: run the fault-injection suite and print the checker's report."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
from pathlib import Path

import click

from grpc_messenger.chaos import SCENARIOS, ChaosConfig, ChaosResult, run_chaos
from grpc_messenger.chaos.clocks import ClockSpec
from grpc_messenger.chaos.runner import report_json


@click.command("chaos")
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=1, max=24 * 3600),
    default=60.0,
    show_default=True,
    help="Seconds of workload under faults (settling and checking come after).",
)
@click.option("--seed", type=int, help="Seed of the fault schedule and workload [default: random, printed].")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report here."
)
@click.option(
    "--scenario",
    type=click.Choice(sorted(SCENARIOS)),
    default="mixed",
    show_default=True,
    help="Which faults: mixed (all kinds), or a focused one.",
)
@click.option("--senders", type=click.IntRange(1, 64), default=4, show_default=True, help="Concurrent sending clients.")
@click.option("--readers", type=click.IntRange(1, 64), default=2, show_default=True, help="Concurrent reading clients.")
@click.option(
    "--mailboxes",
    type=click.IntRange(1, 100_000),
    default=40,
    show_default=True,
    help="Distinct recipient mailboxes the senders spread over.",
)
@click.option(
    "--rate",
    "rate_per_s",
    type=click.FloatRange(min=1, max=100_000),
    default=150.0,
    show_default=True,
    help="Messages per second, all senders together.",
)
@click.option(
    "--in-flight",
    "in_flight_max",
    type=click.IntRange(1, 4096),
    default=16,
    show_default=True,
    help="Sends in flight per sender; with a high --rate, what bounds the load (full speed: --rate 100000).",
)
@click.option(
    "--settle-max",
    "settle_max_s",
    type=click.FloatRange(min=1, max=3600),
    default=60.0,
    show_default=True,
    help="Bound on waiting for outboxes and repair after the faults stop.",
)
@click.option(
    "--repair-interval",
    "repair_interval_s",
    type=click.FloatRange(min=0.1, max=600),
    default=1.0,
    show_default=True,
    help="Passed to every replica's --repair-interval.",
)
@click.option(
    "--data-loss-gap",
    "data_loss_gap_s",
    type=click.FloatRange(min=0, max=3600),
    default=10.0,
    show_default=True,
    help="At most one lost disk or damaged file per this many seconds (repair must keep up).",
)
@click.option(
    "--sample-interval",
    "sample_interval_s",
    type=click.FloatRange(min=0.5, max=600),
    default=5.0,
    show_default=True,
    help="Seconds between samples of RSS, open fds and threads of the clients and each replica.",
)
@click.option(
    "--sender-processes",
    is_flag=True,
    help="Senders in their own processes (SIGKILLed and restarted on their homes by kill_sender faults).",
)
@click.option(
    "--clock",
    "clocks",
    multiple=True,
    metavar="NAME=OFFSET[>OFFSET@S]",
    help="A lying clock (libfaketime): r1=+40d, s2=-1d (needs --sender-processes), r3=+0>-2h@20 (jumps at 20 s).",
)
@click.option(
    "--tombstone-grace",
    "tombstone_grace_s",
    type=click.FloatRange(min=1),
    help="Passed to every replica's --tombstone-grace [default: the replica's own, 30 days].",
)
@click.option("--no-outbox", is_flag=True, help="Senders without the durable outbox (hinted hand-off).")
@click.option("--no-repair", is_flag=True, help="Replicas without peers (no anti-entropy).")
@click.option("--no-inbox-dedup", is_flag=True, help="Readers Fetch+Ack without the local inbox.")
@click.option(
    "--no-rebuild-wait",
    is_flag=True,
    help="Lose the next disk without waiting for the last rebuild (outside the fault model: it can lose messages).",
)
@click.option(
    "--history",
    "history_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the history (JSON lines) here.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep replica data and logs here instead of a temporary directory.",
)
def chaos_command(
    duration_s: float,
    seed: int | None,
    json_path: Path | None,
    scenario: str,
    senders: int,
    readers: int,
    mailboxes: int,
    rate_per_s: float,
    in_flight_max: int,
    settle_max_s: float,
    repair_interval_s: float,
    data_loss_gap_s: float,
    sample_interval_s: float,
    sender_processes: bool,
    clocks: tuple[str, ...],
    tombstone_grace_s: float | None,
    no_outbox: bool,
    no_repair: bool,
    no_inbox_dedup: bool,
    no_rebuild_wait: bool,
    history_path: Path | None,
    work_dir: Path | None,
) -> None:
    """Run a 3-replica cluster under injected faults, check the history; exit 1 on any loss.

    Faults: kill -9 and restart, lost disk, damaged data file, cut, black-holed,
    delayed and lost-response links between clients and replicas and between
    replicas. The same seed replays the same schedule.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    # the progress lines are the output; a client's per-call info events would drown them
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("grpc_messenger").setLevel(logging.WARNING)
    config = ChaosConfig(
        seed=seed,
        duration_s=duration_s,
        scenario=scenario,
        senders=senders,
        readers=readers,
        mailboxes=mailboxes,
        rate_per_s=rate_per_s,
        in_flight_max=in_flight_max,
        settle_max_s=settle_max_s,
        repair_interval_s=repair_interval_s,
        data_loss_gap_s=data_loss_gap_s,
        sample_interval_s=sample_interval_s,
        sender_processes=sender_processes,
        clocks=tuple(ClockSpec.parse(c) for c in clocks),
        tombstone_grace_s=tombstone_grace_s,
        outbox=not no_outbox,
        repair=not no_repair,
        inbox_dedup=not no_inbox_dedup,
        rebuild_wait=not no_rebuild_wait,
        history_path=history_path,
        work_dir=work_dir,
    )
    click.echo(f"chaos: seed {seed} (replay: {replay_command(config)})")
    try:
        result = asyncio.run(_run_until_signalled(config))
    except asyncio.CancelledError:
        click.echo("chaos: stopped by SIGTERM; every replica and proxy was stopped", err=True)
        sys.exit(143)
    print_report(result)
    if json_path is not None:
        json_path.write_text(report_json(result) + "\n")
    if not result.ok:
        sys.exit(1)


async def _run_until_signalled(config: ChaosConfig) -> ChaosResult:
    """Run; SIGTERM cancels the run, so its cleanup (kill replicas, remove files) still happens."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_chaos(config, emit=lambda line: click.echo(line))
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def replay_command(config: ChaosConfig) -> str:
    """The command line that replays this run's schedule (the settings that shape it)."""
    default = ChaosConfig(seed=0)
    parts = ["messenger chaos", f"--duration {config.duration_s:g}", f"--seed {config.seed}"]
    if config.scenario != "mixed":
        parts.append(f"--scenario {config.scenario}")
    if config.rate_per_s != default.rate_per_s:
        parts.append(f"--rate {config.rate_per_s:g}")
    if config.in_flight_max != default.in_flight_max:
        parts.append(f"--in-flight {config.in_flight_max}")
    if config.data_loss_gap_s != default.data_loss_gap_s:
        parts.append(f"--data-loss-gap {config.data_loss_gap_s:g}")
    if config.repair_interval_s != default.repair_interval_s:
        parts.append(f"--repair-interval {config.repair_interval_s:g}")
    if not config.rebuild_wait:
        parts.append("--no-rebuild-wait")
    if config.sender_processes:
        parts.append("--sender-processes")
    if config.senders != default.senders:
        parts.append(f"--senders {config.senders}")
    parts += [f"--clock {c.describe()}" for c in config.clocks]
    if config.tombstone_grace_s:
        parts.append(f"--tombstone-grace {config.tombstone_grace_s:g}")
    return " ".join(parts)


def print_report(result: ChaosResult) -> None:
    """The figures, one per line, verdict last."""
    r = result.report
    d = result.to_dict()
    click.echo("")
    click.echo(f"report seed={result.config.seed} scenario={result.config.scenario} defences={d['defences']}")
    click.echo(f"  sent            {r.sent} ({d['messages_per_s']}/s)")
    click.echo(f"  sent_ok         {r.sent_ok}   failed {r.sent_failed}   unknown {r.sent_unknown}")
    click.echo(
        f"  delivered       {r.delivered}   (of them not acknowledged to the sender: {r.delivered_unacknowledged})"
    )
    if result.config.sender_processes:
        click.echo(
            f"  senders killed  {r.senders_killed}   sends in doubt {r.in_doubt} "
            f"(delivered once: {r.in_doubt_delivered}, at most once is the rule)"
        )
    click.echo(f"  lost            {r.lost}   {' '.join(r.lost_sample)}")
    click.echo(f"  misordered      {r.misordered} reads (order: creation time, sender, key)")
    click.echo(f"  duplicated      {r.duplicated}   {' '.join(r.duplicated_sample)}")
    click.echo(f"  phantom         {r.phantom}   {' '.join(r.phantom_sample)}")
    click.echo(f"  under_replicated {r.under_replicated}")
    click.echo(f"  faults          {r.faults}   replica start failures {result.replica_start_failures}")
    click.echo(
        f"  rebuild waits   {result.rebuild_wait_s:.0f} s before data-loss faults; "
        f"data loss while a replica was rebuilding: {result.data_loss_while_rebuilding}"
    )
    settle = f"{r.settle_s} s" if r.settle_s is not None else f"NOT within {result.config.settle_max_s:g} s"
    click.echo(f"  settle_s        {settle}   outbox owed at end {result.outbox_owed_end}")
    click.echo(f"  read failures   {r.read_failures}   replicas down at end {result.replicas_down_end}")
    for t in result.resources:
        if t.figure == "rss_kib":
            line = f"  resources {t.process:<7}"
            for fig in result.resources:
                if fig.process == t.process:
                    line += f" {fig.figure} {fig.first:g}->{fig.last:g} (peak {fig.peak})"
            click.echo(line + ("  GROWING" if any(g.process == t.process for g in result.growing) else ""))
    verdict = "PASS" if result.ok else "FAIL"
    click.echo(f"{verdict}: lost={r.lost} duplicated={r.duplicated} phantom={r.phantom} misordered={r.misordered}")
    if r.settle_s is None or r.under_replicated:
        # not an exit-status failure (the contract's promise is about loss), but the repair promise is broken
        click.echo(f"WARN: replicas did not converge: under_replicated={r.under_replicated} after the settle bound")
