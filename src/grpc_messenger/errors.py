"""The MessengerError tree and its mapping to and from gRPC status codes.

Grouped by what a caller can do about it: fix the input, authenticate, back
off, or try again later. Each class carries its status code (`.code`, what a
handler answers with); `from_status` is the way back, for statuses a replica sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from grpc_messenger.model import SendReport


class MessengerError(Exception):
    """Root of every error this package raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidInput(MessengerError, ValueError):
    """The request is malformed; retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class KeyConflict(MessengerError):
    """A message key is already stored with different content (a client bug)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(MessengerError):
    """No credential, or one that is expired, malformed or wrongly signed."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MessengerError):
    """The credential is valid but does not allow this mailbox or sender."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MessengerError):
    """A limit (quota, rate, size) was hit; back off and retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MessengerError):
    """Not enough replicas could be reached; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class QuorumNotReached(Unavailable):
    """Fewer than W replicas acknowledged a send; `report` says which did what."""

    def __init__(self, message: str, report: SendReport) -> None:
        super().__init__(message)
        self.report = report


class DeadlineExceeded(MessengerError, TimeoutError):
    """A call ran out of time; its effect on the replica is unknown."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class StoreError(MessengerError):
    """The replica's store failed or found damage; the replica is not serving it."""

    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE: dict[grpc.StatusCode, type[MessengerError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        KeyConflict,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_status(code: grpc.StatusCode, details: str) -> MessengerError:
    """The most specific MessengerError for a status received from a replica."""
    cls = _BY_CODE.get(code, MessengerError)
    error = cls(details or code.name)
    if cls is MessengerError:
        error.code = code
    return error


def from_rpc_error(error: grpc.RpcError) -> MessengerError:
    """Translate a grpc.RpcError (sync or aio) into a MessengerError."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return from_status(code, details or "")
