"""The CLI fails in one line a person can act on: local files, TLS, refusals, expired tokens, hostile bodies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from grpc_messenger.security import tls, tokens
from tests.cli_support import messenger, no_traceback
from tests.conftest import Cluster, ReplicaFactory

ALICE = "alice@example.org"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_missing_or_unusable_home_is_one_line_and_exit_4(tmp_path: Path) -> None:
    servers = ("127.0.0.1:1",)
    for args in (
        ("--home", "/proc/nope", "send", "--from", ALICE, "--to", "b@example.org", "hi"),
        ("--home", "/proc/nope", "inbox", "b@example.org", "--all"),
    ):
        done = messenger(*args, servers=servers)
        assert done.returncode == 4, done.stderr
        assert "/proc/nope" in one_error_line(done.stderr)
        assert "--home" in done.stderr
        assert no_traceback(done)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("inbox.sqlite3", ("inbox", "b@example.org")),
        ("outbox.sqlite3", ("send", "--from", ALICE, "--to", "b@example.org", "hi")),
    ],
)
def test_damaged_local_file_is_named_with_the_fix(tmp_path: Path, name: str, args: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    damaged = home / name
    damaged.write_bytes(b"this is not a database " * 200)
    done = messenger(*args, servers=("127.0.0.1:1",), home=home)
    assert done.returncode == 4, done.stderr
    line = one_error_line(done.stderr)
    assert str(damaged) in line
    assert "file is not a database" in line
    assert f"mv {damaged} {damaged}.damaged" in line
    assert no_traceback(done)


def test_empty_servers_is_an_error_not_the_default_cluster(client_home: Path) -> None:
    done = messenger("--servers", "", "status", home=client_home)
    assert done.returncode == 2
    assert "replica list is empty" in one_error_line(done.stderr)


def test_whitespace_only_body_is_refused_like_an_empty_one(shared_cluster: Cluster, client_home: Path) -> None:
    done = messenger("send", "--from", ALICE, "--to", "b@example.org", " \t\n ",
                     servers=shared_cluster.servers, home=client_home)  # fmt: skip
    assert done.returncode == 2
    assert "message body is only whitespace" in one_error_line(done.stderr)


def test_bodies_with_terminal_escapes_are_shown_escaped(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    hostile = "\x1b[31mred\x1b[0m \x9b2J \u202eevil\x07 [bold]not markup[/bold]"
    sent = messenger("send", "--from", ALICE, "--to", mailbox, hostile, servers=shared_cluster.servers)
    assert sent.returncode == 0, sent.stderr
    peek = messenger("inbox", mailbox, "--peek", "--json", servers=shared_cluster.servers, home=client_home)
    assert json.loads(peek.stdout)["messages"][0]["body"] == hostile  # data kept exactly
    text = messenger("inbox", mailbox, servers=shared_cluster.servers, home=client_home)
    for raw in ("\x1b", "\x9b", "\u202e", "\x07"):
        assert raw not in text.stdout
        assert raw not in peek.stdout
    assert "\\x1b[31mred\\x1b[0m \\x9b2J \\u202eevil\\x07 [bold]not markup[/bold]" in text.stdout
    history = messenger("inbox", mailbox, "--all", servers=shared_cluster.servers, home=client_home)
    assert "\x1b" not in history.stdout
    assert "\\x1b[31mred" in history.stdout


def test_plaintext_client_of_a_tls_replica_is_told_to_use_tls(
    replica_factory: ReplicaFactory, tmp_path: Path, client_home: Path
) -> None:
    certs = tls.make_dev_certs(tmp_path / "tls")
    tls_args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    replica = replica_factory.replica(extra_args=tls_args)
    servers = (replica.address,)
    inbox = messenger("--timeout", "3", "inbox", "b@example.org", servers=servers, home=client_home)
    assert inbox.returncode == 1
    line = one_error_line(inbox.stderr)
    assert "speaks TLS" in line
    assert "--tls-ca" in line
    assert "Socket closed" not in line
    status = messenger("--timeout", "3", "status", servers=servers, home=client_home)
    assert status.returncode == 1
    assert "speaks TLS" in status.stderr


def test_refusals_are_one_line_and_expired_tokens_show_a_date(
    replica_factory: ReplicaFactory, tmp_path: Path, client_home: Path
) -> None:
    private, public = tokens.generate_key_pair(tmp_path / "keys")
    servers = tuple(replica_factory.replica(extra_args=("--auth-public-key", str(public))).address for _ in range(2))
    key = tokens.load_private_key(private)
    refused = messenger("send", "--from", ALICE, "--to", "b@example.org", "hi", servers=servers, home=client_home)
    assert refused.returncode == 1
    assert one_error_line(refused.stderr).startswith("error: missing token")

    issued_s = int(time.time()) - 7200
    expired = tokens.issue(key, subject=ALICE, ttl_s=3600, now_s=issued_s)
    done = messenger("--token", expired, "inbox", ALICE, servers=servers, home=client_home)
    assert done.returncode == 1
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(issued_s + 3600))
    assert f"expired at {when}" in one_error_line(done.stderr)
