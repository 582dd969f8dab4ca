"""A one-shot grpc.health.v1 check, for container health checks and Kubernetes exec probes."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check_health(
    address: str, *, service: str = "", tls_ca: Path | None = None, server_name: str | None = None, timeout_s: float
) -> str:
    """The replica's serving status for `service` ("SERVING", "NOT_SERVING", ...) or the gRPC code that failed."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
