"""Both stores, the same contract: once per key, tombstones, paging, durability, damage detection."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_messenger.errors import StoreError
from grpc_messenger.model import Message, PutOutcome, new_key
from grpc_messenger.store import MemoryStore, SqliteStore, Store
from tests import strategies

T = TypeVar("T")
BOB = "bob@example.org"


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=30)

    return asyncio.run(bounded())


def message(body: str = "hi", *, key: str | None = None, recipient: str = BOB, created: int = 1) -> Message:
    return Message(
        key=key or new_key(), sender="alice@example.org", recipient=recipient, body=body, created_unix_ms=created
    )


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def make() -> Store:
        store: Store = SqliteStore(tmp_path / "s.sqlite3") if request.param == "sqlite" else MemoryStore()
        opened.append(store)
        return store

    yield make
    for store in opened:
        run(store.close())


def test_a_key_is_stored_once_per_mailbox(make_store: Callable[[], Store]) -> None:
    store = make_store()
    m = message()
    same_key_other_box = Message(m.key, m.sender, "carol@example.org", m.body, m.created_unix_ms)
    outcomes = run(store.put_many([m, m, same_key_other_box]))
    assert outcomes == [PutOutcome.STORED, PutOutcome.ALREADY_STORED, PutOutcome.STORED]
    assert run(store.counts()).messages == 2


def test_same_key_other_content_is_a_conflict_and_changes_nothing(make_store: Callable[[], Store]) -> None:
    store = make_store()
    m = message("original")
    run(store.put_many([m]))
    changed = Message(m.key, m.sender, m.recipient, "changed", m.created_unix_ms)
    assert run(store.put_many([changed])) == [PutOutcome.CONFLICT]
    page = run(store.fetch(BOB, after_seq=0, limit=10, bytes_max=10**6))
    assert [x.body for x in page.messages] == ["original"]


def test_ack_leaves_a_tombstone_that_stops_resurrection(make_store: Callable[[], Store]) -> None:
    store = make_store()
    m = message()
    run(store.put_many([m]))
    assert run(store.ack(BOB, [m.key])) == 1
    assert run(store.ack(BOB, [m.key])) == 0  # idempotent
    assert run(store.put_many([m])) == [PutOutcome.ALREADY_STORED]
    assert run(store.fetch(BOB, after_seq=0, limit=10, bytes_max=10**6)).messages == ()
    counts = run(store.counts())
    assert (counts.messages, counts.tombstones) == (0, 1)


def test_ack_of_a_key_never_held_blocks_its_late_arrival(make_store: Callable[[], Store]) -> None:
    # the replica missed the send, the reader acked everywhere, then the retry arrives
    store = make_store()
    m = message()
    run(store.ack(BOB, [m.key]))
    assert run(store.put_many([m])) == [PutOutcome.ALREADY_STORED]
    assert run(store.fetch(BOB, after_seq=0, limit=10, bytes_max=10**6)).messages == ()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(strategies.messages(recipient=BOB), max_size=40, unique_by=lambda m: m.key),
    st.integers(min_value=1, max_value=7),
)
def test_paging_returns_every_message_once_in_arrival_order(
    make_store: Callable[[], Store], batch: list[Message], page_size: int
) -> None:
    store = make_store()
    run(store.put_many(batch))
    seen: list[Message] = []
    after = 0
    for _ in range(100):
        page = run(store.fetch(BOB, after_seq=after, limit=page_size, bytes_max=10**6))
        assert len(page.messages) <= page_size
        seen.extend(page.messages)
        after = page.next_after_seq
        if not page.more:
            break
    assert [m.key for m in seen] == [m.key for m in batch]
    assert seen == batch
    run(store.ack(BOB, [m.key for m in batch]))


def test_page_stops_at_the_byte_limit_but_always_makes_progress(make_store: Callable[[], Store]) -> None:
    store = make_store()
    run(store.put_many([message("x" * 1000) for _ in range(5)]))
    page = run(store.fetch(BOB, after_seq=0, limit=100, bytes_max=2500))
    assert len(page.messages) == 2
    assert page.more
    tiny = run(store.fetch(BOB, after_seq=0, limit=100, bytes_max=1))
    assert len(tiny.messages) == 1


def test_take_removes_and_returns_the_oldest(make_store: Callable[[], Store]) -> None:
    store = make_store()
    batch = [message(f"m{i}") for i in range(5)]
    run(store.put_many(batch))
    assert [m.body for m in run(store.take(BOB, limit=3, bytes_max=10**6))] == ["m0", "m1", "m2"]
    assert [m.body for m in run(store.take(BOB, limit=10, bytes_max=10**6))] == ["m3", "m4"]
    assert run(store.take(BOB, limit=10, bytes_max=10**6)) == []
    assert run(store.put_many(batch[:1])) == [PutOutcome.ALREADY_STORED]


def test_concurrent_writers_share_commits_and_lose_nothing(make_store: Callable[[], Store]) -> None:
    store = make_store()

    async def many() -> list[list[PutOutcome]]:
        return await asyncio.gather(*(store.put_many([message(f"c{i}")]) for i in range(500)))

    results = run(many())
    assert all(r == [PutOutcome.STORED] for r in results)
    assert run(store.counts()).messages == 500


def test_lone_puts_committed_by_their_callers_and_queued_puts_lose_nothing(tmp_path: Path) -> None:
    # a lone put may commit on its caller's thread while the writer thread commits others
    store = SqliteStore(tmp_path / "s.sqlite3")
    errors: list[BaseException] = []

    async def lone(prefix: str, n: int) -> None:
        for i in range(n):
            assert await store.put_many([message(f"{prefix}{i}")]) == [PutOutcome.STORED]

    async def batches(n: int) -> None:
        for i in range(n):
            assert await store.put_many([message(f"b{i}-{j}") for j in range(20)]) == [PutOutcome.STORED] * 20

    async def mixed() -> None:
        await asyncio.gather(lone("a", 100), lone("c", 100), batches(10))

    def other_loop() -> None:
        try:
            run(lone("t", 100))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        thread = threading.Thread(target=other_loop)
        thread.start()
        run(mixed())
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert errors == []
        assert run(store.counts()).messages == 500
        page = run(store.fetch(BOB, after_seq=0, limit=1000, bytes_max=10**7))
        assert len({m.key for m in page.messages}) == 500
        assert not page.more
    finally:
        run(store.close())
    reopened = SqliteStore(tmp_path / "s.sqlite3")  # the per-mailbox state written matches what was stored
    try:
        assert run(reopened.counts()).messages == 500
    finally:
        run(reopened.close())


def test_sqlite_store_keeps_messages_and_identity_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    replica_id = store.replica_id
    batch = [message(f"d{i}") for i in range(50)]
    run(store.put_many(batch))
    run(store.ack(BOB, [batch[0].key]))
    run(store.close())
    reopened = SqliteStore(path)
    try:
        assert reopened.replica_id == replica_id
        page = run(reopened.fetch(BOB, after_seq=0, limit=100, bytes_max=10**6))
        assert [m.body for m in page.messages] == [f"d{i}" for i in range(1, 50)]
        assert run(reopened.put_many([batch[0]])) == [PutOutcome.ALREADY_STORED]
    finally:
        run(reopened.close())


def test_sqlite_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    try:
        conn = sqlite3.connect(tmp_path / "s.sqlite3")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        # synchronous is per connection: check the writer's own setting
        assert store._writer_conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        run(store.close())


def test_a_damaged_row_is_never_served(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    good, bad = message("good"), message("will be damaged")
    run(store.put_many([good, bad]))
    run(store.close())
    conn = sqlite3.connect(path)
    (data,) = conn.execute("SELECT wire FROM messages WHERE msg_key = ?", (bad.key,)).fetchone()
    tampered = data.replace(b"will be damaged", b"will be tampered")
    conn.execute("UPDATE messages SET wire = ? WHERE msg_key = ?", (tampered, bad.key))
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        page = run(store.fetch(BOB, after_seq=0, limit=10, bytes_max=10**6))
        assert [m.body for m in page.messages] == ["good"]
        assert [m.body for m in run(store.take(BOB, limit=10, bytes_max=10**6))] == ["good"]
    finally:
        run(store.close())


def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        SqliteStore(path)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    run(store.close())
    with pytest.raises(StoreError):
        run(store.put_many([message()]))


def test_digests_match_between_stores_with_the_same_keys(tmp_path: Path) -> None:
    """SQLite keeps digests with triggers, memory computes them: both must agree exactly."""
    sqlite_store, memory_store = SqliteStore(tmp_path / "s.sqlite3"), MemoryStore()
    try:
        batch = [message(f"m{i}", recipient=f"box{i % 3}@example.org") for i in range(30)]
        for store in (sqlite_store, memory_store):
            run(store.put_many(batch))
            run(store.ack("box0@example.org", [m.key for m in batch[:6]]))
            run(store.ack("box1@example.org", ["never-held-key"]))
        left = run(sqlite_store.digests(after_mailbox="", limit=100))
        right = run(memory_store.digests(after_mailbox="", limit=100))
        assert left == right
        assert [d.mailbox for d in left] == ["box0@example.org", "box1@example.org", "box2@example.org"]
        assert run(sqlite_store.state_digest()) == run(memory_store.state_digest()) != 0
        # one more ack on one side only: that mailbox, and only it, differs
        run(sqlite_store.ack("box2@example.org", [batch[2].key]))
        changed = run(sqlite_store.digests(after_mailbox="", limit=100))
        assert [a == b for a, b in zip(changed, right, strict=True)] == [True, True, False]
    finally:
        run(sqlite_store.close())


def test_key_states_list_queued_and_tombstoned_keys_in_order(make_store: Callable[[], Store]) -> None:
    store = make_store()
    batch = [message(f"k{i}", key=f"key-{i:02d}") for i in range(10)]
    run(store.put_many(batch))
    run(store.ack(BOB, ["key-03", "key-07"]))
    first = run(store.key_states(BOB, after_key="", limit=4))
    rest = run(store.key_states(BOB, after_key=first[-1].key, limit=100))
    states = first + rest
    assert [s.key for s in states] == [f"key-{i:02d}" for i in range(10)]
    assert {s.key for s in states if s.tombstone} == {"key-03", "key-07"}
    assert all(s.deleted_unix_ms > 0 for s in states if s.tombstone)
    queued = run(store.get_queued(BOB, ["key-01", "key-03", "missing"]))
    assert [m.key for m in queued] == ["key-01"]


def test_repair_tombstones_keep_the_earliest_time_and_purge_by_age(make_store: Callable[[], Store]) -> None:
    store = make_store()
    queued_copy = message("queued here")
    run(store.put_many([queued_copy]))
    assert run(store.apply_tombstones(BOB, [(queued_copy.key, 5_000), ("other-key", 9_000)])) == 1
    run(store.apply_tombstones(BOB, [("other-key", 7_000), (queued_copy.key, 8_000)]))
    times = {s.key: s.deleted_unix_ms for s in run(store.key_states(BOB, after_key="", limit=10))}
    assert times == {queued_copy.key: 5_000, "other-key": 7_000}
    before = run(store.digests(after_mailbox="", limit=10))
    assert run(store.purge_tombstones(deleted_before_ms=6_000, limit=100)) == 1
    assert [s.key for s in run(store.key_states(BOB, after_key="", limit=10))] == ["other-key"]
    assert run(store.digests(after_mailbox="", limit=10)) != before
    assert run(store.counts()).tombstones == 1


def _stored(path: Path, batch: list[Message]) -> None:
    store = SqliteStore(path)
    run(store.put_many(batch))
    run(store.close())  # clean close: everything is checkpointed into the main file


def test_a_byte_flipped_in_a_stored_key_is_caught_at_open(tmp_path: Path) -> None:
    """Found by `messenger chaos`: quick_check passed and the row was served under a key nobody sent."""
    path = tmp_path / "s.sqlite3"
    _stored(path, [message(f"body {i}", key=f"key-{i:04d}AAAA") for i in range(50)])
    data = bytearray(path.read_bytes())
    flipped = message("body 7", key="key-0007AAAA")
    at = data.find(b"key-0007AAAA" + flipped.digest[:16].encode())  # the table row: msg_key, then digest
    assert at > 0
    data[at + 8] = ord("B")  # still a well-formed key, now missing from the unique index
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="integrity check failed"):
        SqliteStore(path)


def test_a_key_or_body_changed_behind_our_back_is_not_served(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    batch = [message(f"m{i}", key=f"key-{i}") for i in range(4)]
    _stored(path, batch)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE messages SET msg_key = 'key-phantom' WHERE msg_key = 'key-1'")  # index stays consistent
    conn.execute("UPDATE messages SET wire = X'ff41' WHERE msg_key = 'key-2'")  # not even protobuf
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        page = run(store.fetch(BOB, after_seq=0, limit=10, bytes_max=10**6))
        assert [m.key for m in page.messages] == ["key-0", "key-3"]  # the rest of the mailbox still reads
        assert run(store.get_queued(BOB, ["key-phantom", "key-2", "key-3"])) == [batch[3]]
    finally:
        run(store.close())
