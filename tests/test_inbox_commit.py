"""The local inbox group-commits concurrent readers' writes, and each still gets exactly its own answer.

A real inbox file (WAL, synchronous=FULL) written from many threads at once.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_messenger.client import inbox as inbox_module
from grpc_messenger.client.inbox import LocalInbox
from grpc_messenger.errors import InboxError
from grpc_messenger.model import Message

OWNER = "bob@example.org"
KEYS = [f"k{i:02d}" for i in range(30)]
WAIT_S = 30.0


def message(key: str) -> Message:
    return Message(key=key, sender="alice@example.org", recipient=OWNER, body=f"body of {key}", created_unix_ms=1)


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.lists(st.sampled_from(KEYS), max_size=8), min_size=1, max_size=12))
def test_concurrent_reads_store_each_key_once_and_show_it_once(reads: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = LocalInbox(Path(tmp) / "inbox.sqlite3")
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                stored = list(pool.map(lambda keys: inbox.store_new(OWNER, [message(k) for k in keys]), reads))
                taken = list(pool.map(lambda _: inbox.take_unshown(OWNER), reads))
            taken.append(inbox.take_unshown(OWNER))
        finally:
            inbox.close()
    stored_keys = [m.key for part in stored for m in part]
    assert sorted(stored_keys) == sorted({k for keys in reads for k in keys})  # each stored by one call only
    shown_keys = [m.key for part in taken for m in part]
    assert sorted(shown_keys) == sorted(stored_keys)  # and shown exactly once


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(KEYS), max_size=8), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
)
def test_reads_that_store_and_take_in_one_commit_show_each_key_once(reads: list[list[str]], limit: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = LocalInbox(Path(tmp) / "inbox.sqlite3")
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                done = list(
                    pool.map(lambda keys: inbox.store_and_take(OWNER, [message(k) for k in keys], limit=limit), reads)
                )
            rest = inbox.take_unshown(OWNER)
        finally:
            inbox.close()
    stored_keys = [m.key for stored, _ in done for m in stored]
    assert sorted(stored_keys) == sorted({k for keys in reads for k in keys})
    taken = [m.key for _, part in done for m in part]
    assert limit is None or all(len(part) <= limit for _, part in done)
    assert sorted(taken + [m.key for m in rest]) == sorted(stored_keys)  # each shown once, none left behind


def test_store_and_take_is_one_transaction_a_failing_take_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_take(owner: str, limit: int | None) -> Callable[[sqlite3.Connection], list[Message]]:
        def work(conn: sqlite3.Connection) -> list[Message]:
            raise sqlite3.OperationalError("disk I/O error")

        return work

    inbox = LocalInbox(tmp_path / "inbox.sqlite3")
    try:
        with monkeypatch.context() as patched:
            patched.setattr(inbox_module, "_taking", failing_take)
            with pytest.raises(InboxError):
                inbox.store_and_take(OWNER, [message("a"), message("b")])
        assert inbox.count(OWNER) == 0  # the store half was rolled back with the take
        stored, taken = inbox.store_and_take(OWNER, [message("a"), message("b")])
        assert [m.key for m in stored] == [m.key for m in taken] == ["a", "b"]
    finally:
        inbox.close()


def test_calls_queued_behind_a_commit_share_the_next_and_a_failing_one_fails_alone(tmp_path: Path) -> None:
    inbox = LocalInbox(tmp_path / "inbox.sqlite3")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE inbox SET shown = 1")
        raise ValueError("a bug in one caller's work")

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            with inbox._lock:  # a commit under way: the next calls queue up behind it
                first = pool.submit(inbox.store_new, OWNER, [message("a"), message("b")])
                failing = pool.submit(inbox._write, broken)
                second = pool.submit(inbox.store_new, OWNER, [message("b"), message("c")])
                wait_for(lambda: len(inbox._queued) == 3)
            stored = sorted(m.key for m in first.result(timeout=WAIT_S) + second.result(timeout=WAIT_S))
            with pytest.raises(ValueError, match="one caller's work"):
                failing.result(timeout=WAIT_S)
        assert stored == ["a", "b", "c"]  # "b" stored once, by whichever call came first
        assert [m.key for m in inbox.take_unshown(OWNER)] == ["a", "b", "c"]  # the failed UPDATE was undone
    finally:
        inbox.close()
