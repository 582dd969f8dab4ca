"""Helpers for the security tests: keys, tokens, raw stubs, and a view of a replica's SQLite file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.security import tokens
from grpc_messenger.server.replica import STORE_FILE
from tests.conftest import ReplicaProcess

CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Keys:
    """A key pair on disk, as `messenger keys init` writes it."""

    directory: Path
    private: Ed25519PrivateKey

    @property
    def public_path(self) -> Path:
        return self.directory / tokens.PUBLIC_KEY_FILE

    def token(self, subject: str, *, role: tokens.Role = tokens.Role.USER, ttl_s: int = 3600, **kw: Any) -> str:
        return tokens.issue(self.private, subject=subject, role=role, ttl_s=ttl_s, **kw)


def make_keys(directory: Path) -> Keys:
    private_path, _ = tokens.generate_key_pair(directory)
    return Keys(directory, tokens.load_private_key(private_path))


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


@contextmanager
def stub_for(
    address: str, *, credentials: grpc.ChannelCredentials | None = None
) -> Iterator[pb_grpc.MessengerServiceStub]:
    """A synchronous stub on a fresh channel, closed afterwards."""
    channel = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    try:
        yield pb_grpc.MessengerServiceStub(channel)
    finally:
        channel.close()


def call_code(method: Any, request: Any, *, token: str | None = None, **kw: Any) -> tuple[grpc.StatusCode, str]:
    """Make one call; (status code, details); OK calls give (OK, "")."""
    try:
        method(request, metadata=bearer(token), timeout=CALL_TIMEOUT_S, **kw)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@dataclass(frozen=True)
class StoreSnapshot:
    """Everything a replica's SQLite store holds, in a comparable form."""

    messages: tuple[tuple[Any, ...], ...]
    tombstones: tuple[tuple[Any, ...], ...]
    usage: tuple[tuple[Any, ...], ...]


def store_path(replica: ReplicaProcess) -> Path:
    return replica.data_dir / STORE_FILE


@contextmanager
def read_store(replica: ReplicaProcess) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a live replica's store (WAL lets it read while the replica writes)."""
    conn = sqlite3.connect(f"file:{store_path(replica)}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def snapshot(replica: ReplicaProcess) -> StoreSnapshot:
    with read_store(replica) as conn:
        return StoreSnapshot(
            # a row whose key has a tombstone is acked and only waits for the replica's sweep: not queued
            messages=tuple(
                conn.execute(
                    "SELECT mailbox, msg_key, digest, wire FROM messages WHERE NOT EXISTS (SELECT 1 FROM tombstones"
                    " WHERE tombstones.mailbox = messages.mailbox AND tombstones.msg_key = messages.msg_key)"
                    " ORDER BY seq"
                ).fetchall()
            ),
            tombstones=tuple(conn.execute("SELECT * FROM tombstones ORDER BY mailbox, msg_key").fetchall()),
            usage=tuple(
                conn.execute(
                    "SELECT mailbox, messages, body_bytes FROM mailboxes WHERE messages > 0 ORDER BY mailbox"
                ).fetchall()
            ),
        )


def integrity_ok(replica: ReplicaProcess) -> bool:
    with read_store(replica) as conn:
        return [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()] == ["ok"]


def wait_healthy(address: str, *, credentials: grpc.ChannelCredentials | None = None, timeout_s: float = 10) -> None:
    """Fail unless the replica's health service answers SERVING within `timeout_s`."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    channel = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        channel.close()
