"""Limits a replica enforces: request size and per-identity send rate.

Both refuse before anything is stored. The rate limiter keeps bounded in-memory
state owned by the servicer; the clock is injected. (Per-mailbox quotas are the
store's: it checks them in its writer against exact per-mailbox totals.)
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from grpc_messenger.config import GRPC_MESSAGE_BYTES_MAX, ServerConfig
from grpc_messenger.model import MAX_ADDRESS_CHARS, MAX_KEY_CHARS

# Everything of one SendRequest but its body: two addresses, a key, two varints, tags.
_ENVELOPE_BYTES = 2 * MAX_ADDRESS_CHARS + MAX_KEY_CHARS + 64
# Smallest receive limit: an Ack of ack_keys_max keys must always fit.
_REQUEST_BYTES_MIN = 1024 * 1024


def request_bytes_max(config: ServerConfig) -> int:
    """gRPC's max receive size for this replica: one full batch of maximal messages, no more.

    gRPC refuses larger frames (RESOURCE_EXHAUSTED) before parsing them.
    """
    batch = config.batch_messages_max * (config.body_bytes_max + _ENVELOPE_BYTES)
    acks = config.ack_keys_max * (MAX_KEY_CHARS + 4)
    return min(GRPC_MESSAGE_BYTES_MAX, max(_REQUEST_BYTES_MIN, batch, acks))


@dataclass(slots=True)
class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; a message costs one token."""

    rate_per_s: float
    burst: float
    tokens: float
    updated_s: float

    def take(self, cost: int, now_s: float) -> float:
        """Take `cost` tokens and return 0, or take none and return seconds to wait.

        A request costing more than the burst (a big batch) goes through when the
        bucket is full and leaves it in debt, so the long-run rate still holds.
        """
        self.tokens = min(self.burst, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s
        needed = min(cost, self.burst)
        if self.tokens >= needed - 1e-9:  # float dust must not cost a whole retry
            self.tokens -= cost
            return 0.0
        return (needed - self.tokens) / self.rate_per_s


class RateLimiter:
    """One token bucket per identity, the least recently used forgotten beyond `identities_max`.

    A forgotten identity comes back with a full bucket; identities are signed, so
    nobody can mint many of them to reset their own.
    """

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        identities_max: int = 100_000,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        assert rate_per_s > 0
        assert burst >= 1
        assert identities_max >= 1
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._identities_max = identities_max
        self._clock_s = clock_s
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, identity: str, cost: int) -> int:
        """0 if `identity` may send `cost` messages now (and they are counted); else milliseconds to wait."""
        cost = max(1, cost)
        now_s = self._clock_s()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = TokenBucket(self.rate_per_s, self.burst, float(self.burst), now_s)
            self._buckets[identity] = bucket
            if len(self._buckets) > self._identities_max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
        wait_s = bucket.take(cost, now_s)
        return 0 if wait_s == 0 else max(1, math.ceil(wait_s * 1000))
