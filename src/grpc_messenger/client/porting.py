"""The original three-function flow, for code ported from the original client (README: Porting).

The original client did: send to every server, receive from every server, extract the
unique messages. These helpers keep that shape on top of the library, with
its guarantees (unique keys, quorum, linear de-duplication, no lost mail).
"""

from __future__ import annotations

from collections.abc import Iterable

from grpc_messenger.client.core import merge_unique
from grpc_messenger.client.sync import Messenger
from grpc_messenger.model import Message, SendReport


def send_to_all(messenger: Messenger, *, sender: str, recipient: str, body: str) -> SendReport:
    """Send one message to every replica (returns once W stored it)."""
    return messenger.send(sender=sender, recipient=recipient, body=body)


def receive_from_all(messenger: Messenger, address: str) -> list[Message]:
    """New messages for `address` from all replicas, stored locally and acked: nothing lost."""
    return list(messenger.receive(address).messages)


def extract_unique(batches: Iterable[Iterable[Message]]) -> list[Message]:
    """One message per key, in display order, in linear time (the original client's was O(n^2))."""
    return merge_unique(batches)
