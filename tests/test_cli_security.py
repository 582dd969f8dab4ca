"""The security commands: keys init, token issue, certs dev, and a token from flag/env/config reaching a replica."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from grpc_messenger.cli.main import cli
from grpc_messenger.security import tokens
from tests.conftest import ReplicaFactory


def _messenger(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grpc_messenger", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_keys_init_then_token_issue_in_the_same_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    created = runner.invoke(cli, ["keys", "init"])
    assert created.exit_code == 0, created.output
    assert Path("messenger-data/keys/signing.key").exists()
    again = runner.invoke(cli, ["keys", "init"])
    assert again.exit_code != 0
    issued = runner.invoke(cli, ["token", "issue", "bob@x.org", "--ttl", "30d", "--json"])
    assert issued.exit_code == 0, issued.output
    data = json.loads(issued.output)
    verifier = tokens.TokenVerifier.from_files([Path("messenger-data/keys/signing.pub")])
    identity = verifier.verify(data["token"])
    assert identity.subject == "bob@x.org"
    assert data["ttl_s"] == 30 * 86400
    peer = runner.invoke(cli, ["token", "issue", "replica-1", "--peer"])
    assert verifier.verify(peer.output.strip()).role is tokens.Role.PEER
    bad = runner.invoke(cli, ["token", "issue", "not-an-address"])
    assert bad.exit_code != 0


def test_certs_dev_writes_a_ca_and_certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["certs", "dev", "--host", "127.0.0.1", "--host", "replica.local"])
    assert result.exit_code == 0, result.output
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "ca.key"):
        assert Path("messenger-data/tls", name).exists()
    assert Path("messenger-data/tls/server.key").stat().st_mode & 0o077 == 0


def test_cli_sends_token_from_env_and_config_file(replica_factory: ReplicaFactory, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    private, public = tokens.generate_key_pair(keys_dir)
    replica = replica_factory.replica(extra_args=("--auth-public-key", str(public)))
    bob = tokens.issue(tokens.load_private_key(private), subject="bob@x.org", ttl_s=600)
    base = {"MESSENGER_SERVERS": replica.address, "MESSENGER_HOME": str(tmp_path / "home")}

    refused = _messenger("send", "--from", "bob@x.org", "--to", "bob@x.org", "hi", cwd=tmp_path, env=base)
    assert refused.returncode == 1
    assert "error: missing token" in refused.stderr

    from_env = _messenger(
        "send",
        "--from",
        "bob@x.org",
        "--to",
        "bob@x.org",
        "via env",
        cwd=tmp_path,
        env={**base, "MESSENGER_TOKEN": bob},
    )
    assert from_env.returncode == 0, from_env.stderr

    config = tmp_path / "config.toml"
    config.write_text(f'token = "{bob}"\n')
    inbox = _messenger("--config", str(config), "inbox", "bob@x.org", "--json", cwd=tmp_path, env=base)
    assert inbox.returncode == 0, inbox.stderr
    assert [m["body"] for m in json.loads(inbox.stdout)["messages"]] == ["via env"]

    as_alice = _messenger("--token", bob, "inbox", "alice@x.org", cwd=tmp_path, env=base)
    assert as_alice.returncode == 1
    # every replica refused for the same reason: that reason, in one line, no log noise
    assert as_alice.stderr.strip().splitlines() == ["error: token for bob@x.org cannot act for 'alice@x.org'"]
