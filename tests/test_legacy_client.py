"""A client generated from the original proto alone, unchanged, against a 3-replica cluster.

The original client (README: Porting) runs in its own process
(tests/legacy_proto/original_client.py) with
code generated at test time from tests/legacy_proto/messenger.proto, exactly as
an old deployment would: it never imports grpc_messenger.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_tools import protoc

from grpc_messenger import ClientConfig, Messenger
from tests.conftest import Cluster

LEGACY_DIR = Path(__file__).parent / "legacy_proto"
Message = tuple[int, str, str, str]


@pytest.fixture(scope="module")
def original_gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("original_gen")
    args = ["protoc", f"-I{LEGACY_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", "messenger.proto"]
    assert protoc.main(args) == 0
    return out


class OriginalClient:
    def __init__(self, gen: Path, servers: tuple[str, ...]) -> None:
        self.base = [sys.executable, str(LEGACY_DIR / "original_client.py"), str(gen), ",".join(servers)]

    def _run(self, *args: str) -> object:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def send_to_all(self, msg_id: int, sender: str, recipient: str, text: str) -> list[bool]:
        result = self._run("send", str(msg_id), sender, recipient, text)
        assert isinstance(result, list)
        return result

    def receive_from_all(self, address: str) -> list[list[Message]]:
        result = self._run("receive", address)
        assert isinstance(result, list)
        return [[tuple(m) for m in inbox] for inbox in result]  # type: ignore[misc]


def extract_unique(inboxes: list[list[Message]]) -> list[Message]:
    return list(dict.fromkeys(m for inbox in inboxes for m in inbox))


def test_original_client_flow_against_three_replicas(shared_cluster: Cluster, original_gen: Path, mailbox: str) -> None:
    original = OriginalClient(original_gen, shared_cluster.servers)
    assert original.send_to_all(1, "original@example.org", mailbox, "first session, message 1") == [True] * 3
    assert original.send_to_all(2, "original@example.org", mailbox, "first session, message 2") == [True] * 3
    inboxes = original.receive_from_all(mailbox)
    assert all(len(inbox) == 2 for inbox in inboxes)
    assert extract_unique(inboxes) == [
        (1, "first session, message 1", "original@example.org", mailbox),
        (2, "first session, message 2", "original@example.org", mailbox),
    ]
    assert extract_unique(original.receive_from_all(mailbox)) == []
    # the original client restarts its counter at 1: a new message with an old id is not swallowed
    original.send_to_all(1, "original@example.org", mailbox, "second session, message 1")
    assert extract_unique(original.receive_from_all(mailbox)) == [
        (1, "second session, message 1", "original@example.org", mailbox)
    ]


def test_library_and_original_client_interoperate(
    shared_cluster: Cluster, original_gen: Path, mailbox: str, client_home: Path
) -> None:
    original = OriginalClient(original_gen, shared_cluster.servers)
    with Messenger(ClientConfig(servers=shared_cluster.servers, data_dir=client_home, write_quorum=3)) as m:
        m.send(sender="new@example.org", recipient=mailbox, body="from the library", settle=True)
        got = extract_unique(original.receive_from_all(mailbox))
        assert [(text, sender) for _, text, sender, _ in got] == [("from the library", "new@example.org")]
        original.send_to_all(1, "original@example.org", mailbox, "from the original client")
        assert [msg.body for msg in m.receive(mailbox).messages] == ["from the original client"]
