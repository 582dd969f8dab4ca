"""Acked rows wait in the SQLite table for a sweep; until then, and after a crash, nothing sees them.

The SQLite store's Ack writes tombstones and leaves the rows for a later sweep
(many acks' rows at once). Checked against the in-memory store as the model:
after any mix of puts, acks (also repeated), repair tombstones, purges, scrubs,
sweeps and reopenings without a clean close (what a crash leaves on disk),
both stores serve, count, digest and list the same.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grpc_messenger.model import Message
from grpc_messenger.store import MemoryStore, SqliteStore
from grpc_messenger.store import sqlite as sqlite_store

BOXES = ["a@example.org", "b@example.org"]
KEYS = [f"key-{i:02d}" for i in range(8)]
CALL_TIMEOUT_S = 30.0

_step = st.one_of(
    st.tuples(st.just("put"), st.lists(st.tuples(st.sampled_from(BOXES), st.sampled_from(KEYS)), max_size=10)),
    st.tuples(st.just("ack"), st.sampled_from(BOXES), st.lists(st.sampled_from(KEYS), max_size=10)),
    st.tuples(st.just("tombstones"), st.sampled_from(BOXES), st.lists(st.sampled_from(KEYS), max_size=4)),
    st.tuples(st.just("purge"), st.integers(min_value=0, max_value=2)),
    st.tuples(st.just("scrub")),
    st.tuples(st.just("crash")),
    st.tuples(st.just("reopen")),
)


def _message(mailbox: str, key: str) -> Message:
    return Message(key=key, sender="s@example.org", recipient=mailbox, body=f"{key} for {mailbox}", created_unix_ms=1)


async def _view(store: SqliteStore | MemoryStore) -> object:
    pages = {}
    states = {}
    for box in BOXES:
        page = await store.fetch(box, after_seq=0, limit=1000, bytes_max=10**7)
        pages[box] = sorted(m.key for m in page.messages)
        states[box] = [(s.key, s.tombstone) for s in await store.key_states(box, after_key="", limit=1000)]
        queued = await store.get_queued(box, KEYS)
        assert sorted(m.key for m in queued) == pages[box]  # a peer is handed only what is served
    return (
        pages,
        states,
        await store.counts(),
        await store.digests(after_mailbox="", limit=100),
        await store.usage(BOXES),
    )


async def _run(path: Path, steps: list[tuple[Any, ...]]) -> None:
    model = MemoryStore()
    store = SqliteStore(path)
    crashed: list[SqliteStore] = []  # left open, never closed before reopening: what a crash leaves
    try:
        for step in steps:
            match step:
                case ("put", rows):
                    batch = [_message(box, key) for box, key in rows]
                    assert await store.put_many(batch) == await model.put_many(batch)
                case ("ack", box, keys):
                    assert await store.ack(box, keys) == await model.ack(box, keys)
                case ("tombstones", box, keys):
                    items = [(key, 500) for key in keys]
                    assert await store.apply_tombstones(box, items) == await model.apply_tombstones(box, items)
                case ("purge", age):
                    before_ms = (0, 501, 2**62)[min(age, 2)]  # none, the repair tombstones (at 500), all
                    done = await store.purge_tombstones(deleted_before_ms=before_ms, limit=1000)
                    assert done == await model.purge_tombstones(deleted_before_ms=before_ms, limit=1000)
                case ("scrub",):
                    await store.scrub(after_seq=0, limit=1000)
                case ("crash",):
                    crashed.append(store)
                    store = SqliteStore(path)
                case ("reopen",):
                    await store.close()
                    store = SqliteStore(path)
            assert await _view(store) == await _view(model)
    finally:
        await store.close()
        for old in crashed:
            await old.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(
    steps=[("put", [(BOXES[0], KEYS[0]), (BOXES[0], KEYS[1])]), ("ack", BOXES[0], [KEYS[0]]), ("crash",)],
    sweep_rows=1000,
)  # swept at open
@example(
    steps=[
        ("put", [(BOXES[0], KEYS[0]), (BOXES[0], KEYS[1])]),
        ("ack", BOXES[0], [KEYS[0]]),
        ("purge", 2),
        ("reopen",),
    ],
    sweep_rows=1000,
)  # swept before a purge
@example(
    steps=[
        ("put", [(BOXES[0], KEYS[0]), (BOXES[0], KEYS[1])]),
        ("ack", BOXES[0], [KEYS[0]]),
        ("ack", BOXES[0], [KEYS[0]]),
    ],
    sweep_rows=1000,
)  # acked twice before its sweep
@example(
    steps=[
        ("put", [(BOXES[0], KEYS[0]), (BOXES[0], KEYS[1])]),
        ("ack", BOXES[0], [KEYS[0]]),
        ("scrub",),
        ("ack", BOXES[0], [KEYS[1]]),
    ],
    sweep_rows=1000,
)  # swept by a scrub
@given(steps=st.lists(_step, min_size=1, max_size=14), sweep_rows=st.sampled_from([1, 3, 1000]))
def test_acked_rows_waiting_for_their_sweep_are_never_seen_even_after_a_crash(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[Any, ...]],
    sweep_rows: int,
) -> None:
    path = tmp_path_factory.mktemp("sweep") / "s.sqlite3"
    with monkeypatch.context() as patched:
        patched.setattr(sqlite_store, "SWEEP_ROWS", sweep_rows)
        patched.setattr(sqlite_store, "SWEEP_IDLE_S", 3600.0)  # only the size bound and the steps sweep here
        asyncio.run(asyncio.wait_for(_run(path, steps), timeout=CALL_TIMEOUT_S * 4))


def test_an_idle_writer_sweeps_the_acked_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "SWEEP_IDLE_S", 0.05)
    path = tmp_path / "s.sqlite3"

    def rows_in_table() -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    async def scenario() -> None:
        store = SqliteStore(path)
        try:
            keys = [f"idle-{i:02d}" for i in range(24)]
            batch = [_message(BOXES[0], key) for key in keys]
            await store.put_many(batch)
            assert await store.ack(BOXES[0], keys[:10]) == 10
            for _ in range(200):  # bounded: the idle sweep runs after 0.05 s
                if rows_in_table() == len(keys) - 10:
                    break
                await asyncio.sleep(0.02)
            assert rows_in_table() == len(keys) - 10
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=CALL_TIMEOUT_S))


def test_a_failed_sweep_leaves_the_rows_unseen_and_is_retried_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "SWEEP_IDLE_S", 0.02)
    monkeypatch.setattr(sqlite_store, "SWEEP_RETRY_S", 0.5)
    real_sweep = sqlite_store._sweep_now
    attempts: list[float] = []

    def full_disk_once(conn: sqlite3.Connection, txn: Any) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real_sweep(conn, txn)

    monkeypatch.setattr(sqlite_store, "_sweep_now", full_disk_once)
    path = tmp_path / "s.sqlite3"
    keys = [f"retry-{i:02d}" for i in range(6)]

    async def scenario() -> None:
        store = SqliteStore(path)
        try:
            await store.put_many([_message(BOXES[0], key) for key in keys])
            assert await store.ack(BOXES[0], keys[:4]) == 4
            for _ in range(300):  # bounded: the retry comes 0.5 s after the failure
                if len(attempts) >= 2:
                    break
                await asyncio.sleep(0.01)
            page = await store.fetch(BOXES[0], after_seq=0, limit=100, bytes_max=10**6)
            assert [m.key for m in page.messages] == keys[4:]  # never served, failed sweep or not
        finally:
            await store.close()
        assert len(attempts) == 2  # one failure, one retry: not one try per idle wake-up
        assert attempts[1] - attempts[0] >= 0.5
        with sqlite3.connect(path) as conn:
            assert int(conn.execute("SELECT count(*) FROM messages").fetchone()[0]) == 2

    asyncio.run(asyncio.wait_for(scenario(), timeout=CALL_TIMEOUT_S))
