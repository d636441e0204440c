"""What request handlers (HTTP routes and the WebSocket route) may reach, built once per process.

It sits between the handlers (api, transport) and the parts they use, so neither layer
imports the runtime that assembles it (`runtime.app.build_context`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from collab_server.access.auth import AccessResolver, TokenVerifier
from collab_server.access.limits import AddressLimiter, TrustedProxies
from collab_server.access.revocation import RevocationWatcher
from collab_server.cluster.bus import Bus
from collab_server.cluster.presence import Presence
from collab_server.config import Settings
from collab_server.core.counters import Counters
from collab_server.core.hub import Hub
from collab_server.storage.offloop import OffLoop
from collab_server.storage.postgres import DocumentStore
from collab_server.storage.wal import WriteAhead


@dataclass
class AppContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    store: DocumentStore
    wal: WriteAhead
    hub: Hub
    tokens: TokenVerifier
    access: AccessResolver
    presence: Presence
    process_id: str
    address_limiter: AddressLimiter
    offloop: OffLoop
    counters: Counters
    proxies: TrustedProxies
    revocation: RevocationWatcher | None = None
    bus: Bus | None = None
    loop_lag: Callable[[], dict[str, float]] | None = None  # the runtime's probe, read by /api/stats
