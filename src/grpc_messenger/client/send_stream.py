"""Batches to one replica on one long-lived SendBatchStream call instead of a call each.

A unary call costs gRPC's Python stack a few hundred microseconds of CPU on
each side whatever it carries; a message on an open stream about half as much.
Batches are written in order and answered in order. Each waits at most the
call timeout for its answer, as a unary call would; a stream that lets one
batch wait that long is abandoned (that batch fails with DEADLINE_EXCEEDED)
and the next batch opens a new stream. A failed or ended
stream fails the oldest batch waiting on it with its status (the replica ends
the call right after a batch it refused whole) and those behind it as
UNAVAILABLE: they are in doubt, exactly as after a failed unary SendBatch, and
the fan-out treats them so.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import grpc

from grpc_messenger import wire

log = logging.getLogger(__name__)

OpenCall = Callable[[], "grpc.aio.StreamStreamCall[bytes, wire.SendBatchResponse]"]


def _status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _unanswered() -> grpc.aio.AioRpcError:
    return _status(grpc.StatusCode.UNAVAILABLE, "the send stream ended before this batch was answered")


def _retrieve(future: asyncio.Future[wire.SendBatchResponse]) -> None:
    if not future.cancelled():
        future.exception()


class _Call:
    """One open stream and the answers still owed on it, oldest first."""

    def __init__(self, call: grpc.aio.StreamStreamCall[bytes, wire.SendBatchResponse]) -> None:
        self.call = call
        self.waiting: deque[asyncio.Future[wire.SendBatchResponse]] = deque()
        self.failure: grpc.aio.AioRpcError | None = None
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for answer in self.call:
                if not self.waiting:
                    self._fail(_status(grpc.StatusCode.INTERNAL, "replica answered a batch never sent"))
                    return
                owed = self.waiting.popleft()
                if not owed.done():  # its sender may have given up; the answer still keeps the order
                    owed.set_result(answer)
            self._fail(_status(grpc.StatusCode.UNAVAILABLE, "replica ended the send stream (stopping?)"))
        except grpc.aio.AioRpcError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(_status(grpc.StatusCode.CANCELLED, "send stream closed"))
            raise
        except Exception as exc:  # an answer that does not decode, say: never leave batches waiting
            log.warning("event=send.stream_failed error=%r", exc)
            self._fail(_status(grpc.StatusCode.INTERNAL, f"send stream failed: {exc}"))

    def _fail(self, failure: grpc.aio.AioRpcError) -> None:
        if self.failure is None:
            self.failure = failure
        # The replica answers in order and ends the call right after a batch that failed
        # as a whole: the oldest batch waiting is the one the status is about. Those
        # behind it were never read (or never answered): in doubt, retryable, whatever
        # refused the first. An older replica refuses them all alike (UNIMPLEMENTED).
        alike = self.failure.code() == grpc.StatusCode.UNIMPLEMENTED
        first = True
        while self.waiting:
            owed = self.waiting.popleft()
            if not owed.done():
                owed.set_exception(self.failed() if first or alike else _unanswered())
            first = False
        self.call.cancel()

    def failed(self) -> grpc.aio.AioRpcError:
        """A fresh error with this stream's status (one instance per batch: each is raised on its own)."""
        assert self.failure is not None
        return _status(self.failure.code(), self.failure.details() or "")

    def abandon(self, failure: grpc.aio.AioRpcError) -> None:
        """Give up on this stream: every batch still waiting on it fails with `failure`."""
        self._fail(failure)
        self.reader.cancel()


class SendStream:
    """SendBatch over one long-lived call, reopened after it fails (see module docstring)."""

    def __init__(self, open_call: OpenCall, *, timeout_s: float) -> None:
        self._open_call = open_call
        self._timeout_s = timeout_s
        self._current: _Call | None = None
        self._write_lock = asyncio.Lock()  # one writer at a time keeps answers in the order of requests

    async def send(self, payload: bytes) -> wire.SendBatchResponse:
        """Send one serialized SendBatchRequest; its answer, or the stream's failure (a grpc.aio.AioRpcError)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[wire.SendBatchResponse] = loop.create_future()
        answer.add_done_callback(_retrieve)  # a sender that gave up leaves its failure unread
        deadline = loop.time() + self._timeout_s
        async with self._write_lock:
            current = self._current
            if current is None or current.failure is not None:
                current = self._current = _Call(self._open_call())
            current.waiting.append(answer)
            try:
                await asyncio.wait_for(current.call.write(payload), self._timeout_s)
            except TimeoutError:  # flow control held the batch back all that time
                current.abandon(_status(grpc.StatusCode.DEADLINE_EXCEEDED, "replica did not take the batch in time"))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass  # the stream ended: its reader fails `answer` with the stream's status
        try:
            return await asyncio.wait_for(asyncio.shield(answer), max(0.0, deadline - loop.time()))
        except TimeoutError:
            current.abandon(_status(grpc.StatusCode.DEADLINE_EXCEEDED, "replica did not answer the batch in time"))
            if self._current is current:
                self._current = None
            raise current.failed() from None

    async def close(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.abandon(_status(grpc.StatusCode.CANCELLED, "client closed"))
            await asyncio.gather(current.reader, return_exceptions=True)
