"""The `messenger` command end to end: real processes, real replicas, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from grpc_messenger.ready import ReadyRecord
from tests.cli_support import messenger
from tests.conftest import Cluster, ReplicaFactory, wait_until


def test_send_then_inbox_shows_each_message_once(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    sent = messenger("send", "--from", "alice@example.org", "--to", mailbox, "hello from the cli",
                     servers=shared_cluster.servers, home=client_home)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "stored on 3 of 3 replicas" in sent.stdout
    piped = messenger("send", "--from", "alice@example.org", "--to", mailbox, "--json",
                      servers=shared_cluster.servers, home=client_home, stdin="from stdin\n")  # fmt: skip
    report = json.loads(piped.stdout)
    assert report["ok"]
    assert report["acknowledged"] == 3
    assert {r["state"] for r in report["replicas"]} == {"stored"}

    inbox = messenger("inbox", mailbox, "--json", servers=shared_cluster.servers, home=client_home)
    assert inbox.returncode == 0, inbox.stderr
    bodies = [m["body"] for m in json.loads(inbox.stdout)["messages"]]
    assert bodies == ["hello from the cli", "from stdin"]
    again = messenger("inbox", mailbox, servers=shared_cluster.servers, home=client_home)
    assert "no new messages" in again.stdout
    history = messenger("inbox", mailbox, "--all", "--json", servers=shared_cluster.servers, home=client_home)
    assert [m["body"] for m in json.loads(history.stdout)["messages"]] == bodies


def test_inbox_peek_does_not_consume(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    messenger("send", "--from", "a@example.org", "--to", mailbox, "peek me", servers=shared_cluster.servers)
    for _ in range(2):
        peek = messenger("inbox", mailbox, "--peek", "--json", servers=shared_cluster.servers, home=client_home)
        assert [m["body"] for m in json.loads(peek.stdout)["messages"]] == ["peek me"]
    text = messenger("inbox", mailbox, servers=shared_cluster.servers, home=client_home)
    assert "a@example.org: peek me" in text.stdout


def test_status_json_lists_every_replica(shared_cluster: Cluster) -> None:
    status = messenger("status", "--json", servers=shared_cluster.servers)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["address"] for r in rows] == list(shared_cluster.servers)
    assert all(r["reachable"] and r["serving"] for r in rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("send", "--from", "alice", "--to", "bob@example.org", "hi"), "sender address 'alice'"),
        (("send", "--from", "a@example.org", "--to", "bob@example.org", ""), "body is empty"),
        (("inbox", "not an address"), "not an email address"),
        (("--servers", "nohostport", "status"), "is not host:port"),
        (("send", "--from", "a@example.org", "--to", "b@example.org", "--quorum", "4", "x"), "write quorum"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    shared_cluster: Cluster, client_home: Path, args: tuple[str, ...], needle: str
) -> None:
    done = messenger(*args, servers=shared_cluster.servers, home=client_home)
    assert done.returncode == 2
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unreachable_cluster_is_a_clear_error(client_home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        servers = (f"127.0.0.1:{port}",)
        send = messenger("--timeout", "2", "send", "--from", "a@example.org", "--to", "b@example.org", "x",
                         servers=servers, home=client_home)  # fmt: skip
        inbox = messenger("--timeout", "2", "inbox", "b@example.org", servers=servers, home=client_home)
        status = messenger("--timeout", "2", "status", servers=servers, home=client_home)
    for done in (send, inbox):
        assert "error:" in done.stderr
        assert "Traceback" not in done.stderr
    assert inbox.returncode == 1
    assert send.returncode == 3  # queued in the outbox, delivered once the replica answers
    assert "stored on 0 of 1 replicas" in send.stderr
    assert status.returncode == 1


def test_with_two_of_three_down_send_and_inbox_still_work(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(3)
    cluster.replicas[0].kill()
    cluster.replicas[1].kill()
    sent = messenger("send", "--from", "a@example.org", "--to", "bob@example.org", "survives",
                     servers=cluster.servers, home=client_home)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "stored on 1 of 3 replicas" in sent.stdout
    inbox = messenger("inbox", "bob@example.org", servers=cluster.servers, home=client_home)
    assert inbox.returncode == 0
    assert "a@example.org: survives" in inbox.stdout
    assert inbox.stderr.count("did not answer") == 2


def test_serve_accepts_the_original_ip_port_form(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "grpc_messenger", "serve", "--ip=127.0.0.1", f"--port={port}",
         "--data-dir", str(tmp_path / "data"), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(ready.exists, timeout_s=30)
        assert json.loads(ready.read_text())["addresses"] == [f"127.0.0.1:{port}"]
        status = messenger("status", "--json", servers=(f"127.0.0.1:{port}",))
        assert json.loads(status.stdout)[0]["serving"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_serve_refuses_a_damaged_store_clearly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "replica.sqlite3").write_bytes(b"garbage" * 1000)
    done = messenger("serve", "--listen", "127.0.0.1:0", "--data-dir", str(data))
    assert done.returncode == 1
    assert "cannot open store" in done.stderr
    assert "Traceback" not in done.stderr


def test_cluster_starts_three_replicas_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "grpc_messenger", "cluster", "--base-port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # with port 0 the replicas start twice (the second time knowing their peers):
        # the cluster is up when it says so, and then its ready records are final
        head = _read_until(process, "Ctrl-C stops every replica.", lines_max=40)
        assert "local cluster of 3 replicas is up" in head
        ready = [ReadyRecord.read(tmp_path / f"replica-{i}" / "ready.json") for i in (1, 2, 3)]
        pids = [r.pid for r in ready]
        servers = tuple(r.address for r in ready)
        status = messenger("status", "--json", servers=servers)
        assert all(r["serving"] for r in json.loads(status.stdout))
        process.send_signal(signal.SIGINT)
        out, logs = process.communicate(timeout=30)
        assert process.returncode == 0
        # each runs with the other two as repair peers
        for record in ready:
            others = [r.address for r in ready if r is not record]
            started = [
                line for line in logs.splitlines() if f"event=replica.started replica={record.replica_id}" in line
            ]
            assert any(f"peers={','.join(others)}" in line for line in started), started
        assert f"MESSENGER_SERVERS={','.join(servers)}" in head
        assert "stopped: replica-1 (code 0), replica-2 (code 0), replica-3 (code 0)" in out
        for pid in pids:
            assert not _alive(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _read_until(process: subprocess.Popen[str], marker: str, *, lines_max: int) -> str:
    """Lines of the process's stdout up to the one holding `marker` (bounded: fails at EOF or after lines_max)."""
    assert process.stdout is not None
    lines: list[str] = []
    for _ in range(lines_max):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"no {marker!r} in the output: {''.join(lines)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited all the same
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_help_lists_every_command() -> None:
    done = messenger("--help")
    assert done.returncode == 0
    for command in ("cluster", "serve", "send", "inbox", "status"):
        assert command in done.stdout


def test_status_says_whether_replicas_agree(replica_factory: ReplicaFactory, client_home: Path) -> None:
    cluster = replica_factory.cluster(2)
    assert "in sync" in messenger("status", servers=cluster.servers).stdout
    cluster.replicas[1].kill()
    messenger("--timeout", "2", "send", "--from", "a@example.org", "--to", "b@example.org", "only on one",
              servers=cluster.servers, home=client_home)  # fmt: skip
    cluster.replicas[1].start()
    status = messenger("status", servers=cluster.servers)
    assert "replicas differ" in status.stdout
    assert "queued counts differ by up to 1" in status.stdout
    rows = json.loads(messenger("status", "--json", servers=cluster.servers).stdout)
    assert rows[0]["state_digest"] != rows[1]["state_digest"]


def test_config_file_supplies_servers_and_bad_files_are_refused(
    shared_cluster: Cluster, client_home: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f"servers = {list(shared_cluster.servers)!r}\nwrite_quorum = 3\ntimeout_s = 4\n")
    status = messenger("--config", str(good), "status", "--json")
    assert [r["address"] for r in json.loads(status.stdout)] == list(shared_cluster.servers)
    sent = messenger("--config", str(good), "send", "--from", "a@example.org", "--to", "c@example.org", "hi", "--json",
                     home=client_home)  # fmt: skip
    assert json.loads(sent.stdout)["write_quorum"] == 3
    for text, needle in (("servers = 5\n", "servers must be a list"), ("colour = 'blue'\n", "unknown keys colour"),
                         ("servers = [\n", "config file")):  # fmt: skip
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        done = messenger("--config", str(bad), "status")
        assert done.returncode == 2
        assert needle in done.stderr
        assert "Traceback" not in done.stderr
    missing = messenger("--config", str(tmp_path / "missing.toml"), "status")
    assert missing.returncode == 2
