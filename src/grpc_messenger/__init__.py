"""grpc-messenger: a replicated mailbox service on gRPC.

Send each message to N replicas at once, read from all of them, and show
every message to its reader exactly once.
"""

from grpc_messenger._version import __version__
from grpc_messenger.client.core import AsyncMessenger, merge_unique
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.client.subscribe import BlockingSubscription, StreamState, SubscribeOptions, Subscription
from grpc_messenger.client.sync import Messenger
from grpc_messenger.config import ClientConfig, ServerConfig
from grpc_messenger.errors import (
    DeadlineExceeded,
    Failure,
    InboxError,
    InvalidInput,
    KeyConflict,
    MessengerError,
    PermissionDenied,
    ResourceExhausted,
    Status,
    StoreError,
    Unauthenticated,
    Unavailable,
)
from grpc_messenger.model import (
    Draft,
    Message,
    QuorumNotReached,
    ReadReport,
    ReplicaOutcome,
    ReplicaState,
    ReplicaStatus,
    SendReport,
)

__all__ = [
    "AsyncMessenger",
    "BlockingSubscription",
    "ClientConfig",
    "DeadlineExceeded",
    "Draft",
    "Failure",
    "InboxError",
    "InvalidInput",
    "KeyConflict",
    "LocalInbox",
    "Message",
    "Messenger",
    "MessengerError",
    "PermissionDenied",
    "QuorumNotReached",
    "ReadReport",
    "ReplicaOutcome",
    "ReplicaState",
    "ReplicaStatus",
    "ResourceExhausted",
    "SendReport",
    "ServerConfig",
    "Status",
    "StoreError",
    "StreamState",
    "SubscribeOptions",
    "Subscription",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "merge_unique",
]
