"""The one place where gRPC's status codes and errors meet ours.

Every transport call site wraps its call in `map_rpc_errors()`, which turns a
`grpc.RpcError` (sync or aio) into the most specific MessengerError, the way
httpx's `map_exceptions` does for its transports; handlers answer our errors
with `to_grpc(error.code)`. Nothing above this line sees a grpc exception or
parses an error string.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from grpc_messenger.errors import MessengerError, Status, from_status

_TO_GRPC: dict[Status, grpc.StatusCode] = {Status(code.value[0]): code for code in grpc.StatusCode}
_FROM_GRPC: dict[grpc.StatusCode, Status] = {code: status for status, code in _TO_GRPC.items()}
assert len(_TO_GRPC) == len(Status), "every Status has a grpc.StatusCode"


def to_grpc(code: Status) -> grpc.StatusCode:
    """The grpc.StatusCode a handler answers with."""
    return _TO_GRPC[code]


def from_grpc(code: grpc.StatusCode) -> Status:
    """Our Status for a grpc.StatusCode."""
    return _FROM_GRPC.get(code, Status.UNKNOWN)


def from_rpc_error(error: grpc.RpcError) -> MessengerError:
    """The MessengerError for a grpc.RpcError (sync or aio)."""
    if isinstance(error, (grpc.aio.AioRpcError, grpc.Call)):
        return from_status(from_grpc(error.code()), error.details() or "")
    return from_status(Status.UNKNOWN, str(error))


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Raise the MessengerError for any grpc.RpcError raised inside (the original as its cause)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
