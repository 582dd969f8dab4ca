"""A replica whose connection handshake is slow (a loaded host, a long round trip) is still reached."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpc_messenger import AsyncMessenger, ClientConfig, ReplicaState
from grpc_messenger.chaos.proxy import FaultProxy, ProxyMode
from tests.conftest import ReplicaFactory, queued_keys

# every byte each way held this long: the HTTP/2 handshake takes a few of these, twice the
# reconnect backoff (200 ms) and more
HANDSHAKE_DELAY_MS = 400
WAIT_S = 60.0


def test_a_replica_with_a_slow_handshake_is_reached_not_refused(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    replica = replica_factory.replica()

    async def run() -> tuple[bool, ReplicaState]:
        proxy = FaultProxy(name="slow", upstream=replica.address)
        await proxy.start()
        try:
            proxy.set_mode(ProxyMode.DELAY, delay_ms=HANDSHAKE_DELAY_MS)
            config = ClientConfig(servers=(proxy.address,), data_dir=client_home, timeout_s=WAIT_S)
            async with AsyncMessenger(config) as m:
                (status,) = await m.status()
                report = await m.send(sender="ann@example.org", recipient="bob@example.org", body="slow link")
                return status.reachable, report.replicas[0].state
        finally:
            await proxy.close()

    reachable, state = asyncio.run(asyncio.wait_for(run(), 2 * WAIT_S))
    assert reachable
    assert state is ReplicaState.STORED
    assert len(queued_keys(replica.address, "bob@example.org")) == 1
