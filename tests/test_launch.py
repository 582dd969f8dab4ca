"""The one replica launcher and its typed ready record: start, ready, kill, restart on the same port, fail clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_messenger.launch import LaunchError, ServeProcess, stop_all
from grpc_messenger.ready import ReadyRecord

addresses = st.lists(st.from_regex(r"\A[a-z0-9.\[\]:]{1,20}:[0-9]{1,5}\Z"), min_size=1, max_size=3)
records = st.builds(
    ReadyRecord,
    addresses=addresses.map(tuple),
    pid=st.integers(1, 2**22),
    replica_id=st.text(max_size=40),
    metrics_address=st.none() | st.just("127.0.0.1:9100"),
    store=st.sampled_from(["", "sqlite", "memory"]),
    version=st.text(max_size=10),
)


@given(records)
def test_ready_record_round_trips_through_json(record: ReadyRecord) -> None:
    assert ReadyRecord.from_json(record.to_json()) == record


def test_ready_record_drops_unknown_fields_and_refuses_missing_ones() -> None:
    newer = {"addresses": ["127.0.0.1:7"], "pid": 42, "replica_id": "r", "shiny_new_field": [1, 2]}
    assert ReadyRecord.from_json(json.dumps(newer)) == ReadyRecord(addresses=("127.0.0.1:7",), pid=42, replica_id="r")
    for bad in ("", "[]", '{"pid": 1}', '{"addresses": [], "pid": 1}', '{"addresses": ["a:1"], "pid": "1"}'):
        with pytest.raises(ValueError, match="ready record"):
            ReadyRecord.from_json(bad)


def test_replica_reports_itself_and_restarts_on_the_same_port_and_data(tmp_path: Path) -> None:
    # `env` execs what follows it: a stand-in for `ip netns exec NS` or `faketime`
    replica = ServeProcess(
        data_dir=tmp_path / "r1",
        log_path=tmp_path / "r1.log",
        args=("--grace", "1"),
        prefix=("env", "MESSENGER_LAUNCH_TEST=1"),
        env={"MESSENGER_LAUNCH_EXTRA": "x"},
    )
    try:
        first = replica.start()
        assert first.pid == replica.pid
        assert first.store == "sqlite"
        assert first.replica_id
        assert first.address.startswith("127.0.0.1:")
        assert first.port != 0
        replica.kill()
        assert not replica.alive
        second = replica.restart()
        assert second.port == first.port
        assert second.replica_id == first.replica_id  # the same store, so the same replica
        assert second.pid != first.pid
        assert replica.starts == 2
        assert replica.terminate() == 0
        assert "--- start 2" in replica.log_tail()
    finally:
        replica.kill()


def test_a_replica_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    replica = ServeProcess(data_dir=tmp_path / "r1", log_path=tmp_path / "r1.log", args=("--store", "paper"))
    try:
        with pytest.raises(LaunchError, match="exited at start") as failed:
            replica.start()
        assert "paper" in str(failed.value)  # the tail of its log says why
    finally:
        replica.kill()


def test_a_replica_that_never_becomes_ready_is_killed_after_the_timeout(tmp_path: Path) -> None:
    # the prefix swallows the serve command: a process that runs but never writes its record
    hang = (sys.executable, "-c", "import time; time.sleep(60)")
    replica = ServeProcess(data_dir=tmp_path / "r1", log_path=tmp_path / "r1.log", prefix=hang)
    try:
        with pytest.raises(LaunchError, match="not ready within"):
            replica.start(timeout_s=0.5)
        assert not replica.alive
    finally:
        replica.kill()


def test_stop_all_drains_every_replica_and_reports_exit_codes(tmp_path: Path) -> None:
    group = [ServeProcess(data_dir=tmp_path / f"r{i}", name=f"r{i}", log_path=tmp_path / f"r{i}.log") for i in (1, 2)]
    never = ServeProcess(data_dir=tmp_path / "r3", name="r3")
    try:
        for replica in group:
            replica.start()
        assert stop_all([*group, never]) == {"r1": 0, "r2": 0, "r3": None}
        assert not any(replica.alive for replica in group)
    finally:
        for replica in group:
            replica.kill()
