"""The Starlette application: wiring of store, write-ahead, hub and routes, and their lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from . import api, db, ydoc
from .auth import AccessResolver, TokenVerifier, load_secret
from .bus import KIND_UPDATE, Bus
from .config import Settings
from .connection import Connection
from .hub import Hub
from .metrics import METRICS
from .migrate import migrate
from .offloop import OffLoop
from .presence import Presence
from .ratelimit import AddressLimiter
from .revocation import RevocationWatcher
from .room import Room
from .store import DocumentStore
from .transport import websocket_endpoint
from .wal import WriteAhead

log = logging.getLogger("collab.app")


@dataclass
class AppContext:
    """Everything a request handler may reach, built once per process."""

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
    revocation: RevocationWatcher | None = None
    bus: Bus | None = None

    def on_connect(self, room: Room, conn: Connection) -> None:
        self.presence.connected(room, conn)

    def on_disconnect(self, room: Room, conn: Connection) -> None:
        self.presence.disconnected(room, conn)


async def build_context(settings: Settings, database_url: str, redis_url: str) -> AppContext:
    conn = await db.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await db.create_pool(database_url)
    redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    offloop = OffLoop(settings.conversion_processes)
    store = DocumentStore(pool, settings.version_interval_seconds, offloop, settings.rich_text_field)
    if settings.auth == "off":
        await store.ensure_local_workspace()
    process_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    presence = Presence(redis, settings, process_id)
    wal = WriteAhead(pool, settings.commit_window_ms / 1000, settings.write_backlog_bytes)
    hub = Hub(settings, store, wal, on_awareness=presence.awareness)
    wal.on_committed = hub.on_committed
    tokens = TokenVerifier(
        load_secret(settings), settings.jwt_issuer, settings.jwt_audience,
        jwks_url=settings.jwks_url, jwks_cooldown=settings.jwks_cooldown_seconds,
    )
    access = AccessResolver(pool)
    ctx = AppContext(
        settings, pool, redis, store, wal, hub, tokens, access, presence, process_id,
        AddressLimiter(settings.rate_connections_per_minute), offloop,
    )
    if settings.auth == "on":
        ctx.revocation = RevocationWatcher(database_url, hub, access)
    if settings.bus == "on":
        bus = ctx.bus = hub.bus = Bus(
            redis_url, process_id, hub.rooms, hub.repair, replay_ms=settings.bus_replay_ms,
            on_peer_joined=hub.republish,
        )
        wal.publish = lambda document_id, update: bus.publish(document_id, KIND_UPDATE, update)
    return ctx


async def start_context(ctx: AppContext) -> None:
    await ctx.offloop.start(ydoc.ready)
    ctx.wal.start()
    ctx.hub.start()
    ctx.presence.start()
    if ctx.bus is not None:
        ctx.bus.start()
    if ctx.revocation is not None:
        ctx.revocation.start()
    # Rows left by a crash are compacted at start so yjs_state catches up without a client.
    for document_id in await ctx.store.pending_documents():
        try:
            await ctx.store.compact(document_id)
        except Exception:
            log.exception("recovery compaction of %s failed; retried when the document is next opened", document_id)


async def stop_context(ctx: AppContext) -> None:
    if ctx.revocation is not None:
        await ctx.revocation.stop()
    await ctx.hub.shutdown()
    await ctx.wal.stop(ctx.settings.shutdown_timeout)
    await ctx.presence.stop()
    if ctx.bus is not None:
        await ctx.bus.stop()
    ctx.offloop.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ctx.pool.close(), 5)
    with contextlib.suppress(Exception):
        await ctx.redis.aclose()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), 2)
        checks["postgres"] = "ok" if ctx.wal.healthy else f"write-ahead retrying: {ctx.wal.last_error}"
    except Exception as exc:
        checks["postgres"] = f"down: {exc.__class__.__name__}"
    try:
        await asyncio.wait_for(ctx.redis.ping(), 2)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"down: {exc.__class__.__name__}"
    down = [name for name, state in checks.items() if state != "ok"]
    body = {"status": "ready" if not down else "unavailable", "checks": checks, **ctx.hub.stats()}
    if down:
        body["down"] = down
    return JSONResponse(body, status_code=200 if not down else 503)


async def metrics(request: Request) -> Response:
    return PlainTextResponse(METRICS.render(), media_type="text/plain; version=0.0.4")


def create_app(settings: Settings, database_url: str, redis_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx = await build_context(settings, database_url, redis_url)
        app.state.ctx = ctx
        await start_context(ctx)
        try:
            yield
        finally:
            await stop_context(ctx)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        WebSocketRoute("/ws/{document_id:path}", websocket_endpoint),
        *api.routes,
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=api.exception_handlers)
