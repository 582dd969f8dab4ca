"""Replica metrics in the Prometheus text format, on their own small HTTP listener.

One registry per replica (no global state), filled by a gRPC interceptor (every
unary RPC: count by method and status code, latency histogram) and by the
servicer and repairer (messages stored by outcome, repair work). Store sizes
are refreshed periodically by the replica, not computed on scrape, so a scrape
never waits on the database.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from grpc_messenger.config import parse_listen
from grpc_messenger.errors import InvalidInput
from grpc_messenger.store.base import StoreCounts

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ReplicaMetrics:
    """The metrics of one replica and, optionally, the HTTP listener that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpcs = Counter(
            "messenger_rpcs", "RPCs answered, by method and status code", ["method", "code"], registry=self.registry
        )
        self.rpc_seconds = Histogram(
            "messenger_rpc_seconds",
            "Time to answer an RPC",
            ["method"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.messages = Counter(
            "messenger_messages",
            "Messages a Send or SendBatch handled, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.repair = Counter(
            "messenger_repair",
            "Repair work done, by kind (pulled, tombstoned, rejected)",
            ["kind"],
            registry=self.registry,
        )
        self.repair_rounds = Counter(
            "messenger_repair_rounds", "Repair rounds with peers, by result", ["result"], registry=self.registry
        )
        self.stored = Gauge("messenger_store_messages", "Messages queued in the store", registry=self.registry)
        self.mailboxes = Gauge("messenger_store_mailboxes", "Mailboxes with queued messages", registry=self.registry)
        self.tombstones = Gauge("messenger_store_tombstones", "Tombstones kept", registry=self.registry)
        self.disk_full = Gauge(
            "messenger_store_disk_full",
            "1 while writes are refused because the data directory has no space left",
            registry=self.registry,
        )
        self.disk_free_bytes = Gauge(
            "messenger_store_disk_free_bytes", "Free bytes on the data directory's file system", registry=self.registry
        )
        self.store_bytes = Gauge(
            "messenger_store_bytes", "Bytes the store takes on disk (file, WAL, shm)", registry=self.registry
        )
        self.commit_ops = Histogram(
            "messenger_commit_ops",
            "Write operations (a SendBatch is one) group-committed with one fsync",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "messenger_commit_seconds",
            "Time one group commit took, fsync included",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.repair_differing = Gauge(
            "messenger_repair_mailboxes_differing",
            "Mailboxes that differed from the peer in the last round with it (0: in agreement)",
            ["peer"],
            registry=self.registry,
        )
        self.repair_last_ok = Gauge(
            "messenger_repair_last_success_timestamp_seconds",
            "Unix time of the last repair round with the peer that completed",
            ["peer"],
            registry=self.registry,
        )
        self.rebuilding = Gauge(
            "messenger_replica_rebuilding",
            "1 while the replica, started on an empty store, has not yet repaired from every peer",
            registry=self.registry,
        )
        self._http: Any = None

    def observe_store(self, counts: StoreCounts, *, rebuilding: bool) -> None:
        """Refresh the store gauges."""
        self.rebuilding.set(1 if rebuilding else 0)
        self.stored.set(counts.messages)
        self.mailboxes.set(counts.mailboxes)
        self.tombstones.set(counts.tombstones)

    def observe_disk(self, *, full: bool, free_bytes: int, store_bytes: int) -> None:
        """Refresh the disk gauges."""
        self.disk_full.set(1 if full else 0)
        self.disk_free_bytes.set(free_bytes)
        self.store_bytes.set(store_bytes)

    def observe_commit(self, ops: int, seconds: float) -> None:
        """One group commit of `ops` operations; called from the store's writer thread (thread-safe)."""
        self.commit_ops.observe(ops)
        self.commit_seconds.observe(seconds)

    def observe_repair_round(self, peer: str, *, ok: bool, mailboxes_differing: int) -> None:
        """The outcome of one repair round with `peer`: repair lag, as mailboxes still differing and age."""
        if ok:
            self.repair_differing.labels(peer).set(mailboxes_differing)
            self.repair_last_ok.labels(peer).set(time.time())

    def serve(self, address: str) -> int:
        """Serve /metrics on `address` (host:port, port 0 for any); return the port."""
        host, port = parse_listen(address)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise InvalidInput(f"cannot serve metrics on {address}: {exc}") from exc
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP listener, if any."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary RPC; counts each SendBatchStream call (by how it ended); other streams pass."""

    def __init__(self, metrics: ReplicaMetrics) -> None:
        self._metrics = metrics
        # method -> measured handler, built once (bounded by the services' methods)
        self._measured: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        cached: Any = self._measured.get(handler_call_details.method)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        metrics = self._metrics
        # label children looked up once per method (and per status code), not per call
        counted: dict[str, Any] = {}

        def count(context: Any) -> None:
            code = context.code() if hasattr(context, "code") else None
            name = code.name if isinstance(code, grpc.StatusCode) else "OK"
            counter = counted.get(name)
            if counter is None:
                counter = counted[name] = metrics.rpcs.labels(method, name)
            counter.inc()

        if handler.stream_stream is not None:
            # the send stream lives as long as its client: counted when it ends, not timed
            wrapped = grpc.stream_stream_rpc_method_handler(
                _counted_stream(handler.stream_stream, count),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                _timed(handler.unary_unary, count, metrics.rpc_seconds.labels(method)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:
            return handler
        self._measured[handler_call_details.method] = wrapped
        return wrapped


def _timed(inner: Any, count: Callable[[Any], None], seconds: Any) -> Callable[[Any, Any], Awaitable[Any]]:
    """A unary handler (an async callable under grpc.aio) counted by status and timed."""

    async def measured(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return await inner(request, context)
        finally:
            count(context)
            seconds.observe(time.perf_counter() - started)

    return measured


def _counted_stream(inner: Any, count: Callable[[Any], None]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    """A stream-stream handler counted by how the call ended."""

    async def measured_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for answer in inner(requests, context):
                yield answer
        finally:
            count(context)

    return measured_stream
