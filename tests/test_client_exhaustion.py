"""The client under exhaustion: a full disk while reading, too few file descriptors, a replica that never answers.

Each must end in a clear error within the deadlines, never a hang, never an
ack for something the reader did not store, never a lost or doubled message.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from grpc_messenger import ClientConfig, Messenger, QuorumNotReached, Unavailable
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import ReplicaFactory

SCRIPT_TIMEOUT_S = 60
HANG_BOUND_S = 30.0  # "nothing hangs": far above every deadline below, far below pytest's timeout

_READ_UNDER_LIMITS = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG instead
    fsize, nofile = int(sys.argv[4]), int(sys.argv[5])
    if fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    from grpc_messenger import ClientConfig, MessengerError, Messenger
    config = ClientConfig(servers=(sys.argv[1],), data_dir=Path(sys.argv[2]), outbox=False, timeout_s=5)
    try:
        with Messenger(config) as m:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            print(len(m.receive(sys.argv[3]).messages))
    except MessengerError as exc:
        print(f"{type(exc).__name__}: {exc}")
        sys.exit(3)
    """
)


def _fill(address: str, mailbox: str, n: int, body_chars: int) -> set[str]:
    keys = set()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.MessengerServiceStub(channel)
        for i in range(n):
            key = str(uuid.uuid4())
            body = f"{i} " + "x" * body_chars
            stub.Send(pb.SendRequest(msg=body, self_email="a@x.org", dest_email=mailbox, key=key), timeout=10)
            keys.add(key)
    return keys


def _queued(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.MessengerServiceStub(channel).Info(pb.InfoRequest(), timeout=10).messages


def _read(
    address: str, home: Path, mailbox: str, *, fsize: int = 0, nofile: int = 0
) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", _READ_UNDER_LIMITS, address, str(home), mailbox, str(fsize), str(nofile)]
    return subprocess.run(args, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False)


def test_a_full_disk_while_reading_acks_nothing_and_loses_nothing(
    replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str
) -> None:
    replica = replica_factory.replica()
    keys = _fill(replica.address, mailbox, 300, 2000)
    home = tmp_path / "reader"
    full = _read(replica.address, home, mailbox, fsize=200_000)  # the inbox cannot grow past 200 kB
    assert full.returncode == 3, full.stderr[-2000:]
    assert full.stdout.startswith("InboxError:"), full.stdout
    assert "nothing was acknowledged" in full.stdout
    assert _queued(replica.address) == len(keys)  # every message still on the replica
    again = _read(replica.address, home, mailbox)  # space again: each message exactly once
    assert again.returncode == 0, again.stderr[-2000:]
    assert int(again.stdout) == len(keys)
    assert int(_read(replica.address, home, mailbox).stdout) == 0
    assert _queued(replica.address) == 0


def test_too_few_file_descriptors_is_a_clear_error_not_a_hang(
    replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str
) -> None:
    replica = replica_factory.replica()
    keys = _fill(replica.address, mailbox, 20, 100)
    home = tmp_path / "reader"
    starved = _read(replica.address, home, mailbox, nofile=8)
    assert starved.returncode in (0, 3), starved.stderr[-2000:]  # a clear error, or it managed
    again = _read(replica.address, home, mailbox)
    shown = (int(starved.stdout) if starved.returncode == 0 else 0) + int(again.stdout)
    assert shown == len(keys)
    assert _queued(replica.address) == 0


@pytest.fixture
def silent_replica() -> Iterator[str]:
    """A TCP listener that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        for _ in range(100_000):  # bounded; ends when the test does
            if stop.is_set():
                return
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def test_a_replica_that_never_answers_delays_nothing_past_the_deadlines(
    replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str, silent_replica: str
) -> None:
    replica = replica_factory.replica()
    started = time.monotonic()
    config = ClientConfig(servers=(replica.address, silent_replica), data_dir=tmp_path / "c", timeout_s=2)
    with Messenger(config) as m:
        report = m.send(sender="a@x.org", recipient=mailbox, body="through the quiet one")
        assert report.ok
        read = m.receive(mailbox)
        assert [msg.key for msg in read.messages] == [report.key]
        assert not read.complete  # the silent replica is reported, not waited for forever
    only_silent = ClientConfig(servers=(silent_replica,), data_dir=tmp_path / "d", timeout_s=2, outbox=False)
    with Messenger(only_silent) as m:
        with pytest.raises(QuorumNotReached):
            m.send(sender="a@x.org", recipient=mailbox, body="nobody answers")
        with pytest.raises(Unavailable):
            m.receive(mailbox)
    assert time.monotonic() - started < HANG_BOUND_S
