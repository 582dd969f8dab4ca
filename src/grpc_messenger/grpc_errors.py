"""The one place where gRPC's errors meet ours.

Every transport call site wraps its call in `map_rpc_errors()`, which turns a
`grpc.RpcError` (sync or aio) into the most specific MessengerError, the way
httpx's `map_exceptions` does for its transports. Nothing above this line
sees a grpc exception or parses an error string.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from grpc_messenger.errors import MessengerError, from_rpc_error


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Raise the MessengerError for any grpc.RpcError raised inside (the original as its cause)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc


__all__ = ["MessengerError", "map_rpc_errors"]
