"""Bulk send: many messages from a file through the library's batching, with progress.

`--file` holds one body per line; `--jsonl` one JSON object per line with `to`,
`body` and optionally `key` (given keys make a resend of the same file safe).
Every line is checked before anything is sent, so a bad line sends nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc_messenger.errors import InvalidInput
from grpc_messenger.model import Draft, ReplicaState, SendReport, build_message, new_key

LINES_MAX = 1_000_000
CHUNK_MESSAGES = 1000  # one send_many call per chunk: bounds memory and paces the progress bar

_OWED_STATES = (ReplicaState.FAILED, ReplicaState.PENDING)


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as lines:
            for number, line in enumerate(lines, start=1):
                if number > LINES_MAX:
                    raise InvalidInput(f"{path}: more than {LINES_MAX:,} lines; split the file")
                yield number, line.removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc


def _checked(path: Path, number: int, draft: Draft) -> Draft:
    try:
        build_message(sender=draft.sender, recipient=draft.recipient, body=draft.body, key=draft.key or new_key())
    except InvalidInput as exc:
        raise InvalidInput(f"{path} line {number}: {exc}") from exc
    return draft


def drafts_from_lines(path: Path, *, sender: str, recipient: str) -> list[Draft]:
    """One draft per non-blank line of `path` (blank lines separate nothing and are skipped)."""
    return [
        _checked(path, number, Draft(sender, recipient, line)) for number, line in _numbered_lines(path) if line.strip()
    ]


def drafts_from_jsonl(path: Path, *, sender: str, recipient: str | None) -> list[Draft]:
    """One draft per JSON object line of `path` (`to` defaults to `recipient`); blank lines skipped."""
    drafts: list[Draft] = []
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path} line {number}: not JSON ({exc.msg})") from exc
        drafts.append(_checked(path, number, _draft_of(record, path=path, number=number, sender=sender, to=recipient)))
    return drafts


def _draft_of(record: Any, *, path: Path, number: int, sender: str, to: str | None) -> Draft:
    where = f"{path} line {number}"
    if not isinstance(record, dict):
        raise InvalidInput(f"{where}: expected an object with to, body and optionally key")
    unknown = set(record) - {"to", "body", "key"}
    if unknown:
        raise InvalidInput(f"{where}: unknown fields {', '.join(sorted(unknown))} (allowed: to, body, key)")
    recipient, body, key = record.get("to", to), record.get("body"), record.get("key")
    if not isinstance(recipient, str):
        raise InvalidInput(f"{where}: 'to' must be an address (or give --to for lines without one)")
    if not isinstance(body, str):
        raise InvalidInput(f"{where}: 'body' must be a string")
    if key is not None and not isinstance(key, str):
        raise InvalidInput(f"{where}: 'key' must be a string")
    return Draft(sender, recipient, body, key)


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """What a bulk send did, message by message, and the verdict."""

    reports: tuple[SendReport, ...]

    @property
    def stored(self) -> int:
        """Messages stored on at least the write quorum."""
        return sum(1 for r in self.reports if r.ok)

    @property
    def queued(self) -> tuple[SendReport, ...]:
        """Messages short of the quorum with deliveries owed in the outbox (delivered later)."""
        return tuple(r for r in self.reports if not r.ok and is_queued(r))

    @property
    def refused(self) -> tuple[SendReport, ...]:
        """Messages short of the quorum with nothing owed: refused, rejected or in conflict."""
        return tuple(r for r in self.reports if not r.ok and not is_queued(r))


def is_queued(report: SendReport) -> bool:
    """True when some replica is still owed this message (the outbox retries it)."""
    return any(r.state in _OWED_STATES for r in report.replicas)


def send_in_chunks(
    send_many: Callable[[list[Draft]], list[SendReport]],
    drafts: list[Draft],
    *,
    on_chunk: Callable[[int], None],
) -> BulkOutcome:
    """Send `drafts` with `send_many` a chunk at a time; call `on_chunk(n)` after each."""
    reports: list[SendReport] = []
    for chunk in _chunks(drafts, CHUNK_MESSAGES):
        reports.extend(send_many(chunk))
        on_chunk(len(chunk))
    assert len(reports) == len(drafts)
    return BulkOutcome(tuple(reports))


def _chunks(items: list[Draft], size: int) -> Iterable[list[Draft]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
