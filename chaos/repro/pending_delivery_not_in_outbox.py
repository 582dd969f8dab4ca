"""Repro: a delivery still pending when send() returns is not in the durable outbox yet."""

import asyncio
import shutil
import tempfile
from pathlib import Path

from grpc_messenger import AsyncMessenger, ClientConfig
from grpc_messenger.chaos.cluster import ChaosCluster
from grpc_messenger.chaos.proxy import ProxyMode


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="pending-"))
    cluster = ChaosCluster(root=root, repair=False)
    try:
        await cluster.start()
        cluster.sender_proxies[1].set_mode(ProxyMode.DROP)  # r2, r3: black hole (slow, not refused)
        cluster.sender_proxies[2].set_mode(ProxyMode.DROP)
        cfg = ClientConfig(servers=cluster.sender_servers, timeout_s=5.0, data_dir=root / "sender")
        m = AsyncMessenger(cfg)
        m.connect()
        report = await m.send(sender="s@x.org", recipient="mb@x.org", body="hello", key="k-pending-1")
        print("send ok:", report.ok, [r.state.value for r in report.replicas])
        print("outbox owed right after send:", await m.outbox_owed())
        # the sender process dies now (no close): a fresh client on the same data dir sees
        m2 = AsyncMessenger(cfg)
        m2.connect()
        print("outbox owed seen by the next start:", await m2.outbox_owed())
        await m2.close()
        await asyncio.sleep(5.5)
        print("owed after the deadline fired in the first client:", await m.outbox_owed())
        await m.close()
    finally:
        await cluster.close()
        shutil.rmtree(root, ignore_errors=True)


asyncio.run(asyncio.wait_for(main(), 60))
