"""Hinted hand-off state: what is owed reaches the outbox, what is answered in time never does.

Driven with a fake clock and a real outbox file; no replica, no network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_messenger.client.handoff import HandOff
from grpc_messenger.client.outbox import Outbox
from grpc_messenger.errors import Failure, Status
from grpc_messenger.model import Message, ReplicaOutcome, ReplicaState, new_key

BOB = "bob@example.org"
GRACE_S = 0.5
DOWN = Failure(Status.UNAVAILABLE, "connection refused")


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def messages(n: int) -> list[Message]:
    return [
        Message(key=new_key(), sender="alice@example.org", recipient=BOB, body=f"m{i}", created_unix_ms=1)
        for i in range(n)
    ]


def stored(replica: str) -> tuple[ReplicaOutcome, ...]:
    return (ReplicaOutcome(replica, ReplicaState.STORED),)


def failed(replica: str, failure: Failure = DOWN) -> tuple[ReplicaOutcome, ...]:
    return (ReplicaOutcome(replica, ReplicaState.FAILED, failure),)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        yield box
    finally:
        box.close()


def make(outbox: Outbox, clock: FakeClock) -> HandOff:
    return HandOff(outbox, grace_s=lambda: GRACE_S, deadline_s=5.0, clock=clock)


def write(handoff: HandOff, *, everything: bool = False) -> None:
    asyncio.run(asyncio.wait_for(handoff.write_due(everything=everything), timeout=10))


def owed_pairs(outbox: Outbox) -> set[tuple[str, str]]:
    return {(d.message.key, d.replica) for d in outbox.listing(limit=1000)}


def test_failed_replica_is_owed_at_the_next_write(outbox: Outbox) -> None:
    clock = FakeClock()
    handoff = make(outbox, clock)
    batch = messages(3)
    handoff.on_answer(1, batch, "r2", failed("r2"))
    assert handoff.next_due_s() == 0.0
    write(handoff)
    assert owed_pairs(outbox) == {(m.key, "r2") for m in batch}
    assert {d.last_error for d in outbox.listing(limit=10)} == {"UNAVAILABLE: connection refused"}
    assert handoff.next_due_s() is None


def test_answer_within_grace_never_touches_the_disk(outbox: Outbox) -> None:
    clock = FakeClock()
    handoff = make(outbox, clock)
    batch = messages(4)
    handoff.on_quorum(7, batch, ["r2", "r3"])
    assert handoff.unwritten() == 8
    assert handoff.next_due_s() == pytest.approx(GRACE_S)
    clock.now_s += GRACE_S / 2
    write(handoff)  # nothing due yet
    assert outbox.counts() == (0, 0)
    handoff.on_answer(7, batch, "r2", stored("r2"))
    handoff.on_answer(7, batch, "r3", stored("r3"))
    clock.now_s += GRACE_S
    write(handoff)
    assert outbox.counts() == (0, 0)
    assert handoff.unwritten() == 0


def test_in_doubt_past_grace_is_written_then_paid_when_answered(outbox: Outbox) -> None:
    clock = FakeClock()
    handoff = make(outbox, clock)
    batch = messages(2)
    handoff.on_quorum(1, batch, ["r3"])
    clock.now_s += GRACE_S + 0.01
    assert handoff.next_due_s() == 0.0
    write(handoff)
    assert owed_pairs(outbox) == {(m.key, "r3") for m in batch}
    # first due only after the call's own deadline: it may still be answered
    assert outbox.due(limit=10) == []
    handoff.on_answer(1, batch, "r3", stored("r3"))
    write(handoff)
    assert outbox.counts() == (0, 0)


def test_in_doubt_that_then_fails_stays_owed_with_its_reason(outbox: Outbox) -> None:
    clock = FakeClock()
    handoff = make(outbox, clock)
    batch = messages(2)
    handoff.on_quorum(1, batch, ["r3"])
    clock.now_s += GRACE_S + 0.01
    write(handoff)
    handoff.on_answer(1, batch, "r3", failed("r3", Failure(Status.DEADLINE_EXCEEDED, "too slow")))
    write(handoff)
    assert owed_pairs(outbox) == {(m.key, "r3") for m in batch}
    assert {d.last_error for d in outbox.listing(limit=10)} == {"DEADLINE_EXCEEDED: too slow"}


def test_refusals_are_not_owed_but_mixed_answers_owe_only_the_failed(outbox: Outbox) -> None:
    clock = FakeClock()
    handoff = make(outbox, clock)
    batch = messages(3)
    answers = [
        ReplicaOutcome("r1", ReplicaState.STORED),
        ReplicaOutcome("r1", ReplicaState.REJECTED, Failure(Status.INVALID_ARGUMENT, "bad")),
        ReplicaOutcome("r1", ReplicaState.FAILED, Failure(Status.RESOURCE_EXHAUSTED, "full")),
    ]
    handoff.on_answer(1, batch, "r1", answers)
    handoff.on_answer(
        2, messages(2), "r2", (ReplicaOutcome("r2", ReplicaState.DENIED, Failure(Status.UNAUTHENTICATED)),)
    )
    write(handoff)
    assert owed_pairs(outbox) == {(batch[2].key, "r1")}


def test_close_writes_everything_still_in_doubt(outbox: Outbox) -> None:
    clock = FakeClock()
    handoff = make(outbox, clock)
    batch = messages(5)
    handoff.on_quorum(1, batch, ["r2"])
    write(handoff, everything=True)  # no time passed: a sender closing now still leaves its hint
    assert owed_pairs(outbox) == {(m.key, "r2") for m in batch}


@settings(max_examples=25, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["quorum", "stored", "failed", "tick", "write"])), max_size=30
    )
)
def test_every_delivery_ends_owed_exactly_when_its_replica_did_not_store_it(
    tmp_path_factory: pytest.TempPathFactory, events: Sequence[tuple[int, str]]
) -> None:
    """Any order of quorum/answer/clock/write events: after a final write, the outbox owes
    exactly the (batch, replica) pairs whose last word was a failure or no answer at all."""
    box = Outbox(tmp_path_factory.mktemp("handoff") / "outbox.sqlite3")
    try:
        clock = FakeClock()
        handoff = make(box, clock)
        batches = {token: messages(2) for token in range(4)}
        quorum_seen: set[int] = set()
        answered: dict[int, str] = {}
        for token, event in events:
            batch = batches[token]
            if event == "quorum" and token not in quorum_seen and token not in answered:
                quorum_seen.add(token)
                handoff.on_quorum(token, batch, ["r2"])
            elif event in ("stored", "failed") and token not in answered:
                answered[token] = event
                handoff.on_answer(token, batch, "r2", stored("r2") if event == "stored" else failed("r2"))
            elif event == "tick":
                clock.now_s += GRACE_S
            elif event == "write":
                write(handoff)
        write(handoff, everything=True)
        expected = {
            (m.key, "r2")
            for token, batch in batches.items()
            for m in batch
            if answered.get(token) == "failed" or (token in quorum_seen and token not in answered)
        }
        assert owed_pairs(box) == expected
    finally:
        box.close()
