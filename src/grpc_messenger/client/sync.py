"""A synchronous facade: the asyncio client run on a private event-loop thread.

For scripts and for code ported from the original synchronous client. Every
method blocks until the async core answers; nothing is reimplemented here, so
the two cannot drift.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from grpc_messenger.client.core import AsyncMessenger
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.client.outbox import OwedDelivery
from grpc_messenger.client.subscribe import BlockingSubscription, SubscribeOptions, Subscription
from grpc_messenger.config import ClientConfig
from grpc_messenger.errors import Failure
from grpc_messenger.model import Draft, ReadReport, ReplicaStatus, SendReport

T = TypeVar("T")


class Messenger:
    """Blocking client of a replica group. Use as `with Messenger(...) as m:`."""

    def __init__(self, config: ClientConfig | None = None, *, inbox: LocalInbox | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="messenger-loop", daemon=True)
        self._thread.start()
        self._core = AsyncMessenger(config, inbox=inbox)
        self._run(self._connect())

    async def _connect(self) -> None:
        self._core.connect()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def config(self) -> ClientConfig:
        """The configuration in use."""
        return self._core.config

    @property
    def inbox(self) -> LocalInbox:
        """The local inbox."""
        return self._core.inbox

    def send(
        self, *, sender: str, recipient: str, body: str, key: str | None = None, settle: bool = False
    ) -> SendReport:
        """See AsyncMessenger.send."""
        return self._run(self._core.send(sender=sender, recipient=recipient, body=body, key=key, settle=settle))

    def send_many(self, drafts: Iterable[Draft]) -> list[SendReport]:
        """See AsyncMessenger.send_many."""
        return self._run(self._core.send_many(list(drafts)))

    def receive(self, address: str, *, limit: int | None = None) -> ReadReport:
        """See AsyncMessenger.receive."""
        return self._run(self._core.receive(address, limit=limit))

    def fetch(self, address: str) -> ReadReport:
        """See AsyncMessenger.fetch."""
        return self._run(self._core.fetch(address))

    def ack(self, address: str, keys: Sequence[str]) -> dict[str, Failure | None]:
        """See AsyncMessenger.ack."""
        return self._run(self._core.ack(address, keys))

    def flush_outbox(self) -> int:
        """See AsyncMessenger.flush_outbox."""
        return self._run(self._core.flush_outbox())

    def outbox_owed(self) -> tuple[int, int]:
        """See AsyncMessenger.outbox_owed."""
        return self._run(self._core.outbox_owed())

    def outbox_listing(self, *, limit: int = 1000) -> list[OwedDelivery]:
        """See AsyncMessenger.outbox_listing."""
        return self._run(self._core.outbox_listing(limit=limit))

    def status(self) -> list[ReplicaStatus]:
        """See AsyncMessenger.status."""
        return self._run(self._core.status())

    def close(self) -> None:
        """Finish sends in flight, close channels, stop the loop thread."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._core.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Messenger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def subscribe(self, address: str, *, options: SubscribeOptions | None = None) -> BlockingSubscription:
        """See AsyncMessenger.subscribe: a plain iterator; use as `with m.subscribe(a) as sub: for m in sub: ...`."""
        subscription = self._run(self._subscribe(address, options))
        return BlockingSubscription(subscription, self._run)

    async def _subscribe(self, address: str, options: SubscribeOptions | None) -> Subscription:
        return self._core.subscribe(address, options=options)
