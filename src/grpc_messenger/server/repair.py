"""Anti-entropy: each replica pulls from its peers what it lacks.

One round with one peer: page through the peer's mailbox digests and compare
each with ours (one integer per mailbox, so two replicas that agree exchange
O(mailboxes) bytes); for a mailbox that differs, list the peer's keys, apply
the peer's tombstones we lack (tombstones win), and pull the queued messages
we do not hold at all. A key we lack is never taken as a deletion, so a
replica that lost its disk can only gain from repair, never spread its gaps.

Repair runs as one background task per replica, off the request path, with a
bound on every page, round and pull, and a token bucket on messages pulled.

A replica whose store started empty (new, wiped, or a damaged file set aside)
is rebuilding until it has finished one complete round with each peer: until
then a message may be held by fewer replicas than it was acknowledged by, and
losing another replica's disk could lose it. The store keeps the flag, so a
restart mid-rebuild does not forget it; Info, `messenger status` and the
metrics show it, and the chaos harness waits for it before the next data loss.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from grpc_messenger import wire
from grpc_messenger.errors import InvalidInput
from grpc_messenger.model import PutOutcome, normalize_address
from grpc_messenger.proto import messenger_pb2 as pb
from grpc_messenger.proto import messenger_pb2_grpc as pb_grpc
from grpc_messenger.server.limits import TokenBucket
from grpc_messenger.server.metrics import ReplicaMetrics
from grpc_messenger.store.base import Store

log = logging.getLogger(__name__)

DIGEST_PAGE = 1000
DIGEST_PAGES_MAX = 10_000
KEY_PAGE = 5000
KEY_PAGES_MAX = 1000
PULL_CHUNK = 500
MAILBOXES_PER_ROUND_MAX = 1000
PULL_WAITS_MAX = 100

ChannelFactory = Callable[[str], grpc.aio.Channel]


@dataclass(slots=True)
class RoundStats:
    """What one round with one peer did."""

    peer: str
    compared: int = 0
    differing: int = 0
    pulled: int = 0
    tombstoned: int = 0
    rejected: int = 0
    complete: bool = False  # every differing mailbox was compared and repaired (no bound cut the round short)


class Repairer:
    """Owns the repair task of one replica; `start` and `stop` bracket its life."""

    def __init__(
        self,
        store: Store,
        peers: tuple[str, ...],
        *,
        interval_s: float,
        rate_per_s: float,
        timeout_s: float,
        body_bytes_max: int,
        tombstone_grace_s: float,
        channel_factory: ChannelFactory | None = None,
        metrics: ReplicaMetrics | None = None,
        on_stored: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        """`on_stored` hears of each mailbox that repair put new messages in (to wake its readers)."""
        assert interval_s > 0
        self._metrics = metrics
        self._on_stored = on_stored
        self._store = store
        self._peers = peers
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._body_bytes_max = body_bytes_max
        self._tombstone_grace_ms = int(tombstone_grace_s * 1000)
        assert rate_per_s > 0
        # the same bucket that limits senders: a second of pulls as burst
        self._bucket = TokenBucket(
            rate_per_s=rate_per_s, burst=rate_per_s, tokens=rate_per_s, updated_s=time.monotonic()
        )
        factory = channel_factory or (lambda address: grpc.aio.insecure_channel(address))
        self._channels = {peer: factory(peer) for peer in peers}
        self._stubs = {peer: pb_grpc.ReplicaServiceStub(ch) for peer, ch in self._channels.items()}
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()
        # peer -> monotonic time its rounds began failing: logs say when a peer is lost and back, not every round
        self._down_since_s: dict[str, float] = {}
        # peers not yet fully repaired from since the store started empty
        self._rebuild_from: set[str] = set(peers) if store.rebuilding else set()
        self._rebuild_started_s = time.monotonic()

    def start(self) -> None:
        """Begin periodic rounds in the background."""
        assert self._task is None
        self._task = asyncio.get_running_loop().create_task(self._run(), name="repair")

    async def stop(self) -> None:
        """Cancel the task, wait for it, close the peer channels."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))

    async def _run(self) -> None:
        while True:
            # jitter keeps replicas from repairing each other in lock-step
            await asyncio.sleep(self._interval_s * self._random.uniform(0.5, 1.5))
            for peer in self._random.sample(self._peers, len(self._peers)):
                await self.round_with(peer)

    async def round_with(self, peer: str) -> RoundStats:
        """One bounded repair round with `peer`; errors end the round, never the task."""
        stats = RoundStats(peer=peer)
        started = time.monotonic()
        try:
            for mailbox in await self._differing_mailboxes(peer, stats):
                await self._repair_mailbox(peer, mailbox, stats)
        except grpc.RpcError as exc:
            stats.complete = False  # a round cut short rebuilds nothing
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "UNKNOWN"
            if peer not in self._down_since_s:
                self._down_since_s[peer] = started
                log.warning("event=repair.peer_lost peer=%s code=%s", peer, code)
            else:
                log.debug("event=repair.peer_failed peer=%s code=%s", peer, code)
            result = "failed"
        else:
            result = "ok"
            down_since_s = self._down_since_s.pop(peer, None)
            if down_since_s is not None:
                log.info("event=repair.peer_back peer=%s down_s=%.1f", peer, started - down_since_s)
            if stats.complete and peer in self._rebuild_from:
                await self._rebuilt_from(peer)
        if self._metrics is not None:
            self._metrics.repair_rounds.labels(result).inc()
            self._metrics.repair.labels("pulled").inc(stats.pulled)
            self._metrics.repair.labels("tombstoned").inc(stats.tombstoned)
            self._metrics.repair.labels("rejected").inc(stats.rejected)
            self._metrics.observe_repair_round(peer, ok=result == "ok", mailboxes_differing=stats.differing)
        if stats.pulled or stats.tombstoned or stats.rejected:
            log.info(
                "event=repair.repaired peer=%s compared=%d differing=%d pulled=%d tombstoned=%d rejected=%d ms=%d",
                peer, stats.compared, stats.differing, stats.pulled, stats.tombstoned, stats.rejected,
                (time.monotonic() - started) * 1000,
            )  # fmt: skip
        return stats

    async def _rebuilt_from(self, peer: str) -> None:
        self._rebuild_from.discard(peer)
        if self._rebuild_from:
            log.info("event=repair.rebuilding peer_done=%s peers_left=%d", peer, len(self._rebuild_from))
            return
        await self._store.mark_rebuilt()
        log.info("event=repair.rebuilt s=%.1f", time.monotonic() - self._rebuild_started_s)

    async def _differing_mailboxes(self, peer: str, stats: RoundStats) -> list[str]:
        stub = self._stubs[peer]
        differing: list[str] = []
        after = ""
        complete = False  # every mailbox of the peer compared
        for _ in range(DIGEST_PAGES_MAX):
            page = await stub.Digests(
                pb.DigestsRequest(after_mailbox=after, limit=DIGEST_PAGE), timeout=self._timeout_s
            )
            if not page.mailboxes:
                complete = True
                break
            last = page.mailboxes[-1].mailbox
            ours = {
                d.mailbox: d.digest
                for d in await self._store.digests(after_mailbox=after, until_mailbox=last, limit=DIGEST_PAGE * 2)
            }
            for remote in page.mailboxes:
                stats.compared += 1
                if ours.get(remote.mailbox, 0) != remote.digest:  # no row here: nothing held, digest 0
                    differing.append(remote.mailbox)
            after = last
            if not page.more:
                complete = True
                break
            if len(differing) >= MAILBOXES_PER_ROUND_MAX:
                break
        stats.differing = len(differing)
        stats.complete = complete and len(differing) <= MAILBOXES_PER_ROUND_MAX
        return differing[:MAILBOXES_PER_ROUND_MAX]

    async def _repair_mailbox(self, peer: str, mailbox: str, stats: RoundStats) -> None:
        stub = self._stubs[peer]
        theirs: list[pb.KeyState] = []
        after = ""
        for _ in range(KEY_PAGES_MAX):
            page = await stub.MailboxKeys(
                pb.MailboxKeysRequest(mailbox=mailbox, after_key=after, limit=KEY_PAGE), timeout=self._timeout_s
            )
            theirs.extend(page.keys)
            if not page.more or not page.keys:
                break
            after = page.keys[-1].key
        # a peer of an earlier version may name a mailbox in capitals: ours is normalized
        local = normalize_address(mailbox)
        ours = await self._local_states(local)
        # Tombstones win: theirs delete our queued copy, however old (a replica back from
        # a long absence must not keep serving what was acked meanwhile). One past its
        # grace period for a key we do not hold at all is being purged: copying it would
        # only hand it around between purges, and no copy here can come back.
        purge_cutoff_ms = int(time.time() * 1000) - self._tombstone_grace_ms
        tombstones = [
            (k.key, k.deleted_unix_ms)
            for k in theirs
            if k.tombstone and ours.get(k.key) is not True and (k.key in ours or k.deleted_unix_ms >= purge_cutoff_ms)
        ]
        missing = [k.key for k in theirs if not k.tombstone and k.key not in ours]
        if tombstones:
            await self._store.apply_tombstones(local, tombstones)
            stats.tombstoned += len(tombstones)
        for start in range(0, len(missing), PULL_CHUNK):
            chunk = missing[start : start + PULL_CHUNK]
            for _ in range(PULL_WAITS_MAX):  # bounded: a chunk is never more than a burst
                wait_s = self._bucket.take(len(chunk), time.monotonic())
                if wait_s <= 0:
                    break
                await asyncio.sleep(wait_s)
            response = await stub.Pull(pb.PullRequest(mailbox=mailbox, keys=chunk), timeout=self._timeout_s)
            wanted = set(chunk)
            messages = []
            for item in response.messages:
                try:
                    message = wire.message_from_pb(item, body_bytes_max=self._body_bytes_max)
                except InvalidInput:
                    stats.rejected += 1
                    continue
                if normalize_address(message.recipient) != local or message.key not in wanted:
                    stats.rejected += 1
                    continue
                messages.append(message)
            if messages:
                outcomes = await self._store.put_many(messages)
                stats.pulled += len(messages)
                if self._on_stored is not None and PutOutcome.STORED in outcomes:
                    self._on_stored((local,))

    async def held_queued_by_a_peer(self, mailbox: str, keys: Sequence[str]) -> set[str]:
        """Which of `keys` some peer may still hold queued: held so, or the peer did not answer.

        A tombstone can go once this is empty for it: every peer holds the tombstone or
        nothing (a peer that purged it already, or never had the key), so no copy is
        left anywhere to come back.
        """
        wanted = set(keys)
        if not wanted:
            return set()
        last = max(wanted)
        held: set[str] = set()
        for peer, stub in self._stubs.items():
            after = ""
            try:
                for _ in range(KEY_PAGES_MAX):
                    page = await stub.MailboxKeys(
                        pb.MailboxKeysRequest(mailbox=mailbox, after_key=after, limit=KEY_PAGE),
                        timeout=self._timeout_s,
                    )
                    held.update(k.key for k in page.keys if not k.tombstone and k.key in wanted)
                    if not page.more or not page.keys or page.keys[-1].key >= last:
                        break
                    after = page.keys[-1].key
                else:
                    return wanted  # the walk hit its bound: nothing is confirmed
            except grpc.RpcError as exc:
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "UNKNOWN"
                log.info("event=tombstones.peer_unconfirmed peer=%s code=%s", peer, code)
                return wanted
        return held

    async def _local_states(self, mailbox: str) -> dict[str, bool]:
        states: dict[str, bool] = {}
        after = ""
        for _ in range(KEY_PAGES_MAX):
            page = await self._store.key_states(mailbox, after_key=after, limit=KEY_PAGE)
            states.update((k.key, k.tombstone) for k in page)
            if len(page) < KEY_PAGE:
                break
            after = page[-1].key
        return states
