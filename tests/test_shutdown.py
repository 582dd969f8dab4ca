"""SIGTERM under load: the replica drains, commits, exits 0 in time, and loses nothing it acknowledged.

One replica of three is stopped while hundreds of sends are in flight. Clients
must see it as UNAVAILABLE (never a hang), their outbox must owe it what it
missed, and once it is back every message it acknowledged is still there and
the outbox brings it the rest.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc

from grpc_messenger import AsyncMessenger, ClientConfig, ReplicaState, SendReport
from grpc_messenger.errors import Status
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import Cluster, ReplicaFactory, queued_keys

BOB = "bob-shutdown@example.org"
GRACE_S = 2.0
# Beyond the grace period a stopping replica only cancels what is left, commits the
# write queue and closes its file: a few seconds at most, generous for a loaded CI machine.
STOP_BOUND_S = 10.0
WORKERS = 300  # concurrent senders: hundreds of deliveries in flight to each replica at any moment
SENDS_PER_WORKER_MAX = 200


def test_sigterm_under_load_keeps_every_ack_and_clients_fail_over(
    replica_factory: ReplicaFactory, client_home: Path
) -> None:
    # the victim's grace is short: the open stream holds it that long
    victim = replica_factory.replica(extra_args=("--grace", str(GRACE_S)))
    cluster = Cluster([victim, replica_factory.replica(), replica_factory.replica()])
    config = ClientConfig(servers=cluster.servers, data_dir=client_home, timeout_s=5, outbox_interval_s=0.2)
    reports: list[SendReport] = []
    stopped: dict[str, float] = {}
    stream_end: dict[str, str] = {}

    def subscribe_until_cut() -> None:
        # a long-lived stream holds the server until the grace period ends, then is cut
        with grpc.insecure_channel(victim.address) as channel:
            stub = pb_grpc.MessengerServiceStub(channel)
            try:
                for _ in stub.Subscribe(pb.SubscribeRequest(self_email=BOB), timeout=GRACE_S + STOP_BOUND_S + 30):
                    pass
            except grpc.RpcError as exc:
                stream_end["code"] = exc.code().name

    def stop_victim() -> None:
        started = time.monotonic()
        stopped["rc"] = victim.terminate(timeout_s=GRACE_S + STOP_BOUND_S + 20)
        stopped["elapsed_s"] = time.monotonic() - started

    async def worker(m: AsyncMessenger, w: int, done: asyncio.Event) -> None:
        for i in range(SENDS_PER_WORKER_MAX):
            if done.is_set():
                return
            # settle: wait for every replica's answer, so each report says what the victim acknowledged
            body = f"{w} #{i}"
            reports.append(await m.send(sender="alice@example.org", recipient=BOB, body=body, settle=True))
            await asyncio.sleep(0.05)  # a steady load, not a spin while the victim drains

    async def reports_reach(n: int) -> None:
        for _ in range(1200):  # at most a minute
            if len(reports) >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {len(reports)} of {n} sends reported within a minute")

    async def load() -> None:
        async with AsyncMessenger(config) as m:
            done = asyncio.Event()
            workers = [asyncio.create_task(worker(m, w, done)) for w in range(WORKERS)]
            try:
                await reports_reach(WORKERS * 2)  # under full load before the signal
                # SIGTERM lands while every worker has a send in flight; the workers go on meanwhile
                await asyncio.to_thread(stop_victim)
                await reports_reach(len(reports) + WORKERS)  # and clients go on without it
            finally:
                done.set()
                # wait_for: a hung call fails the test instead of hanging it
                await asyncio.wait_for(asyncio.gather(*workers), timeout=60)
            # the other two replicas took every send: W=1 never failed
            assert all(r.ok for r in reports)
            victim.start()
            # the channel reconnects with backoff: a few flushes, bounded in count and time
            owed = -1
            for _ in range(60):
                owed = await asyncio.wait_for(m.flush_outbox(), timeout=30)
                if owed == 0:
                    break
                await asyncio.sleep(0.5)
            assert owed == 0, f"{owed} deliveries still owed after the replica came back"

    subscriber = threading.Thread(target=subscribe_until_cut)
    subscriber.start()
    try:
        asyncio.run(load())
    finally:
        subscriber.join(timeout=60)

    assert stopped["rc"] == 0, victim.log_path.read_text()[-3000:]
    assert stopped["elapsed_s"] <= GRACE_S + STOP_BOUND_S, f"stop took {stopped['elapsed_s']:.1f} s"
    log = victim.log_path.read_text()
    assert "event=replica.draining" in log
    assert "event=replica.stopped" in log

    states = [next(o for o in r.replicas if o.replica == victim.address) for r in reports]
    acked_by_victim = {r.key for r, o in zip(reports, states, strict=True) if o.state.acknowledged}
    failed = [o for o in states if o.state is ReplicaState.FAILED]
    assert acked_by_victim, "the victim acknowledged nothing before its stop"
    assert failed, "no send saw the victim go away"
    # refused while draining or gone: UNAVAILABLE; a call still running when the grace ended may be
    # CANCELLED; never a deadline (that would be a hang)
    codes = {o.failure.code for o in failed if o.failure is not None}
    assert Status.UNAVAILABLE in codes, codes
    assert codes <= {Status.UNAVAILABLE, Status.CANCELLED}, {o.error for o in failed}

    assert stream_end.get("code") == "UNAVAILABLE", stream_end
    print(f"sent={len(reports)} acked={len(acked_by_victim)} failed={len(failed)} stop_s={stopped['elapsed_s']:.2f}")
    on_victim = queued_keys(victim.address, BOB)
    assert acked_by_victim <= on_victim, f"{len(acked_by_victim - on_victim)} acknowledged messages lost"
    # the outbox delivered the rest: the victim holds every message sent
    assert on_victim == {r.key for r in reports}
