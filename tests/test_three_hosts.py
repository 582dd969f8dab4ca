"""Three replicas on three "hosts" (network namespaces with their own addresses), kernel faults
between them, and the chaos history checker's verdict: nothing lost, duplicated or made up, and
repair converges once the network heals.

Faults: host 1's link down (a partition), host 2 dropping a fifth of its packets (nftables; tc
netem delay and loss as well where the kernel has netem), host 3 cut from the other two replicas
while the clients still reach it. Skips, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest

from grpc_messenger import AsyncMessenger, ClientConfig
from grpc_messenger.chaos.checker import check
from grpc_messenger.chaos.history import History, read_history
from grpc_messenger.chaos.workload import Reader, Sender, mailbox_names
from grpc_messenger.launch import ServeProcess
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.netns import HOSTS, Network, unavailable

PORT = 7001
FAULT_S = 3.0
RATE_PER_S = 40.0  # per sender
SETTLE_S_MAX = 60.0
CLIENT_TIMEOUT_S = 2.0


async def state_digests(servers: tuple[str, ...]) -> set[int]:
    digests = set()
    for address in servers:
        async with grpc.aio.insecure_channel(address) as channel:
            info = await pb_grpc.MessengerServiceStub(channel).Info(pb.InfoRequest(), timeout=5)
            digests.add(info.state_digest)
    return digests


async def settle(senders: list[Sender], servers: tuple[str, ...]) -> float:
    """Outboxes empty and every replica's state digest equal; how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_S_MAX:
        owed = sum([await s.messenger.flush_outbox() for s in senders])
        try:
            agree = owed == 0 and len(await state_digests(servers)) == 1
        except grpc.RpcError:
            agree = False
        if agree:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"replicas did not converge within {SETTLE_S_MAX} s of healing")


def test_three_hosts_with_kernel_faults_lose_nothing_and_converge(tmp_path: Path) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"three-host test needs network namespaces: {reason}")
    seed = random.randrange(2**31)
    print(f"seed={seed}")
    rng = random.Random(seed)
    net = Network.for_this_process()
    replicas: list[ServeProcess] = []
    try:
        net.create()
        servers = tuple(f"{net.address(i)}:{PORT}" for i in range(1, HOSTS + 1))
        for i in range(1, HOSTS + 1):
            peers = [arg for j, s in enumerate(servers, 1) if j != i for arg in ("--peer", s)]
            replica = ServeProcess(
                data_dir=tmp_path / f"h{i}",
                name=f"h{i}",
                listen=servers[i - 1],
                log_path=tmp_path / f"replica-{i}.log",
                prefix=("ip", "netns", "exec", net.ns(i)),
                args=(*peers, "--repair-interval", "0.5", "--grace", "2", "--insecure"),
            )
            replicas.append(replica)
            replica.start()
        figures = asyncio.run(run_workload(net, servers, tmp_path, rng))
    finally:
        for replica in replicas:
            replica.kill()
        net.destroy()
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["phantom"] == 0
    assert figures["sent_ok"] > 0


async def run_workload(net: Network, servers: tuple[str, ...], root: Path, rng: random.Random) -> dict[str, object]:
    history = History(root / "history.jsonl")
    mailboxes = mailbox_names(6)
    senders = [
        Sender(
            name=f"s{i}",
            run_tag=f"n{rng.randrange(10**6)}",
            messenger=AsyncMessenger(
                ClientConfig(servers=servers, timeout_s=CLIENT_TIMEOUT_S, data_dir=root / f"sender-{i}")
            ),
            mailboxes=mailboxes,
            rng=random.Random(rng.random()),
            history=history,
            rate_per_s=RATE_PER_S,
        )
        for i in (1, 2)
    ]
    readers = [
        Reader(
            name=f"d{i}",
            messenger=AsyncMessenger(
                ClientConfig(servers=servers, timeout_s=CLIENT_TIMEOUT_S, data_dir=root / f"reader-{i}", outbox=False)
            ),
            mailboxes=mailboxes[i - 1 :: 2],
            rng=random.Random(rng.random()),
            history=history,
        )
        for i in (1, 2)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop, messages_max=100_000)) for s in senders]
    tasks += [asyncio.create_task(r.run(stop, pause_s=(0.1, 0.4))) for r in readers]
    netem = False
    try:
        await asyncio.sleep(FAULT_S / 2)
        history.record("fault", phase="start", kind="partition", host=1)
        net.link(1, up=False)
        await asyncio.sleep(FAULT_S)
        net.link(1, up=True)
        history.record("fault", phase="end", kind="partition", host=1)

        history.record("fault", phase="start", kind="loss", host=2, percent=20)
        net.drop(2, percent=20)
        netem = net.netem(3, "delay 20ms 5ms loss 5%")
        await asyncio.sleep(FAULT_S)
        net.heal(2)
        net.clear_netem(3)
        history.record("fault", phase="end", kind="loss", host=2)

        history.record("fault", phase="start", kind="cut", host=3)
        net.drop(3, peers=[1, 2])  # the replicas cannot reach it; the clients can
        await asyncio.sleep(FAULT_S)
        net.heal(3)
        history.record("fault", phase="end", kind="cut", host=3)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    try:
        settle_s = await settle(senders, servers)
        history.record("settled", settle_s=settle_s, owed=0)
        for reader in readers:
            await reader.drain()
    finally:
        for client in (*senders, *readers):
            await client.messenger.close()
        history.close()
    report = check(read_history(root / "history.jsonl"))
    return {**report.to_dict(), "netem": netem, "settle_s": round(settle_s, 1)}
