"""ReplicaService handlers: what a peer asks of this replica during repair."""

from __future__ import annotations

from typing import Any

import grpc

from grpc_messenger import wire
from grpc_messenger.errors import InvalidInput
from grpc_messenger.model import validate_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.servicer import guarded, mailbox_of
from grpc_messenger.store.base import Store

DIGESTS_PAGE_MAX = 1000
KEYS_PAGE_MAX = 5000
PULL_KEYS_MAX = 1000


def _limit(requested: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidInput("limit must not be negative")
    return min(requested or maximum, maximum)


class ReplicaServicer(pb_grpc.ReplicaServiceServicer):
    """Serves this replica's digests, key lists and messages to its peers."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @guarded
    async def Digests(
        self, request: pb.DigestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DigestsResponse:
        limit = _limit(request.limit, DIGESTS_PAGE_MAX)
        found = await self._store.digests(after_mailbox=request.after_mailbox, limit=limit + 1)
        return wire.digests_response(
            ((d.mailbox, d.digest, d.messages, d.tombstones) for d in found[:limit]), more=len(found) > limit
        )

    @guarded
    async def MailboxKeys(
        self, request: pb.MailboxKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MailboxKeysResponse:
        mailbox = mailbox_of(request.mailbox)
        limit = _limit(request.limit, KEYS_PAGE_MAX)
        states = await self._store.key_states(mailbox, after_key=request.after_key, limit=limit + 1)
        return wire.keys_response(
            ((k.key, k.tombstone, k.deleted_unix_ms) for k in states[:limit]), more=len(states) > limit
        )

    @guarded
    async def Pull(self, request: pb.PullRequest, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        mailbox = mailbox_of(request.mailbox)
        if len(request.keys) > PULL_KEYS_MAX:
            raise InvalidInput(f"pull asks for {len(request.keys)} keys; the limit is {PULL_KEYS_MAX}")
        keys = [validate_key(k) for k in request.keys]
        return wire.messages_response(await self._store.get_queued_wire(mailbox, keys))
