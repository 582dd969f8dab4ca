"""The MessengerError tree, status codes and failures as values.

Errors are grouped by what a caller can do about them: fix the input,
authenticate, back off, or try again later. Each class carries its `Status`
(`.code`, what a handler answers with); `from_status` is the way back, for a
status a replica sent. A `Failure` is the same information as a value, for
outcomes that are reported rather than raised (one replica of three failed).

Nothing here imports grpc: the mapping to and from `grpc.StatusCode` lives in
grpc_errors.py, so the model, config and store never load grpc.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.IntEnum):
    """A call's status: gRPC's codes, by the same names and numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class MessengerError(Exception):
    """Root of every error this package raises on purpose."""

    code: Status = Status.UNKNOWN


class InvalidInput(MessengerError, ValueError):
    """The request is malformed; retrying it unchanged will fail again."""

    code = Status.INVALID_ARGUMENT


class KeyConflict(MessengerError):
    """A message key is already stored with different content (a client bug)."""

    code = Status.ALREADY_EXISTS


class Unauthenticated(MessengerError):
    """No credential, or one that is expired, malformed or wrongly signed."""

    code = Status.UNAUTHENTICATED


class PermissionDenied(MessengerError):
    """The credential is valid but does not allow this mailbox or sender."""

    code = Status.PERMISSION_DENIED


class ResourceExhausted(MessengerError):
    """A limit (quota, rate, size) was hit; back off and retry later."""

    code = Status.RESOURCE_EXHAUSTED


class Unavailable(MessengerError):
    """Not enough replicas could be reached; retrying later may succeed."""

    code = Status.UNAVAILABLE


class DeadlineExceeded(MessengerError, TimeoutError):
    """A call ran out of time; its effect on the replica is unknown."""

    code = Status.DEADLINE_EXCEEDED


class StoreError(MessengerError):
    """The replica's store failed or found damage; the replica is not serving it."""

    code = Status.UNAVAILABLE


class InboxError(MessengerError):
    """The reader's local inbox cannot store (full disk, too many open files): nothing was acked."""

    code = Status.RESOURCE_EXHAUSTED


_BY_CODE: dict[Status, type[MessengerError]] = {
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
# A refusal that every retry of the same call meets again (fix the input or the credential).
FINAL_REFUSALS = frozenset({Status.UNAUTHENTICATED, Status.PERMISSION_DENIED, Status.INVALID_ARGUMENT})


def from_status(code: Status, details: str) -> MessengerError:
    """The most specific MessengerError for a status received from a replica."""
    cls = _BY_CODE.get(code, MessengerError)
    error = cls(details or code.name)
    if cls is MessengerError:
        error.code = code
    return error


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a replica did not do its part: a status code and its detail, as values."""

    code: Status
    detail: str = ""

    @classmethod
    def of(cls, error: MessengerError) -> Failure:
        """The failure a raised error describes."""
        return cls(error.code, str(error))

    @property
    def final(self) -> bool:
        """True when retrying the same call cannot help (bad input or credential)."""
        return self.code in FINAL_REFUSALS

    @property
    def denied(self) -> bool:
        """True for a refused credential: later delivery under another token must not happen."""
        return self.code in (Status.UNAUTHENTICATED, Status.PERMISSION_DENIED)

    def to_error(self) -> MessengerError:
        """The error to raise for this failure."""
        return from_status(self.code, self.detail)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.detail}" if self.detail else self.code.name
