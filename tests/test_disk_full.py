"""A full disk: RESOURCE_EXHAUSTED with a clear detail, reads still served, nothing unacknowledged
stored, nothing acknowledged lost, the file intact, and writes accepted again once space returns.

The replica runs in a private mount namespace on a small tmpfs mounted over its
data directory, so filling that file system touches nothing else. The test
reaches the tmpfs through /proc/PID/root (the replica's view of the file tree).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_messenger.launch import ServeProcess
from grpc_messenger.model import new_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.replica import SERVICE_NAME, WRITES_HEALTH_NAME
from tests.conftest import queued_keys, wait_until
from tests.mountns import mount_namespace_unavailable, tmpfs_prefix
from tests.test_metrics import scrape

TMPFS_BYTES = 2 * 1024 * 1024
BOB = "bob-disk@example.org"
BODY = "x" * 4000  # a few KiB per message: the disk fills in a few hundred writes
FILL_CHUNK_BYTES = 64 * 1024
FILL_CHUNKS_MAX = (TMPFS_BYTES // FILL_CHUNK_BYTES) + 16
SENDS_UNTIL_FULL_MAX = 2000


def send_one(stub: pb_grpc.MessengerServiceStub) -> tuple[str, grpc.RpcError | None]:
    key = new_key()
    try:
        stub.Send(pb.SendRequest(key=key, msg=BODY, self_email="alice@example.org", dest_email=BOB), timeout=10)
    except grpc.RpcError as exc:
        return key, exc
    return key, None


def fill(path: Path) -> None:
    """Write `path` until the file system has no space left."""
    chunk = b"\0" * FILL_CHUNK_BYTES
    with path.open("wb", buffering=0) as out:
        for _ in range(FILL_CHUNKS_MAX):
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    raise AssertionError("the tmpfs never filled up")


def health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)


def test_full_disk_refuses_writes_clearly_serves_reads_and_recovers(tmp_path: Path) -> None:
    reason = mount_namespace_unavailable(tmp_path)
    if reason:
        pytest.skip(f"cannot mount a private tmpfs here: {reason}")
    data_dir = tmp_path / "data"
    replica = ServeProcess(
        data_dir=data_dir,
        name="full-disk",
        ready_path=tmp_path / "ready.json",  # outside the tmpfs, which only the replica sees
        log_path=tmp_path / "replica.log",
        prefix=tmpfs_prefix(data_dir, TMPFS_BYTES),
        args=("--grace", "5", "--metrics-listen", "127.0.0.1:0"),
    )
    try:
        ready = replica.start()
        assert ready.metrics_address is not None
        inside = Path(f"/proc/{replica.pid}/root") / data_dir.relative_to("/")
        with grpc.insecure_channel(replica.address) as channel:
            stub = pb_grpc.MessengerServiceStub(channel)
            acked: set[str] = set()
            refused: dict[str, grpc.RpcError] = {}
            for _ in range(20):
                key, error = send_one(stub)
                assert error is None, error
                acked.add(key)

            fill(inside / "filler")
            # the WAL may still have room it grew earlier: write until a commit finds none
            for _ in range(SENDS_UNTIL_FULL_MAX):
                key, error = send_one(stub)
                if error is None:
                    acked.add(key)
                    continue
                refused[key] = error
                if len(refused) >= 5:
                    break
            assert refused, "the replica never ran out of space"
            for error in refused.values():
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert "disk full" in (error.details() or ""), error.details()

            # reads go on; what was refused is not there, what was acknowledged is
            stored = queued_keys(replica.address, BOB)
            assert acked <= stored
            assert not (set(refused) & stored)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert health(channel, "") == serving
            assert health(channel, SERVICE_NAME) == serving
            wait_until(lambda: health(channel, WRITES_HEALTH_NAME) != serving, timeout_s=60)
            wait_until(lambda: scrape(ready.metrics_address).get("messenger_store_disk_full") == 1.0, timeout_s=60)
            # an ack needs room for its tombstone: done where it fits, refused clearly where not
            first = sorted(acked)[:1]
            with contextlib.suppress(grpc.RpcError):
                stub.Ack(pb.AckRequest(self_email=BOB, keys=first), timeout=10)
            if first[0] not in queued_keys(replica.address, BOB):
                acked -= set(first)

            (inside / "filler").unlink()
            key, error = send_one(stub)
            assert error is None, error
            acked.add(key)
            wait_until(lambda: health(channel, WRITES_HEALTH_NAME) == serving, timeout_s=60)
            wait_until(lambda: scrape(ready.metrics_address).get("messenger_store_disk_full") == 0.0, timeout_s=60)
            assert acked <= queued_keys(replica.address, BOB)

        # the file is whole: SQLite's own check, read-only, in the replica's mount namespace while it runs
        # (SQLite resolves /proc/PID/root back to our own root, so the check must run in there)
        path = str(data_dir / "replica.sqlite3")
        check = f"import sqlite3; print(sqlite3.connect({path!r}).execute('PRAGMA integrity_check').fetchall())"
        done = subprocess.run(
            ["nsenter", "--target", str(replica.pid), "--mount", sys.executable, "-c", check],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout.strip() == "[('ok',)]", done.stderr
        assert replica.terminate() == 0
    finally:
        replica.kill()
    assert "event=store.disk_full" in (tmp_path / "replica.log").read_text()


def test_mount_namespace_probe_names_the_reason_when_unshare_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare on this PATH
    assert "unshare" in mount_namespace_unavailable(tmp_path)
