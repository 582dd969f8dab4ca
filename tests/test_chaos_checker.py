"""The checker on hand-made histories, and the fault schedule's determinism and bounds."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from grpc_messenger.chaos import SCENARIOS, ChaosConfig, FaultKind, SchedulePlan, check, plan_schedule, schedule_for
from grpc_messenger.chaos.faults import MANDATORY, NEEDS_SENDER_PROCESSES
from tests.chaos_support import CI_DATA_LOSS_GAP_S, CI_DURATION_S, CI_SEED


def sent(key: str, *, outcome: str = "ok", mailbox: str = "mb@x.org", body: str | None = None) -> list[dict[str, Any]]:
    body = body if body is not None else f"body of {key}"
    return [
        {"t": 0.0, "type": "invoke", "process": "s1", "key": key, "mailbox": mailbox, "body": body},
        {"t": 0.1, "type": outcome, "process": "s1", "key": key},
    ]


def shown(key: str, *, mailbox: str = "mb@x.org", body: str | None = None) -> dict[str, Any]:
    body = body if body is not None else f"body of {key}"
    return {"t": 1.0, "type": "deliver", "process": "d1", "mailbox": mailbox, "key": key, "body": body}


def test_clean_history_passes() -> None:
    report = check([*sent("a"), *sent("b"), shown("a"), shown("b")])
    assert report.ok
    assert (report.sent_ok, report.delivered, report.lost, report.duplicated, report.phantom) == (2, 2, 0, 0, 0)


def test_acknowledged_message_never_shown_is_lost() -> None:
    report = check([*sent("a"), *sent("b"), shown("a")])
    assert not report.ok
    assert report.lost == 1
    assert report.lost_sample == ("b",)


def test_failed_send_never_shown_is_not_lost() -> None:
    report = check([*sent("a", outcome="fail"), *sent("b", outcome="info"), *sent("c", outcome="ok"), shown("c")])
    assert report.ok
    assert (report.sent_ok, report.sent_failed, report.sent_unknown) == (1, 1, 1)


def test_failed_send_shown_later_counts_as_delivered_unacknowledged() -> None:
    report = check([*sent("a", outcome="fail"), shown("a")])
    assert report.ok
    assert report.delivered == 1
    assert report.delivered_unacknowledged == 1


def test_message_shown_twice_is_duplicated() -> None:
    report = check([*sent("a"), shown("a"), shown("a")])
    assert not report.ok
    assert report.duplicated == 1
    assert report.duplicated_sample == ("a",)
    assert report.delivered == 0  # not exactly once


def test_message_never_sent_is_phantom() -> None:
    report = check([*sent("a"), shown("a"), shown("ghost")])
    assert not report.ok
    assert report.phantom == 1
    assert report.phantom_sample == ("ghost",)


def test_message_shown_with_other_content_or_mailbox_is_phantom() -> None:
    report = check([*sent("a"), *sent("b"), shown("a", body="tampered"), shown("b", mailbox="other@x.org")])
    assert report.phantom == 2
    assert report.lost == 0  # they were shown, though wrongly


def test_run_figures_come_from_the_history() -> None:
    events = [
        *sent("a"),
        {"t": 0.5, "type": "fault", "phase": "start", "kind": "kill", "target": "r1"},
        {"t": 1.5, "type": "fault", "phase": "end", "kind": "kill", "target": "r1"},
        {"t": 2.0, "type": "settled", "settle_s": 3.5, "owed": 0},
        {"t": 2.0, "type": "replication", "under_replicated": 7, "queued": 9, "sample": []},
        {"t": 2.5, "type": "read_fail", "process": "d1", "mailbox": "mb@x.org", "error": "x"},
        shown("a"),
    ]
    report = check(events)
    assert (report.faults, report.settle_s, report.under_replicated, report.read_failures) == (1, 3.5, 7, 1)
    data = report.to_dict()
    for key in ("sent_ok", "delivered", "lost", "duplicated", "phantom", "under_replicated", "faults", "settle_s"):
        assert key in data


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), scenario=st.sampled_from(sorted(SCENARIOS)), sender_processes=st.integers(0, 4))
def test_schedule_is_a_function_of_the_seed_and_keeps_data_loss_apart(
    seed: int, scenario: str, sender_processes: int
) -> None:
    if scenario in NEEDS_SENDER_PROCESSES:
        sender_processes = max(1, sender_processes)
    plan = SchedulePlan(duration_s=60.0, scenario=scenario, data_loss_gap_s=10.0, sender_processes=sender_processes)
    first = plan_schedule(random.Random(seed), plan)
    assert first == plan_schedule(random.Random(seed), plan)
    times = [f.at_s for f in first]
    assert times == sorted(times)
    assert all(plan.warmup_s <= f.at_s < plan.duration_s - plan.cooldown_s for f in first)
    losses = [f.at_s for f in first if f.kind.loses_data]
    assert all(b - a >= plan.data_loss_gap_s for a, b in itertools.pairwise(losses))
    for f in first:
        if f.kind is FaultKind.KILL_SENDER:
            assert 0 <= f.target < sender_processes
            continue
        assert f.kind in SCENARIOS[scenario]
        assert 0 <= f.target < plan.n
        assert (f.other >= 0) == (f.kind in (FaultKind.CUT_PEER, FaultKind.LOSE_PEER))
        assert f.other != f.target


def test_ci_run_schedule_has_every_required_fault() -> None:
    """The CI run (test_chaos_run) must include a kill, a lost disk, damage, a cut and a lost response."""
    schedule = schedule_for(ChaosConfig(seed=CI_SEED, duration_s=CI_DURATION_S, data_loss_gap_s=CI_DATA_LOSS_GAP_S))
    kinds = {f.kind for f in schedule}
    assert set(MANDATORY) <= kinds, sorted(k.value for k in set(MANDATORY) - kinds)


def _read(key: str, created: int, sender: str, read: int) -> dict[str, Any]:
    return {**shown(key), "created_unix_ms": created, "sender": sender, "read": read}


def test_a_read_shown_out_of_creation_order_is_misordered() -> None:
    history = [*sent("a"), *sent("b"), *sent("c"), _read("a", 5, "s1", 1), _read("b", 3, "s1", 1)]
    history += [_read("c", 1, "s1", 2)]  # a later read may show older mail: judged per read
    report = check(history)
    assert not report.ok
    assert report.misordered == 1


def test_ties_in_creation_time_are_broken_by_sender_then_key() -> None:
    history = [*sent("a"), *sent("b"), *sent("c"), _read("b", 5, "s1", 1), _read("a", 5, "s2", 1)]
    history += [_read("c", 5, "s2", 1)]
    assert check(history).misordered == 0
    assert check([*sent("a"), *sent("b"), _read("b", 5, "s1", 1), _read("a", 5, "s1", 1)]).misordered == 1
