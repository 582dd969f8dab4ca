"""Real replicas as real processes on loopback, always torn down.

`replica_factory` starts `python -m grpc_messenger serve` on 127.0.0.1 port 0
through grpc_messenger.launch, waits for its ready record, and on teardown kills whatever is still running,
also when the test failed. Killing (SIGKILL) and restarting on the same port
and data directory is what the fault tests use.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grpc_messenger.client.pages import PAGE_SIZE_MAX, fetch_pages_sync
from grpc_messenger.launch import ServeProcess
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.ready import ReadyRecord


def wait_until(condition: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.1) -> None:
    """Poll `condition` until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def queued_keys(address: str, mailbox: str) -> set[str]:
    """Every key queued in `mailbox` on the replica at `address`, read over the wire with Fetch."""
    keys: set[str] = set()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.MessengerServiceStub(channel)
        more = True
        for page in fetch_pages_sync(stub, mailbox, page_size=PAGE_SIZE_MAX, timeout_s=10):
            keys.update(page.keys)
            more = page.more
    assert not more, "mailbox too large for a test"
    return keys


class ReplicaProcess:
    """One replica process we started; restartable on the same port and data directory.

    A thin test-facing shape over grpc_messenger.launch.ServeProcess (the one launcher).
    """

    def __init__(self, data_dir: Path, *, store: str = "sqlite", extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.store = store
        self.extra_args = extra_args
        self.log_path = data_dir / "replica.log"
        self.launcher = ServeProcess(data_dir=data_dir, name=data_dir.name, log_path=self.log_path)

    @property
    def address(self) -> str:
        """Where it listens (127.0.0.1:port)."""
        return self.launcher.address

    @property
    def port(self) -> int:
        """Its port (the same across restarts)."""
        return self.launcher.port

    @property
    def pid(self) -> int:
        """The PID of the current (or last) process."""
        return self.launcher.pid

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The current (or last) process."""
        return self.launcher.process

    @property
    def ready(self) -> ReadyRecord:
        """What the replica reported when it became ready."""
        assert self.launcher.ready is not None, "replica not started"
        return self.launcher.ready

    def start(self) -> ReplicaProcess:
        """Start (on the port of the last start, if any) and wait until ready."""
        self.launcher.args = ("--store", self.store, "--grace", "5", *self.extra_args)
        self.launcher.start()
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no clean close; what was acknowledged must survive."""
        self.launcher.kill()

    def terminate(self, timeout_s: float = 15.0) -> int:
        """SIGTERM: the replica drains and closes its store."""
        return self.launcher.terminate(timeout_s=timeout_s)

    def restart(self) -> ReplicaProcess:
        """Kill and start again on the same port and data directory."""
        self.kill()
        return self.start()

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.launcher.alive


@dataclass
class Cluster:
    """N replicas; `servers` is what a client is configured with."""

    replicas: list[ReplicaProcess]

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.replicas)


class ReplicaFactory:
    """Starts replicas under one temporary directory and owns their teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ReplicaProcess] = []

    def replica(self, *, store: str = "sqlite", extra_args: tuple[str, ...] = ()) -> ReplicaProcess:
        data_dir = self.root / f"replica-{len(self.started) + 1}"
        replica = ReplicaProcess(data_dir, store=store, extra_args=extra_args)
        self.started.append(replica)
        return replica.start()

    def cluster(self, n: int = 3, *, store: str = "sqlite", repair_interval_s: float | None = None) -> Cluster:
        """N replicas; with `repair_interval_s`, each repairs with the others (restarted once to learn ports)."""
        cluster = Cluster([self.replica(store=store) for _ in range(n)])
        if repair_interval_s is not None:
            for replica in cluster.replicas:
                peers = [arg for other in cluster.replicas if other is not replica for arg in ("--peer", other.address)]
                replica.extra_args = (*peers, "--repair-interval", str(repair_interval_s))
                replica.restart()
        return cluster

    def teardown(self) -> None:
        for replica in self.started:
            replica.kill()


@pytest.fixture
def replica_factory(tmp_path: Path) -> Iterator[ReplicaFactory]:
    factory = ReplicaFactory(tmp_path / "replicas")
    try:
        yield factory
    finally:
        factory.teardown()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-replica cluster shared by a module's tests: use distinct mailboxes per test."""
    factory = ReplicaFactory(tmp_path_factory.mktemp("cluster"))
    try:
        yield factory.cluster(3)
    finally:
        factory.teardown()


@pytest.fixture
def client_home(tmp_path: Path) -> Path:
    """A private data directory for the client's local inbox."""
    home = tmp_path / "client-home"
    home.mkdir()
    return home


@pytest.fixture
def mailbox(request: pytest.FixtureRequest) -> str:
    """A mailbox address unique to this test (shared clusters outlive tests)."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:50].strip("-").lower()
    return f"{name}-{os.getpid()}@example.org"
