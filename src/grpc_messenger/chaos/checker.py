"""The checker: read a history, decide whether every acknowledged message arrived exactly once.

Pure: a history in, a report out. Definitions (per message key):

- sent_ok:     send() reported success (an `ok` event).
- delivered:   shown to its reader exactly once (any send, acknowledged or not:
               a send that failed may still arrive through the outbox, which is fine).
- lost:        sent_ok, and never shown to any reader.
- duplicated:  shown more than once (to its reader, or to two readers).
- phantom:     shown, but never sent, or shown with other content or in another mailbox.
- under_replicated: still queued after settling but not on every replica (from the
               `replication` event the runner records before the final drain).
- in_doubt:    invoked, and no outcome ever recorded: the sender process was killed
               before send() returned. Such a send may arrive at most once (a second
               showing counts as duplicated like any other); `in_doubt_delivered`
               says how many did arrive.

- misordered:  a receive() that showed its messages out of the documented order
               (sender's creation time, then sender, then key); judged within
               each read, from the `read`, `created_unix_ms` and `sender` of its
               deliveries (histories without them are not judged).

Events may come from several processes' files merged by time, so a delivery is
judged against every invoke of the whole history, not only the earlier ones.

A run passes when lost, duplicated and phantom are all zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLE_KEYS_MAX = 10


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The figures of one run."""

    sent: int
    sent_ok: int
    sent_failed: int
    sent_unknown: int
    delivered: int
    delivered_unacknowledged: int
    lost: int
    duplicated: int
    phantom: int
    under_replicated: int
    faults: int
    settle_s: float | None
    read_failures: int
    in_doubt: int = 0
    in_doubt_delivered: int = 0
    senders_killed: int = 0
    misordered: int = 0
    lost_sample: tuple[str, ...] = field(default=())
    duplicated_sample: tuple[str, ...] = field(default=())
    phantom_sample: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when nothing acknowledged was lost, nothing shown twice, nothing made up, order kept."""
        return self.lost == 0 and self.duplicated == 0 and self.phantom == 0 and self.misordered == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (samples as lists)."""
        data = asdict(self)
        for name in ("lost_sample", "duplicated_sample", "phantom_sample"):
            data[name] = list(data[name])
        data["ok"] = self.ok
        return data


def check(events: Iterable[Mapping[str, Any]]) -> CheckReport:
    """Check one history (see module docstring)."""
    invoked: dict[str, tuple[str, str]] = {}  # key -> (mailbox, body)
    outcome: dict[str, str] = {}
    shown: dict[str, int] = {}
    delivered_as: dict[str, set[tuple[str, str]]] = {}
    under_replicated = 0
    senders_killed = 0
    last_in_read: dict[tuple[str, int], tuple[int, str, str]] = {}
    misordered: set[tuple[str, int]] = set()
    faults = 0
    settle_s: float | None = None
    read_failures = 0
    for event in events:
        kind = event["type"]
        if kind == "invoke":
            key = event["key"]
            assert key not in invoked, f"key {key} invoked twice: the workload must never reuse a key"
            invoked[key] = (event["mailbox"], event["body"])
        elif kind in ("ok", "fail", "info"):
            outcome[event["key"]] = kind
        elif kind == "deliver":
            key = event["key"]
            shown[key] = shown.get(key, 0) + 1
            delivered_as.setdefault(key, set()).add((event["mailbox"], event["body"]))
            if "read" in event and "created_unix_ms" in event:
                read = (event["process"], int(event["read"]))
                order = (int(event["created_unix_ms"]), str(event.get("sender", "")), key)
                if read in last_in_read and order < last_in_read[read]:
                    misordered.add(read)
                last_in_read[read] = order
        elif kind == "read_fail":
            read_failures += 1
        elif kind == "fault" and event.get("phase") == "start":
            faults += 1
        elif kind == "replication":
            under_replicated = int(event["under_replicated"])
        elif kind == "settled":
            settle_s = event["settle_s"]
        elif kind == "sender_killed":
            senders_killed += 1
    phantoms = {k for k, forms in delivered_as.items() if k not in invoked or forms != {invoked[k]}}
    in_doubt = {k for k in invoked if k not in outcome}
    ok_keys = {k for k, v in outcome.items() if v == "ok"}
    lost = sorted(k for k in ok_keys if k not in shown)
    duplicated = sorted(k for k, n in shown.items() if n > 1)
    once = {k for k, n in shown.items() if n == 1 and k not in phantoms}
    return CheckReport(
        sent=len(invoked),
        sent_ok=len(ok_keys),
        sent_failed=sum(1 for v in outcome.values() if v == "fail"),
        sent_unknown=len(invoked) - len(ok_keys) - sum(1 for v in outcome.values() if v == "fail"),
        delivered=len(once),
        delivered_unacknowledged=len(once - ok_keys),
        lost=len(lost),
        duplicated=len(duplicated),
        phantom=len(phantoms),
        under_replicated=under_replicated,
        faults=faults,
        settle_s=settle_s,
        read_failures=read_failures,
        in_doubt=len(in_doubt),
        in_doubt_delivered=len(in_doubt & once),
        senders_killed=senders_killed,
        misordered=len(misordered),
        lost_sample=tuple(lost[:SAMPLE_KEYS_MAX]),
        duplicated_sample=tuple(duplicated[:SAMPLE_KEYS_MAX]),
        phantom_sample=tuple(sorted(phantoms)[:SAMPLE_KEYS_MAX]),
    )
