"""`messenger send` at scale and when it falls short: bulk files, queued messages, safe resends, outbox drop."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from grpc_messenger.cli import bulk
from grpc_messenger.errors import InvalidInput
from tests.cli_support import messenger, no_traceback
from tests.conftest import Cluster, ReplicaFactory

ALICE = "alice@example.org"


@pytest.fixture
def dead_address() -> Iterator[str]:
    """A loopback port bound but not listening: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def bodies_of(done_stdout: str) -> list[str]:
    return [m["body"] for m in json.loads(done_stdout)["messages"]]


def test_bulk_file_sends_one_message_per_line(shared_cluster: Cluster, client_home: Path, mailbox: str) -> None:
    lines = [f"line {i} of the file" for i in range(1, 1201)]
    path = client_home / "messages.txt"
    path.write_text("\n".join(lines[:600]) + "\n\n   \n" + "\n".join(lines[600:]) + "\n")
    done = messenger("send", "--from", ALICE, "--to", mailbox, "--file", str(path),
                     servers=shared_cluster.servers, home=client_home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sent 1200 messages: 1200 stored on the write quorum, 0 queued for delivery, 0 refused" in done.stdout
    inbox = messenger("inbox", mailbox, "--json", servers=shared_cluster.servers, home=client_home)
    assert sorted(bodies_of(inbox.stdout)) == sorted(lines)


def test_bulk_jsonl_keeps_given_keys_so_resending_the_file_is_safe(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    other = "other-" + mailbox
    records = [
        {"to": mailbox, "body": "first", "key": "0190a7a0-0000-7000-8000-000000000001"},
        {"body": "second, to --to"},
        {"to": other, "body": "third", "key": "0190a7a0-0000-7000-8000-000000000003"},
    ]
    path = client_home / "messages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ("send", "--from", ALICE, "--to", mailbox, "--jsonl", str(path), "--json")
    first = messenger(*args, servers=shared_cluster.servers, home=client_home)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["sent"], summary["stored"], summary["queued"], summary["refused"]) == (3, 3, 0, 0)
    assert [r["key"] for r in summary["reports"]][::2] == [records[0]["key"], records[2]["key"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in records[::2]))  # the keyed lines again
    again = messenger(*args, servers=shared_cluster.servers, home=client_home)
    assert again.returncode == 0, again.stderr
    # send_many returns once W replicas answered: the rest may still be pending, none stores it anew
    states = {r["state"] for report in json.loads(again.stdout)["reports"] for r in report["replicas"]}
    assert "already_stored" in states
    assert states <= {"already_stored", "pending"}
    mine = messenger("inbox", mailbox, "--json", servers=shared_cluster.servers, home=client_home)
    theirs = messenger("inbox", other, "--json", servers=shared_cluster.servers, home=client_home)
    assert sorted(bodies_of(mine.stdout)) == ["first", "second, to --to"]
    assert bodies_of(theirs.stdout) == ["third"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"to": "b@example.org", "body": "fine"}\n{"to": "b@example.org", "body": "  "}\n',
         "line 2: message body is only whitespace"),
        ('{"to": "b@example.org", "body": "fine"}\nnot json\n', "line 2: not JSON"),
        ('{"to": "b@example.org", "body": "x", "colour": 1}\n', "line 1: unknown fields colour"),
        ('{"to": "nobody", "body": "x"}\n', "line 1: recipient address 'nobody'"),
        ('["b@example.org", "x"]\n', "line 1: expected an object"),
        ('{"body": "x"}\n', "line 1: 'to' must be an address"),
    ],
)  # fmt: skip
def test_bulk_jsonl_bad_line_is_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=needle):
        bulk.drafts_from_jsonl(path, sender=ALICE, recipient=None)


def test_bulk_bad_line_sends_nothing_and_exits_2(dead_address: str, client_home: Path) -> None:
    path = client_home / "messages.txt"
    path.write_text("fine\n" + "x" * 70_000 + "\n")
    # a dead replica: had anything been sent, the exit would say queued (3), not bad input (2)
    done = messenger("send", "--from", ALICE, "--to", "b@example.org", "--file", str(path),
                     servers=(dead_address,), home=client_home)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "messages.txt line 2: message body is 70000 bytes" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (client_home / "outbox.sqlite3").exists()


def test_bulk_short_of_quorum_is_queued_and_exits_3(dead_address: str, client_home: Path) -> None:
    path = client_home / "messages.txt"
    path.write_text("one\ntwo\n")
    done = messenger("--timeout", "2", "send", "--from", ALICE, "--to", "b@example.org", "--file", str(path),
                     servers=(dead_address,), home=client_home)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "sent 2 messages: 0 stored on the write quorum, 2 queued for delivery, 0 refused" in done.stdout
    assert "same keys" in done.stderr
    assert no_traceback(done)


def test_failed_send_is_queued_names_its_key_and_resending_it_is_safe(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    replica = replica_factory.replica()
    servers = (replica.address,)
    replica.kill()
    failed = messenger("--timeout", "2", "send", "--from", ALICE, "--to", "bob@example.org", "are you there?",
                       servers=servers, home=client_home)  # fmt: skip
    assert failed.returncode == 3, failed.stderr
    assert "error: stored on 0 of 1 replicas, needed 1" in failed.stderr
    assert "queued: message " in failed.stderr
    key = failed.stderr.split("queued: message ", 1)[1].split()[0]
    assert f"--key {key}" in failed.stderr
    assert no_traceback(failed)

    as_json = messenger("--timeout", "2", "send", "--from", ALICE, "--to", "bob@example.org", "--json", "again",
                        servers=servers, home=client_home)  # fmt: skip
    assert as_json.returncode == 3
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["queued"], report["acknowledged"]) == (False, True, 0)
    assert [r["state"] for r in report["replicas"]] == ["failed"]
    owed = json.loads(messenger("outbox", "--json", servers=servers, home=client_home).stdout)
    assert {d["key"] for d in owed["deliveries"]} == {key, report["key"]}

    replica.start()  # same port, same data
    resent = messenger("send", "--key", key, "--from", ALICE, "--to", "bob@example.org", "are you there?",
                       servers=servers, home=client_home)  # fmt: skip
    assert resent.returncode == 0, resent.stderr
    assert messenger("outbox", "flush", servers=servers, home=client_home).returncode == 0
    inbox = messenger("inbox", "bob@example.org", "--json", servers=servers, home=client_home)
    assert sorted(bodies_of(inbox.stdout)) == ["again", "are you there?"]


def test_outbox_drop_forgets_deliveries_to_a_replica_no_longer_configured(
    shared_cluster: Cluster, dead_address: str, client_home: Path, mailbox: str
) -> None:
    live = shared_cluster.servers[:1]
    path = client_home / "messages.txt"
    path.write_text("one\ntwo\n")
    sent = messenger("--timeout", "2", "send", "--from", ALICE, "--to", mailbox, "--file", str(path), "--json",
                     servers=(*live, dead_address), home=client_home)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    first, _ = (r["key"] for r in json.loads(sent.stdout)["reports"])
    # the dead replica is taken out of the configuration: its deliveries can never be made from here
    stuck = messenger("outbox", "flush", servers=live, home=client_home)
    assert stuck.returncode == 1
    assert "outbox drop --replica" in stuck.stderr

    by_key = messenger("outbox", "drop", first, servers=live, home=client_home)
    assert by_key.returncode == 0, by_key.stderr
    assert "dropped 1 owed deliveries; 1 still owed" in by_key.stdout
    by_replica = messenger("outbox", "drop", "--replica", dead_address, "--json", servers=live, home=client_home)
    assert by_replica.returncode == 0, by_replica.stderr
    assert json.loads(by_replica.stdout) == {"dropped": 1, "owed": 0, "expired": 0}
    assert messenger("outbox", "flush", servers=live, home=client_home).returncode == 0
