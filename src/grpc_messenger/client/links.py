"""The client's connections: one long-lived channel per replica, and the calls made on it.

Every call here has a deadline and maps gRPC failures at the call itself
(grpc_errors.map_rpc_errors); above this module replicas answer with values.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_messenger import wire
from grpc_messenger.client.send_stream import SendStream
from grpc_messenger.config import GRPC_MESSAGE_BYTES_MAX, ClientConfig
from grpc_messenger.errors import Failure, MessengerError
from grpc_messenger.grpc_errors import map_rpc_errors
from grpc_messenger.model import Message, ReplicaStatus
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.security import tls

log = logging.getLogger(__name__)

_SEND_BATCH_METHOD = "/messenger.MessengerService/SendBatch"
_SEND_BATCH_STREAM_METHOD = "/messenger.MessengerService/SendBatchStream"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
    # a replica that comes back is used again within about a second. Not
    # grpc.min_reconnect_backoff_ms: gRPC takes it as the connect timeout too, and at
    # 200 ms a replica whose handshake is slower (a loaded host, a long round trip) was
    # never reached at all; left at its default, a handshake may take up to 20 s
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # a connection that went silent (a cut without a reset) is noticed in ~15 s, not
    # after minutes of TCP retries; replicas allow these pings (server/replica.py)
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def _identity(data: bytes) -> bytes:
    return data


@dataclass(slots=True)
class Link:
    """Everything the client holds for one replica."""

    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.MessengerServiceAsyncStub
    health: health_pb2_grpc.HealthStub
    timeout_s: float
    metadata: tuple[tuple[str, str], ...] | None
    _send_bytes: grpc.aio.UnaryUnaryMultiCallable[bytes, wire.SendBatchResponse]
    # None once the replica turned out not to know SendBatchStream (an older version)
    _stream: SendStream | None

    async def send_bytes(self, payload: bytes) -> wire.SendBatchResponse:
        """Store one already serialized SendBatchRequest on this replica (grpc errors raise).

        On the link's send stream; by a unary SendBatch call to a replica without one.
        """
        stream = self._stream
        if stream is not None:
            try:
                return await stream.send(payload)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                log.info("event=send.stream_unsupported replica=%s using=SendBatch", self.address)
                self._stream = None
                await stream.close()
        return await self._send_bytes(payload, timeout=self.timeout_s, metadata=self.metadata)

    async def close(self) -> None:
        """End the send stream and close the channel (calls still in flight fail CANCELLED)."""
        if self._stream is not None:
            await self._stream.close()
        await self.channel.close()

    async def redeliver(self, messages: Sequence[Message]) -> Failure | None:
        """Re-send owed messages; None once the replica holds them or refused them for good."""
        try:
            with map_rpc_errors():
                response = await self.send_bytes(wire.batch_payload(messages))
        except MessengerError as error:
            return Failure.of(error)
        return wire.redelivery_failure(response, len(messages))

    async def status(self) -> ReplicaStatus:
        """Reachability, health, counts and round-trip latency of this replica."""
        started = time.perf_counter()
        try:
            with map_rpc_errors():
                info = await self.stub.Info(wire.info_request(), timeout=self.timeout_s, metadata=self.metadata)
                latency_ms = (time.perf_counter() - started) * 1000
                health = await self.health.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s, metadata=self.metadata
                )
        except MessengerError as error:
            return ReplicaStatus(address=self.address, reachable=False, failure=Failure.of(error))
        return wire.replica_status(
            info,
            address=self.address,
            serving=health.status == health_pb2.HealthCheckResponse.SERVING,
            latency_ms=latency_ms,
        )


def open_links(config: ClientConfig) -> list[Link]:
    """One lazily connected channel per configured replica (never blocks)."""
    credentials = (
        tls.channel_credentials(ca=config.tls_ca, cert=config.tls_client_cert, key=config.tls_client_key)
        if config.uses_tls
        else None
    )
    links = []
    for address in config.servers:
        if credentials is not None:
            channel = grpc.aio.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        send_bytes = channel.unary_unary(
            _SEND_BATCH_METHOD,
            request_serializer=_identity,
            response_deserializer=wire.SendBatchResponse.FromString,
        )
        open_stream = channel.stream_stream(
            _SEND_BATCH_STREAM_METHOD,
            request_serializer=_identity,
            response_deserializer=wire.SendBatchResponse.FromString,
        )
        metadata = config.call_metadata or None
        links.append(
            Link(
                address=address,
                channel=channel,
                stub=pb_grpc.MessengerServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
                timeout_s=config.timeout_s,
                metadata=metadata,
                _send_bytes=send_bytes,
                _stream=SendStream(functools.partial(open_stream, metadata=metadata), timeout_s=config.timeout_s),
            )
        )
    return links
