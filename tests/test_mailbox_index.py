"""The SQLite store finds a mailbox's rows through an index kept in memory: it must agree with the table.

Random programs of puts, acks of any keys (not only the oldest), takes and
reopens run against the SQLite store and a plain model side by side; after
each step every mailbox's pages, key states and counts must match the model.
A reopen rebuilds the index from the table, so a change applied wrongly in
memory shows up as a difference either before or after it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_messenger.model import Message, new_key
from grpc_messenger.store import SqliteStore

T = TypeVar("T")
MAILBOXES = ("ann@example.org", "bob@example.org", "cy@example.org")

_step = st.one_of(
    st.tuples(st.just("put"), st.lists(st.sampled_from(MAILBOXES), min_size=1, max_size=12), st.none()),
    st.tuples(st.just("ack"), st.sampled_from(MAILBOXES), st.lists(st.integers(0, 30), max_size=8)),
    st.tuples(st.just("take"), st.sampled_from(MAILBOXES), st.integers(1, 5)),
    st.tuples(st.just("reopen"), st.none(), st.none()),
)


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=30)

    return asyncio.run(bounded())


def every_key(store: SqliteStore, mailbox: str, page_size: int) -> list[str]:
    keys: list[str] = []
    after = 0
    for _ in range(1000):
        page = run(store.fetch(mailbox, after_seq=after, limit=page_size, bytes_max=10**6))
        keys += [m.key for m in page.messages]
        after = page.next_after_seq
        if not page.more:
            return keys
    raise AssertionError("paging did not end")


def check(store: SqliteStore, model: dict[str, list[str]], page_size: int) -> None:
    for mailbox in MAILBOXES:
        assert every_key(store, mailbox, page_size) == model[mailbox]
        # a page exactly as long as the mailbox holds all of it and says there is no more
        # (a removed row's seq left in the index would take a place in it)
        whole = run(store.fetch(mailbox, after_seq=0, limit=max(1, len(model[mailbox])), bytes_max=10**6))
        assert [m.key for m in whole.messages] == model[mailbox]
        assert not whole.more
        queued = [s.key for s in run(store.key_states(mailbox, after_key="", limit=10**4)) if not s.tombstone]
        assert queued == sorted(model[mailbox])
    assert run(store.counts()).messages == sum(len(keys) for keys in model.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_step, min_size=1, max_size=25), st.integers(1, 4))
def test_pages_and_key_states_follow_every_put_ack_take_and_reopen(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any, Any]], page_size: int
) -> None:
    path = tmp_path_factory.mktemp("index") / "s.sqlite3"
    store = SqliteStore(path)
    model: dict[str, list[str]] = {mailbox: [] for mailbox in MAILBOXES}
    try:
        for kind, first, second in steps:
            if kind == "put":
                batch = [
                    Message(key=new_key(), sender="s@example.org", recipient=r, body="hi", created_unix_ms=1)
                    for r in first
                ]
                run(store.put_many(batch))
                for m in batch:
                    model[m.recipient].append(m.key)
            elif kind == "ack":
                mailbox = first
                held = model[mailbox]
                keys = [held[i] for i in second if i < len(held)]
                run(store.ack(mailbox, keys))
                model[mailbox] = [k for k in held if k not in keys]
            elif kind == "take":
                mailbox, limit = first, second
                taken = run(store.take(mailbox, limit=limit, bytes_max=10**6))
                assert [m.key for m in taken] == model[mailbox][:limit]
                model[mailbox] = model[mailbox][limit:]
            else:
                run(store.close())
                store = SqliteStore(path)
            check(store, model, page_size)
    finally:
        run(store.close())


def test_a_reader_paging_while_acks_commit_sees_each_remaining_message_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    mailbox = MAILBOXES[0]
    batch = [
        Message(key=new_key(), sender="s@example.org", recipient=mailbox, body=f"m{i}", created_unix_ms=1)
        for i in range(600)
    ]
    acked = {m.key for m in batch[::3]}
    stop = threading.Event()
    failures: list[str] = []

    async def read_while_acking() -> None:
        await store.put_many(batch)

        async def acker() -> None:
            for i in range(0, len(batch), 30):
                await store.ack(mailbox, [m.key for m in batch[i : i + 30] if m.key in acked])
            stop.set()

        async def reader() -> None:
            while not stop.is_set():
                seen: list[str] = []
                after = 0
                while True:
                    page = await store.fetch(mailbox, after_seq=after, limit=7, bytes_max=10**6)
                    seen += [m.key for m in page.messages]
                    after = page.next_after_seq
                    if not page.more:
                        break
                kept = [m.key for m in batch if m.key not in acked]
                if len(seen) != len(set(seen)) or not set(kept) <= set(seen):
                    failures.append(f"a pass saw {len(seen)} keys, {len(set(seen))} distinct")

        await asyncio.gather(acker(), reader())

    try:
        run(read_while_acking())
        assert not failures, failures[:3]
        assert [m.key for m in run(store.fetch(mailbox, after_seq=0, limit=1000, bytes_max=10**7)).messages] == [
            m.key for m in batch if m.key not in acked
        ]
    finally:
        run(store.close())
