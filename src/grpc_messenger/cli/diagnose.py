"""Why replicas did not answer, in words a person can act on.

gRPC reports a plaintext client talking to a TLS replica as "Socket closed",
once per replica. When no replica answers and the client is not using TLS, one
TLS handshake with the first replica tells whether TLS is what is missing.
"""

from __future__ import annotations

import socket
import ssl

from grpc_messenger.config import ClientConfig, parse_listen

PROBE_TIMEOUT_S = 2.0


def speaks_tls(address: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TLS handshake with `address` completes (its certificate is not checked: only the protocol)."""
    host, port = parse_listen(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def tls_hint(config: ClientConfig) -> str | None:
    """A hint when the client talks plaintext to replicas that speak TLS, else None."""
    if config.uses_tls:
        return None
    if not speaks_tls(config.servers[0], timeout_s=min(config.timeout_s, PROBE_TIMEOUT_S)):
        return None
    return (
        f"{config.servers[0]} speaks TLS and this client does not: pass --tls-ca CA.pem "
        "(e.g. messenger-data/tls/ca.pem from `messenger cluster --secure`) or --tls to trust the system CAs "
        "[env MESSENGER_TLS_CA, MESSENGER_TLS]"
    )
