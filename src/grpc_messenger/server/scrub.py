"""The scrubber: every stored row checked against its checksum, at start and then in the background.

A row whose checksum fails is never served, but while its key stays, repair
thinks this replica holds the message and never replaces it: one copy fewer
for good. The scrubber has the store move such rows aside, so the next repair
round pulls the good copy from a peer. It walks the store in small chunks at
a bounded rate (rows per second), so it never competes with client traffic,
and starts a new pass a while after each one ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from grpc_messenger.errors import StoreError
from grpc_messenger.store.base import Store

log = logging.getLogger(__name__)

CHUNK_ROWS = 500
CHUNKS_PER_PASS_MAX = 1_000_000  # bound: a pass over a billion rows ends anyway


@dataclass(frozen=True, slots=True)
class PassStats:
    """One full pass."""

    checked: int
    moved_aside: int


async def scrub_pass(store: Store, *, rows_per_s: float, chunk_rows: int = CHUNK_ROWS) -> PassStats:
    """Check every row once, `chunk_rows` at a time, pausing to keep under `rows_per_s`."""
    assert rows_per_s > 0
    after_seq = 0
    checked = moved = 0
    for _ in range(CHUNKS_PER_PASS_MAX):
        page = await store.scrub(after_seq=after_seq, limit=chunk_rows)
        checked += page.checked
        moved += page.moved_aside
        after_seq = page.next_after_seq
        if page.done:
            break
        await asyncio.sleep(page.checked / rows_per_s)
    if moved:
        log.warning("event=scrub.moved_aside n=%d checked=%d", moved, checked)
    return PassStats(checked=checked, moved_aside=moved)


class Scrubber:
    """Owns the scrub task of one replica; `start` and `stop` bracket its life."""

    def __init__(self, store: Store, *, rows_per_s: float, pass_interval_s: float) -> None:
        self._store = store
        self._rows_per_s = rows_per_s
        self._pass_interval_s = pass_interval_s
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    def start(self) -> None:
        """Begin the first pass now (the check at open), then one every pass_interval_s."""
        assert self._task is None
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scrub")

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await scrub_pass(self._store, rows_per_s=self._rows_per_s)
            except StoreError as exc:  # the store is closing or failing: try again next pass
                log.error("event=scrub.failed error=%r", str(exc))
            self.passes += 1
            await asyncio.sleep(self._pass_interval_s)
