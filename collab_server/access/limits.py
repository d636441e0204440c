"""Token buckets for abuse limits: messages per connection, connections per client address."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second; 0 disables the limit
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class AddressLimiter:
    """Connections per address per minute; forgets idle addresses so memory stays bounded."""

    def __init__(self, per_minute: int, max_addresses: int = 100_000) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, TokenBucket] = {}
        self._max = max_addresses

    def allow(self, address: str | None) -> bool:
        if self.per_minute <= 0 or address is None:
            return True
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._prune()
            bucket = self._buckets[address] = TokenBucket(self.per_minute / 60.0, float(self.per_minute))
        return bucket.take()

    def _prune(self) -> None:
        now = time.monotonic()
        for address in [a for a, b in self._buckets.items() if now - b.stamp > 60]:
            del self._buckets[address]
        if len(self._buckets) >= self._max:
            self._buckets.clear()
