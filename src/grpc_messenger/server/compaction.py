"""`admin compact`'s purge: the replica's own rule, run on a stopped store.

A tombstone goes only when the grace has passed and every peer confirms it
holds no queued copy (server/tombstones.py), exactly as a running replica
purges; without peers, every tombstone past the grace goes, as on a replica
that has none.
"""

from __future__ import annotations

import time
from pathlib import Path

from grpc_messenger.config import ServerConfig
from grpc_messenger.security.peer import peer_channel_factory
from grpc_messenger.server.repair import Repairer
from grpc_messenger.server.tombstones import PurgeStats, purge_confirmed
from grpc_messenger.store.sqlite import SqliteStore

PURGE_CHUNK = 10_000
PURGE_CHUNKS_MAX = 10_000  # bounds one compaction at 100 million tombstones
PEER_TIMEOUT_S = 10.0


async def purge_expired(
    path: Path,
    *,
    tombstone_grace_s: float,
    peers: tuple[str, ...] = (),
    peer_token: str = "",
    peer_tls_ca: Path | None = None,
    now_ms: int | None = None,
) -> PurgeStats:
    """Purge the tombstones of the store at `path` that the grace and the peers allow."""
    cutoff_ms = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(tombstone_grace_s * 1000)
    store = SqliteStore(path)
    repairer = None
    try:
        if peers:
            repairer = Repairer(
                store,
                peers,
                interval_s=3600.0,  # never started: only its confirmation question is asked
                rate_per_s=ServerConfig().repair_rate_per_s,
                timeout_s=PEER_TIMEOUT_S,
                body_bytes_max=ServerConfig().body_bytes_max,
                tombstone_grace_s=tombstone_grace_s,
                channel_factory=peer_channel_factory(token=peer_token, tls_ca=peer_tls_ca),
            )
        return await purge_confirmed(
            store,
            deleted_before_ms=cutoff_ms,
            held_elsewhere=repairer.held_queued_by_a_peer if repairer is not None else None,
            chunk=PURGE_CHUNK,
            chunks_max=PURGE_CHUNKS_MAX,
        )
    finally:
        if repairer is not None:
            await repairer.stop()
        await store.close()
