"""A sender that dies: SIGKILL at any moment, restarted on the same home.

The checker's rules for it: every send that returned success is delivered
exactly once; a send in doubt (its process died before send() returned) at
most once, counted separately; nothing phantom. The outbox written before the
crash carries the dead sender's owed deliveries on its next start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from grpc_messenger.chaos import check
from grpc_messenger.chaos.clocks import libfaketime
from grpc_messenger.chaos.history import read_history
from grpc_messenger.cli.main import cli
from tests.conftest import ReplicaFactory, queued_keys

SCRIPT_TIMEOUT_S = 60


def _invoke(key: str, process: str = "s1") -> dict[str, Any]:
    return {"t": 0.0, "type": "invoke", "process": process, "key": key, "mailbox": "mb@x.org", "body": f"b {key}"}


def _deliver(key: str, t: float = 1.0) -> dict[str, Any]:
    return {"t": t, "type": "deliver", "process": "d1", "mailbox": "mb@x.org", "key": key, "body": f"b {key}"}


def test_checker_counts_sends_in_doubt_apart_and_allows_them_at_most_once() -> None:
    killed = {"t": 0.5, "type": "sender_killed", "process": "s1", "incarnation": 1}
    ok = {"t": 0.2, "type": "ok", "process": "s1", "key": "a"}
    report = check([_invoke("a"), ok, _invoke("b"), _invoke("c"), killed, _deliver("a"), _deliver("b")])
    assert report.ok
    assert (report.in_doubt, report.in_doubt_delivered, report.senders_killed) == (2, 1, 1)
    assert report.lost == 0  # "c" was never acknowledged: not delivering it is allowed


def test_checker_flags_a_send_in_doubt_delivered_twice() -> None:
    report = check([_invoke("b"), _deliver("b"), _deliver("b", t=2.0)])
    assert not report.ok
    assert report.duplicated == 1


def test_checker_judges_deliveries_against_the_whole_merged_history() -> None:
    # a sender process's file merged by time may put a delivery before an invoke with an equal t
    report = check([_deliver("a", t=0.0), _invoke("a"), {"t": 0.0, "type": "ok", "process": "s1", "key": "a"}])
    assert report.ok
    assert report.phantom == 0


_SEND_THEN_DIE = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from grpc_messenger import ClientConfig, Draft, Messenger
    servers = tuple(sys.argv[1].split(","))
    config = ClientConfig(servers=servers, data_dir=Path(sys.argv[2]), write_quorum=1, timeout_s=5)
    m = Messenger(config)
    reports = m.send_many(Draft("crash@x.org", sys.argv[3], f"owed {i}") for i in range(20))
    assert all(r.ok for r in reports), reports
    for _ in range(600):  # the outbox write follows the send by a short grace
        if m.outbox_owed()[0] == 2 * len(reports):
            break
        time.sleep(0.05)
    # what each replica said, and what the outbox holds, for the test's message if it fails
    states = sorted({(r.replica, r.state.value, str(r.failure)) for report in reports for r in report.replicas})
    owed_to = sorted({d.replica for d in m.outbox_listing()})
    out = {"keys": [r.key for r in reports], "owed": m.outbox_owed()[0], "states": states, "owed_to": owed_to}
    print(json.dumps(out), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: a crash
    """
)
_START_AND_WAIT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from grpc_messenger import ClientConfig, Messenger
    servers = tuple(sys.argv[1].split(","))
    config = ClientConfig(servers=servers, data_dir=Path(sys.argv[2]), outbox_interval_s=0.2, timeout_s=5)
    with Messenger(config) as m:
        m.status()  # opens the messenger: its outbox loop starts; nothing else is asked of it
        for _ in range(300):
            if m.outbox_owed()[0] == 0:
                break
            time.sleep(0.1)
        print(m.outbox_owed()[0], flush=True)
    """
)


def test_a_killed_senders_outbox_delivers_on_its_next_start(
    replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str
) -> None:
    cluster = replica_factory.cluster(3)  # no repair: only the outbox can bring r2 and r3 their copies
    r1, r2, r3 = cluster.replicas
    r2.kill()
    r3.kill()
    home = str(tmp_path / "sender-home")
    servers = ",".join(cluster.servers)
    first = subprocess.run(
        [sys.executable, "-c", _SEND_THEN_DIE, servers, home, mailbox],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert first.returncode == -9, first.stderr[-2000:]
    sent = json.loads(first.stdout)
    keys = set(sent["keys"])
    assert sent["owed"] == 2 * len(keys), (sent["states"], sent["owed_to"], first.stderr[-2000:])
    assert queued_keys(r1.address, mailbox) == keys
    r2.start()
    r3.start()
    second = subprocess.run(
        [sys.executable, "-c", _START_AND_WAIT, servers, home],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip() == "0"
    assert queued_keys(r2.address, mailbox) == keys
    assert queued_keys(r3.address, mailbox) == keys


@pytest.mark.chaos
@pytest.mark.timeout(180)
@pytest.mark.skipif(libfaketime() is None, reason="needs libfaketime (.ci/run installs faketime)")
def test_short_run_with_crashing_senders_and_lying_clocks(tmp_path: Path) -> None:
    """Senders SIGKILLed and restarted; a replica 40 days ahead purging with a short grace;
    senders a day behind and ahead; a replica clock stepped two hours back mid-run."""
    report_path = tmp_path / "report.json"
    history_path = tmp_path / "history.jsonl"
    # small and slow enough for one loaded core: this seed's plan kills s2 right after an ack
    # at 2 s and s1 at a random moment at 6 s, and each comes back; r3's clock steps back between
    args = [
        "chaos", "--duration", "10", "--seed", "20261129", "--scenario", "sender-crash", "--sender-processes",
        "--senders", "3", "--rate", "30", "--mailboxes", "8", "--settle-max", "60",
        "--json", str(report_path), "--history", str(history_path),
        "--clock", "r1=+40d", "--clock", "s2=-1d", "--clock", "s3=+1d", "--clock", "r3=+0>-2h@5",
        "--tombstone-grace", "30",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    print(result.output)
    report = json.loads(report_path.read_text())
    assert (report["lost"], report["duplicated"], report["phantom"], report["misordered"]) == (0, 0, 0, 0), (
        result.output
    )
    assert result.exit_code == 0, result.output
    assert report["senders_killed"] >= 1
    assert report["under_replicated"] == 0
    events = list(read_history(history_path))
    killed = [e for e in events if e["type"] == "sender_killed"]
    assert {e.get("moment") for e in killed} == {"after_ack", "random"}, killed  # both moments, none skipped
    restarted = {e["process"] for e in events if e["type"] == "sender_started" and e["incarnation"] > 1}
    assert restarted >= {e["process"] for e in killed}, "a killed sender did not come back"
    assert any(e["type"] == "clock_jump" for e in events)
    # the skewed senders' messages carry their own clocks: a day apart, and shown in that order
    created = {e["key"].split("-")[1]: e["created_unix_ms"] for e in events if e["type"] == "deliver"}
    assert created["s3"] - created["s2"] > 36 * 3600 * 1000
