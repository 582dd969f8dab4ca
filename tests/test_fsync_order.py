"""Fsync before ack, proven from the order of system calls (strace), on the write and the read path.

A kill -9 test cannot tell "acked after fsync" from "acked after write": the
page cache survives a killed process. A power cut does not, so the order of
system calls is what proves the contract: every acknowledgement leaves the
replica only after an fsync/fdatasync of the WAL that holds the message, and a
reader acks a key only after its local inbox fsynced it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import grpc
import pytest

from grpc_messenger.model import legacy_key
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from tests.conftest import ReplicaFactory
from tests.syscall_trace import STRACE_ARGS, Verdict, parse, verdicts

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (.ci/run installs it)")

READY_TIMEOUT_S = 60.0  # strace slows start-up
SENDS = 25
TRACE_EXIT_TIMEOUT_S = 20.0


def _trace_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def _explain(bad: list[Verdict], lines: list[str]) -> str:
    shown = []
    for v in bad[:3]:
        shown.append(f"{v}")
        for at in (v.wal_write, v.fsync, v.ack):
            if at is not None:
                shown.append(f"  line {at}: {lines[at][:160]}")
    return "\n".join(shown)


class TracedReplica:
    """A replica started under strace; stopped (tracee first, then strace) by close()."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.trace_path = data_dir / "strace.txt"
        ready = data_dir / "ready.json"
        args = [
            *STRACE_ARGS, "-o", str(self.trace_path),
            sys.executable, "-m", "grpc_messenger", "serve", "--listen", "127.0.0.1:0",
            "--data-dir", str(data_dir), "--ready-file", str(ready),
        ]  # fmt: skip
        with (data_dir / "replica.log").open("ab") as log:
            self.strace = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = 0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.strace.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"traced replica did not start: {(data_dir / 'replica.log').read_text()[-2000:]}")
            time.sleep(0.05)
        record = json.loads(ready.read_text())
        self.pid = int(record["pid"])
        self.address = record["addresses"][0]

    def close(self) -> None:
        # the tracee first: killing strace alone would detach it and leave it running
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        try:
            self.strace.wait(timeout=TRACE_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.strace.kill()
            self.strace.wait(timeout=TRACE_EXIT_TIMEOUT_S)


def test_replica_acknowledges_each_send_only_after_fsyncing_its_wal(tmp_path: Path) -> None:
    data_dir = tmp_path / "replica"
    data_dir.mkdir()
    replica = TracedReplica(data_dir)
    keys: list[str] = []
    try:
        with grpc.insecure_channel(replica.address) as channel:
            stub = pb_grpc.MessengerServiceStub(channel)
            for i in range(SENDS):  # sequential: each ack is answered before the next send
                key = str(uuid.uuid4())
                request = pb.SendRequest(msg=f"fsync order {i}", self_email="a@x.org", dest_email="b@x.org", key=key)
                if i % 2:
                    # A message simply stored is answered with its outcome only (its sender knows the key),
                    # so the batch carries a keyless (legacy) message: the replica says the key it derived,
                    # and that answer is the ack to find in the trace.
                    request = pb.SendRequest(id=i, msg=request.msg, self_email="a@x.org", dest_email="b@x.org")
                    key = legacy_key(sender=request.self_email, legacy_id=request.id, body=request.msg)
                    batch = stub.SendBatch(pb.SendBatchRequest(messages=[request]), timeout=30)
                    assert [(r.outcome, r.key) for r in batch.results] == [(pb.SEND_OUTCOME_STORED, key)]
                else:
                    response = stub.Send(request, timeout=30)
                    assert response.success
                    assert response.key == key
                keys.append(key)
    finally:
        replica.close()
    lines = _trace_lines(replica.trace_path)
    found = verdicts(parse(lines), keys, wal_suffix="replica.sqlite3-wal")
    bad = [v for v in found if not v.ok]
    assert not bad, f"{len(bad)} of {len(keys)} acks not preceded by a WAL fsync:\n{_explain(bad, lines)}"


_READER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from grpc_messenger import ClientConfig, Messenger
    config = ClientConfig(servers=(sys.argv[1],), data_dir=Path(sys.argv[2]), outbox=False, timeout_s=30)
    with Messenger(config) as m:
        report = m.receive(sys.argv[3])
    print(json.dumps([msg.key for msg in report.messages]))
    """
)


def test_reader_acks_only_after_its_inbox_fsynced_the_keys(
    replica_factory: ReplicaFactory, tmp_path: Path, mailbox: str
) -> None:
    replica = replica_factory.replica()
    keys = []
    with grpc.insecure_channel(replica.address) as channel:
        stub = pb_grpc.MessengerServiceStub(channel)
        for i in range(SENDS):
            key = str(uuid.uuid4())
            stub.Send(pb.SendRequest(msg=f"read {i}", self_email="a@x.org", dest_email=mailbox, key=key), timeout=10)
            keys.append(key)
    home = tmp_path / "reader-home"
    trace_path = tmp_path / "reader-strace.txt"
    args = [*STRACE_ARGS, "-o", str(trace_path), sys.executable, "-c", _READER, replica.address, str(home), mailbox]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(json.loads(done.stdout)) == sorted(keys)
    lines = _trace_lines(trace_path)
    found = verdicts(parse(lines), keys, wal_suffix="inbox.sqlite3-wal")
    bad = [v for v in found if not v.ok]
    assert not bad, f"{len(bad)} of {len(keys)} acks not preceded by an inbox fsync:\n{_explain(bad, lines)}"


# --- the checker itself can fail: hand-written traces ------------------------------------------

_OPEN = '7 openat(AT_FDCWD, "/d/replica.sqlite3-wal", O_RDWR|O_CREAT, 0644) = 9'
_WRITE = '8 pwrite64(9, "\\r\\0\\0page with KEY1 in it", 4096, 32) = 4096'
_SYNC = "8 fdatasync(9)                      = 0"
_ACK = '7 sendmsg(18, {msg_iov=[{iov_base="\\10\\1\\22\\6stored\\"$KEY1", iov_len=50}]}, MSG_NOSIGNAL) = 70'


def _verdict(*lines: str) -> Verdict:
    return verdicts(parse(list(lines)), ["KEY1"], wal_suffix="replica.sqlite3-wal")[0]


def test_trace_checker_accepts_write_fsync_ack() -> None:
    assert _verdict(_OPEN, _WRITE, _SYNC, _ACK).ok


def test_trace_checker_rejects_an_ack_before_the_fsync() -> None:
    assert not _verdict(_OPEN, _WRITE, _ACK, _SYNC).ok


def test_trace_checker_rejects_no_fsync_at_commit() -> None:
    # what synchronous=NORMAL looks like in WAL mode: write, ack, fsync only at checkpoint
    assert not _verdict(_OPEN, _WRITE, _ACK).ok


def test_trace_checker_rejects_an_fsync_still_running_when_the_ack_leaves() -> None:
    verdict = _verdict(_OPEN, _WRITE, "8 fdatasync(9 <unfinished ...>", _ACK, "8 <... fdatasync resumed>) = 0")
    assert not verdict.ok


def test_trace_checker_accepts_an_fsync_interrupted_by_another_thread_that_returns_before_the_ack() -> None:
    other = '9 sendmsg(19, {msg_iov=[{iov_base="ping", iov_len=4}]}, MSG_NOSIGNAL) = 4'
    assert _verdict(_OPEN, _WRITE, "8 fdatasync(9 <unfinished ...>", other, "8 <... fdatasync resumed>) = 0", _ACK).ok


def test_trace_checker_rejects_an_fsync_of_another_file() -> None:
    other = '8 openat(AT_FDCWD, "/d/other-wal", O_RDWR, 0644) = 11'
    assert not _verdict(_OPEN, other, _WRITE, "8 fdatasync(11) = 0", _ACK).ok


def test_trace_checker_follows_fd_reuse_after_close() -> None:
    reopened = '8 openat(AT_FDCWD, "/d/unrelated", O_RDWR, 0644) = 9'
    assert not _verdict(_OPEN, _WRITE, "8 close(9) = 0", reopened, _SYNC, _ACK).ok
