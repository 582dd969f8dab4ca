"""Addresses compare case-insensitively through the whole CLI: one mailbox however it is capitalised."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_support import messenger
from tests.conftest import Cluster


def test_a_mailbox_is_one_however_its_address_is_capitalised(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    name, _, domain = mailbox.partition("@")
    shouted = f"{name.upper()}@{domain.title()}"
    for body, to in (("to the shouted form", shouted), ("to the plain form", mailbox)):
        sent = messenger("send", "--from", "Alice@Example.org", "--to", to, body,
                         servers=shared_cluster.servers, home=client_home)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    first = messenger("inbox", mailbox.capitalize(), "--json", servers=shared_cluster.servers, home=client_home)
    assert first.returncode == 0, first.stderr
    bodies = sorted(m["body"] for m in json.loads(first.stdout)["messages"])
    assert bodies == ["to the plain form", "to the shouted form"]
    again = messenger("inbox", shouted, "--json", servers=shared_cluster.servers, home=client_home)
    assert json.loads(again.stdout)["messages"] == []  # shown once, whatever the spelling
    history = messenger("inbox", mailbox, "--all", "--json", servers=shared_cluster.servers, home=client_home)
    assert sorted(m["body"] for m in json.loads(history.stdout)["messages"]) == bodies
