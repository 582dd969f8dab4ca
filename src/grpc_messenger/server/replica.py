"""One replica process: open the store, serve gRPC with health and reflection, drain on stop."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_messenger._version import __version__
from grpc_messenger.config import GRPC_MESSAGE_BYTES_MAX, ServerConfig
from grpc_messenger.errors import InvalidInput, StoreError
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.ready import ReadyRecord
from grpc_messenger.security import tls
from grpc_messenger.security.exposure import check_exposure
from grpc_messenger.security.peer import ChannelFactory, peer_channel_factory
from grpc_messenger.security.tokens import TokenVerifier
from grpc_messenger.server.auth import GuardInterceptor
from grpc_messenger.server.limits import RateLimiter, request_bytes_max
from grpc_messenger.server.metrics import MetricsInterceptor, ReplicaMetrics
from grpc_messenger.server.peer_servicer import ReplicaServicer
from grpc_messenger.server.repair import Repairer
from grpc_messenger.server.scrub import Scrubber
from grpc_messenger.server.servicer import MessengerServicer, add_to_server
from grpc_messenger.server.tombstones import purge_confirmed
from grpc_messenger.store import MemoryStore, SqliteStore, Store, diskspace
from grpc_messenger.store.base import Quota
from grpc_messenger.store.maintenance import STORE_FILE, DataDirLock

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessengerService"].full_name
REPLICA_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ReplicaService"].full_name
# A health-service name of its own for writes: NOT_SERVING while the disk is full,
# while the replica as a whole ("" and SERVICE_NAME) still serves reads and stays SERVING.
WRITES_HEALTH_NAME = f"{SERVICE_NAME}/writes"
PURGE_CHUNK = 10_000
PURGE_CHUNKS_MAX = 100
GAUGE_INTERVAL_S = 2.0


def open_store(config: ServerConfig) -> Store:
    """The store the config asks for (SQLite files live under data_dir).

    A damaged SQLite file is set aside (renamed, never deleted) and the replica
    starts empty, to be rebuilt by repair, but only when it has peers to rebuild
    from; alone, it refuses to start, so nobody mistakes an empty store for a
    healthy one.
    """
    quota = Quota(messages_max=config.quota_messages_max, bytes_max=config.quota_bytes_max)
    if config.store == "memory":
        return MemoryStore(quota=quota)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / STORE_FILE
    try:
        return SqliteStore(path, quota=quota)
    except StoreError as exc:
        if not config.peers:
            raise StoreError(f"{exc}; move the file away to start empty, or give --peer to rebuild from peers") from exc
        aside = set_aside(path)
        log.error("event=store.set_aside reason=%r moved_to=%s", str(exc), aside)
        return SqliteStore(path, quota=quota)


def set_aside(path: Path) -> Path:
    """Rename a damaged store and its WAL files out of the way; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(target.with_name(target.name + suffix))
    return target


def guard_for(config: ServerConfig) -> GuardInterceptor:
    """The interceptor enforcing auth and the send rate (each only if configured) and decodable requests."""
    verifier = TokenVerifier.from_files(config.auth_public_keys) if config.auth else None
    limiter = None
    if config.send_rate_per_s > 0:
        burst = config.send_burst or max(1, math.ceil(config.send_rate_per_s))
        limiter = RateLimiter(rate_per_s=config.send_rate_per_s, burst=burst)
    return GuardInterceptor(verifier=verifier, limiter=limiter)


def _peer_channels(config: ServerConfig) -> ChannelFactory:
    # in a mutual-TLS cluster a replica shows its peers its own certificate
    mtls = config.tls_client_ca is not None
    return peer_channel_factory(
        token=config.peer_token,
        tls_ca=config.peer_tls_ca,
        client_cert=config.tls_cert if mtls else None,
        client_key=config.tls_key if mtls else None,
    )


class Replica:
    """A running replica: owns its gRPC server and its store, and stops both."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # read keys and certificates before opening anything: a typo fails fast
        guard = guard_for(config)
        self._credentials = (
            tls.server_credentials(cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        # one process per data directory: a second replica, or `admin compact`, is refused
        self._lock = DataDirLock(config.data_dir) if config.store == "sqlite" else None
        if self._lock is not None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        self.store = open_store(config)
        self.addresses: list[str] = []
        self._health = health.aio.HealthServicer()
        self.metrics = ReplicaMetrics()
        if isinstance(self.store, SqliteStore):
            self.store.commit_observer = self.metrics.observe_commit
        self.metrics_address: str | None = None
        self._server = grpc.aio.server(
            # metrics outermost: refused calls are counted with their status code
            interceptors=[MetricsInterceptor(self.metrics), guard],
            options=[
                # larger frames are refused before they are parsed
                ("grpc.max_receive_message_length", request_bytes_max(config)),
                ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
                ("grpc.so_reuseport", 0),  # two replicas must never share a port by accident
                # accept the clients' keepalive pings (every 10 s, also when idle)
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
        )
        servicer = self._servicer = MessengerServicer(self.store, config, self.metrics)
        add_to_server(servicer, self._server, "MessengerService")
        add_to_server(ReplicaServicer(self.store), self._server, "ReplicaService")
        self._housekeeper: asyncio.Task[None] | None = None
        self._scrubber = Scrubber(
            self.store, rows_per_s=config.scrub_rows_per_s, pass_interval_s=config.scrub_interval_s
        )
        self._disk_full = False
        self._stopping = False
        self._repairer: Repairer | None = None
        if config.peers:
            self._repairer = Repairer(
                self.store,
                config.peers,
                interval_s=config.repair_interval_s,
                rate_per_s=config.repair_rate_per_s,
                timeout_s=config.repair_timeout_s,
                body_bytes_max=config.body_bytes_max,
                tombstone_grace_s=config.tombstone_grace_s,
                channel_factory=_peer_channels(config),
                metrics=self.metrics,
                on_stored=servicer.signals.notify,  # repaired messages wake Subscribe streams too
            )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                REPLICA_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )

    async def start(self) -> None:
        """Bind every listen address, start serving, mark healthy, write the ready file."""
        for address in self.config.listen:
            if self._credentials is not None:
                port = self._server.add_secure_port(address, self._credentials)
            else:
                port = self._server.add_insecure_port(address)
            if port == 0:
                raise InvalidInput(f"cannot listen on {address}")
            host = address.rpartition(":")[0]
            self.addresses.append(f"{host}:{port}")
        if self.config.metrics_listen:
            host = self.config.metrics_listen.rpartition(":")[0]
            self.metrics_address = f"{host}:{self.metrics.serve(self.config.metrics_listen)}"
        await self._server.start()
        await self._set_serving(True)
        if self._repairer is not None:
            self._repairer.start()
        elif self.store.rebuilding:
            await self.store.mark_rebuilt()  # no peers: nothing to rebuild from
        self._housekeeper = asyncio.get_running_loop().create_task(self._housekeeping(), name="housekeeping")
        self._scrubber.start()
        log.info(
            "event=replica.started replica=%s store=%s addresses=%s peers=%s pid=%d auth=%s tls=%s mtls=%s"
            " rebuilding=%s",
            self.store.replica_id,
            self.store.kind,
            ",".join(self.addresses),
            ",".join(self.config.peers) or "-",
            os.getpid(),
            self.config.auth,
            self.config.tls,
            self.config.tls_client_ca is not None,
            self.store.rebuilding,
        )
        if self.config.ready_file is not None:
            self.ready_record().write(self.config.ready_file)

    def ready_record(self) -> ReadyRecord:
        """What this replica tells its launcher once it serves."""
        return ReadyRecord(
            addresses=tuple(self.addresses),
            pid=os.getpid(),
            replica_id=self.store.replica_id,
            metrics_address=self.metrics_address,
            store=self.store.kind,
            version=__version__,
        )

    async def _housekeeping(self) -> None:
        """Refresh the store gauges; forget tombstones older than the grace period, in bounded chunks."""
        purge_every_s = min(3600.0, max(0.5, self.config.tombstone_grace_s / 10))
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(min(GAUGE_INTERVAL_S, purge_every_s))
            try:
                self.metrics.observe_store(await self.store.counts(), rebuilding=self.store.rebuilding)
                await self._observe_disk()
                if time.monotonic() - last_purge >= purge_every_s:
                    last_purge = time.monotonic()
                    await self._purge_tombstones()
            except StoreError as exc:
                log.error("event=housekeeping.failed error=%r", str(exc))

    async def _observe_disk(self) -> None:
        """Gauges for the data directory, and the writes health status while the disk is full."""
        if not isinstance(self.store, SqliteStore):
            return
        full = self.store.disk_full
        free = await asyncio.to_thread(diskspace.free_bytes, self.store.path.parent)
        size = await asyncio.to_thread(diskspace.bytes_on_disk, self.store.path)
        self.metrics.observe_disk(full=full, free_bytes=free, store_bytes=size)
        if full != self._disk_full:
            self._disk_full = full
            level = logging.ERROR if full else logging.INFO
            log.log(level, "event=store.disk_%s free_bytes=%d store_bytes=%d", "full" if full else "ok", free, size)
            await self._health.set(WRITES_HEALTH_NAME, _health_status(not full and not self._stopping))

    async def _purge_tombstones(self) -> None:
        cutoff_ms = int(time.time() * 1000) - int(self.config.tombstone_grace_s * 1000)
        await purge_confirmed(
            self.store,
            deleted_before_ms=cutoff_ms,
            held_elsewhere=self._repairer.held_queued_by_a_peer if self._repairer is not None else None,
            chunk=PURGE_CHUNK,
            chunks_max=PURGE_CHUNKS_MAX,
        )

    async def _set_serving(self, serving: bool) -> None:
        self._stopping = not serving
        for name in ("", SERVICE_NAME):
            await self._health.set(name, _health_status(serving))
        await self._health.set(WRITES_HEALTH_NAME, _health_status(serving and not self._disk_full))

    async def stop(self) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish, close the store."""
        log.info("event=replica.draining grace_s=%.1f", self.config.grace_s)
        await self._set_serving(False)
        if self._repairer is not None:
            await self._repairer.stop()
        await self._scrubber.stop()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
        self._servicer.end_send_streams()  # long-lived: they would otherwise hold the stop for its whole grace
        await self._server.stop(self.config.grace_s)
        self.metrics.close()
        await self.store.close()
        if self._lock is not None:
            self._lock.release()
        log.info("event=replica.stopped replica=%s", self.store.replica_id)

    async def wait(self) -> None:
        """Until the server terminates."""
        await self._server.wait_for_termination()


def _health_status(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


async def run_replica(config: ServerConfig) -> None:
    """Run one replica until SIGTERM or SIGINT, then drain and stop."""
    warning = check_exposure(config)  # raises if exposed without auth+TLS and not forced
    if warning is not None:
        log.warning("event=replica.insecure %s", warning)
    replica = Replica(config)
    # Handlers first: start() writes the ready record, and a SIGTERM that follows it at
    # once must drain like any other, not kill the process with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await replica.start()
    waiter = asyncio.create_task(replica.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await replica.stop()
        waiter.cancel()
        # Stopped and closed: a second stop signal (Ctrl-C reaches the whole process
        # group, and a supervisor may send SIGTERM too) must not turn exit 0 into a kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
