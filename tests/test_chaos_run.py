"""A short chaos run, end to end through `messenger chaos`: nothing acknowledged is lost.

About 45 s: a 35 s workload (thousands of messages) under a seeded schedule
with at least one kill -9, lost disk, damaged data file, cut link and lost
response, then settle, drain and check. Deselect with `-m "not chaos"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from grpc_messenger.chaos.faults import MANDATORY
from grpc_messenger.chaos.history import read_history
from grpc_messenger.cli.main import cli
from tests.chaos_support import CI_DATA_LOSS_GAP_S, CI_DURATION_S, CI_SEED


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_short_chaos_run_loses_duplicates_and_invents_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    history_path = tmp_path / "history.jsonl"
    args = [
        "chaos", "--duration", str(CI_DURATION_S), "--seed", str(CI_SEED),
        "--data-loss-gap", str(CI_DATA_LOSS_GAP_S), "--settle-max", "30",
        "--json", str(report_path), "--history", str(history_path),
    ]  # fmt: skip
    print(f"chaos seed {CI_SEED}: replay with messenger {' '.join(args)}")
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    print(result.output)
    report = json.loads(report_path.read_text())
    assert (report["lost"], report["duplicated"], report["phantom"]) == (0, 0, 0), result.output
    assert result.exit_code == 0, result.output
    assert report["sent_ok"] >= 2000
    assert report["under_replicated"] == 0
    assert report["settle_s"] is not None
    assert report["replicas_down_end"] == 0
    kinds = {e["kind"] for e in read_history(history_path) if e["type"] == "fault" and e["phase"] == "start"}
    assert {k.value for k in MANDATORY} <= kinds
    assert report["faults"] == len([e for e in read_history(history_path) if e["type"] == "fault"]) // 2


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_disks_lost_one_after_another_wait_for_each_rebuild(tmp_path: Path) -> None:
    """A wipe every few seconds with slow repair rounds: each waits until the last wiped replica has rebuilt.

    Without the wait (`--no-rebuild-wait`) this schedule loses hundreds of messages: three
    disks lost within one rebuild take with them what only they held.
    """
    report_path = tmp_path / "report.json"
    args = [
        "chaos", "--duration", "25", "--seed", "7", "--scenario", "rolling-wipe",
        "--data-loss-gap", "1", "--repair-interval", "5", "--settle-max", "60", "--json", str(report_path),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    print(result.output)
    report = json.loads(report_path.read_text())
    assert (report["lost"], report["duplicated"], report["phantom"]) == (0, 0, 0), result.output
    assert report["under_replicated"] == 0
    assert report["rebuild_wait_s"] > 0, "no wipe was held back: the schedule did not test the wait"
    assert report["data_loss_while_rebuilding"] == 0
    assert result.exit_code == 0, result.output
