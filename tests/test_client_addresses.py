"""The client reads one mailbox however its address is capitalised."""

from __future__ import annotations

from pathlib import Path

from grpc_messenger import ClientConfig, Messenger
from tests.conftest import Cluster


def test_receive_fetch_and_ack_ignore_the_capitals_of_the_address(
    shared_cluster: Cluster, client_home: Path, mailbox: str
) -> None:
    config = ClientConfig(servers=shared_cluster.servers, data_dir=client_home, write_quorum=3, timeout_s=10.0)
    shouted = mailbox.upper()
    with Messenger(config) as m:
        sent = [m.send(sender="alice@example.org", recipient=mailbox, body=f"hi {i}").key for i in range(3)]
        assert sorted(msg.key for msg in m.fetch(shouted).messages) == sorted(sent)
        acked = m.ack(shouted, sent[:1])
        assert all(failure is None for failure in acked.values())
        first = m.receive(shouted)
        again = m.receive(mailbox)
        assert sorted(msg.key for msg in first.messages) == sorted(sent[1:])
        assert again.messages == ()
        # one local inbox for every spelling
        assert m.inbox.count(mailbox) == m.inbox.count(shouted) == 2
        assert {msg.recipient for msg in m.inbox.history(shouted)} == {mailbox}
