"""A reader killed at any step of receive() shows nothing twice and leaves nothing queued for good.

The last round of a read stores what it fetched and takes the caller's unshown
messages in one inbox transaction, then acks. A reader process dies (os._exit,
no clean-up) just before that transaction or just after it, before any ack;
the next read from the same home must then show exactly what was never marked
shown and ack every copy on every replica.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grpc_messenger import ClientConfig, Draft, Messenger
from grpc_messenger.client.inbox import LocalInbox
from tests.conftest import ReplicaFactory

_DYING_READER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from grpc_messenger import ClientConfig, Messenger
    from grpc_messenger.client import inbox, reads

    def die(*args, **kwargs):
        os._exit(9)

    if sys.argv[4] == "before-commit":
        inbox.LocalInbox.store_and_take = die
    else:  # after the commit, before the first ack leaves
        reads.ack = die
    config = ClientConfig(servers=tuple(sys.argv[1].split(",")), data_dir=Path(sys.argv[2]), outbox=False, timeout_s=10)
    with Messenger(config) as m:
        m.receive(sys.argv[3])
    sys.exit(0)  # not reached: the read dies at the step named
    """
)


@pytest.mark.parametrize("step", ["before-commit", "after-commit"])
def test_a_reader_killed_around_its_inbox_commit_shows_nothing_twice_and_acks_everything_later(
    replica_factory: ReplicaFactory, client_home: Path, mailbox: str, step: str
) -> None:
    cluster = replica_factory.cluster(2)
    config = ClientConfig(servers=cluster.servers, data_dir=client_home, write_quorum=2, timeout_s=10.0)
    with Messenger(config) as m:
        reports = m.send_many(Draft("alice@example.org", mailbox, f"crash {i}") for i in range(40))
    sent = sorted(r.key for r in reports if r.ok)
    assert len(sent) == 40
    died = subprocess.run(
        [sys.executable, "-c", _DYING_READER, ",".join(cluster.servers), str(client_home), mailbox, step],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert died.returncode == 9, died.stderr[-2000:]
    with Messenger(config) as m:
        shown = [msg.key for msg in m.receive(mailbox).messages]
        again = m.receive(mailbox)
        left = m.fetch(mailbox).messages
    inbox = LocalInbox.in_dir(client_home)
    try:
        held = [msg.key for msg in inbox.history(mailbox)]
    finally:
        inbox.close()
    # before the commit nothing was stored or marked shown: the next read shows all; after it,
    # all were marked shown by the read that died (handed to no one, as when a caller dies
    # right after receive() returns), so the next read shows none of them again
    assert sorted(shown) == (sent if step == "before-commit" else [])
    assert again.messages == ()
    assert left == ()  # every replica's copy was acked by the next read
    assert sorted(held) == sent  # each key held once
