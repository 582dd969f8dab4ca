"""How a replica calls its peers (repair): TLS if configured, and a peer token on every call.

A peer token (`messenger token issue replica-1 --peer`) is the credential the
ReplicaService RPCs demand when auth is on; a user token is refused there. In a
mutual-TLS cluster the replica also presents its own certificate to its peers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from grpc_messenger.security import tls

ChannelFactory = Callable[[str], grpc.aio.Channel]


class _BearerInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        metadata = [*(client_call_details.metadata or ()), self._entry]
        details = client_call_details._replace(metadata=metadata)
        return await continuation(details, request)


def peer_channel_factory(
    *,
    token: str,
    tls_ca: Path | None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> ChannelFactory:
    """Channels to peers: TLS trusting `tls_ca` (plain if None), the peer token on each call."""
    credentials = tls.channel_credentials(ca=tls_ca, cert=client_cert, key=client_key) if tls_ca is not None else None
    interceptors = [_BearerInterceptor(token)] if token else None

    def open_channel(address: str) -> grpc.aio.Channel:
        if credentials is not None:
            return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)

    return open_channel
