"""Token buckets for abuse limits: messages per connection, connections per client address."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


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
    """Connections per address per minute, with a burst on top; forgets idle addresses so memory
    stays bounded."""

    def __init__(self, per_minute: int, max_addresses: int = 100_000, burst: int = 0) -> None:
        self.per_minute = per_minute
        self.burst = max(burst, per_minute)
        self._buckets: dict[str, TokenBucket] = {}
        self._max = max_addresses

    def allow(self, address: str | None) -> bool:
        if self.per_minute <= 0 or address is None:
            return True
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._prune()
            bucket = self._buckets[address] = TokenBucket(self.per_minute / 60.0, float(self.burst))
        return bucket.take()

    def _prune(self) -> None:
        now = time.monotonic()
        for address in [a for a, b in self._buckets.items() if now - b.stamp > 60]:
            del self._buckets[address]
        if len(self._buckets) >= self._max:
            self._buckets.clear()


class TrustedProxies:
    """Which client address a request comes from, believing forwarding headers only from the
    proxies we were told to trust: the right-most address that is not one of them."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._known: dict[str, bool] = {}  # asked per socket, of few distinct addresses

    def trusts(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(ip in net for net in self._networks)
            if len(self._known) >= 10_000:
                self._known.clear()
            self._known[address] = known
        return known

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        if peer is None or not self._networks:
            return peer
        chain = _forwarded_for(headers)
        if not chain or not self.trusts(peer):
            return peer
        for address in reversed(chain):
            if not self.trusts(address):
                return address
        return chain[0] if chain else peer


def _forwarded_for(headers: Mapping[str, str]) -> list[str]:
    """The hop addresses, client first: X-Forwarded-For, else RFC 7239 Forwarded `for=`."""
    xff = headers.get("x-forwarded-for")
    if xff:
        return [a.strip() for a in xff.split(",") if a.strip()]
    forwarded = headers.get("forwarded")
    out: list[str] = []
    for element in (forwarded or "").split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for" and value:
                value = value.strip('"')
                if value.startswith("["):  # [v6]:port
                    value = value[1:value.find("]")] if "]" in value else value[1:]
                elif value.count(":") == 1:  # v4:port
                    value = value.split(":")[0]
                out.append(value)
    return out


def peer_address(transport: Any) -> str | None:
    """The IP a socket comes from (None for a Unix socket): what limits count before any header."""
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer else None


class AddressSockets:
    """Sockets held open per client address, so one address cannot take every descriptor: an idle
    TCP socket costs nothing to open and, before this, 20,000 of them starved health checks and
    other clients. Counted per socket (HTTP keep-alive and WebSocket alike, from accept to close);
    trusted proxies are exempt, since every user behind one shares its address."""

    def __init__(self, limit: int, proxies: TrustedProxies) -> None:
        self.limit = limit  # 0 disables
        self._proxies = proxies
        self._held: dict[str, int] = {}
        self._of: dict[object, str] = {}  # transport → the address it is counted under

    def acquire(self, transport: object, address: str | None) -> bool:
        """Count this socket; False (and not counted) when its address holds `limit` already."""
        if self.limit <= 0 or address is None or self._proxies.trusts(address):
            return True
        held = self._held.get(address, 0)
        if held >= self.limit:
            return False
        self._held[address] = held + 1
        self._of[transport] = address
        return True

    def release(self, transport: object) -> None:
        """Idempotent: the HTTP and the WebSocket protocol of an upgraded socket may both call it."""
        address = self._of.pop(transport, None)
        if address is None:
            return
        held = self._held[address] - 1
        if held:
            self._held[address] = held
        else:
            del self._held[address]
