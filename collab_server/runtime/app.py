"""The Starlette application: assembly of storage, hub, extensions and routes, and their lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from collab_server import api
from collab_server.access.auth import AccessResolver, TokenVerifier, load_secret
from collab_server.access.limits import AddressLimiter, TrustedProxies
from collab_server.access.revocation import RevocationWatcher
from collab_server.cluster.bus import Bus
from collab_server.cluster.presence import Presence
from collab_server.cluster.stopping import bounded
from collab_server.config import Settings
from collab_server.context import AppContext
from collab_server.core.compaction import CompactionConfig
from collab_server.core.counters import Counters
from collab_server.core.extension import Extension, StatelessHook
from collab_server.core.hub import Hub, HubConfig
from collab_server.storage import db, ydoc
from collab_server.storage.migrate import migrate
from collab_server.storage.offloop import OffLoop
from collab_server.storage.postgres import DocumentStore, PostgresStorage
from collab_server.storage.spill import Spill
from collab_server.storage.wal import WriteAhead, replay_spills
from collab_server.transport.websocket import STATE_KEY, Sockets

from . import web
from .metrics import Metrics

log = logging.getLogger("collab.app")


def hub_config(settings: Settings) -> HubConfig:
    return HubConfig(
        max_connections=settings.max_connections,
        max_rooms=settings.max_rooms,
        room_grace_seconds=settings.room_grace_seconds,
        shutdown_timeout=settings.shutdown_timeout,
        max_awareness_clients=settings.max_awareness_clients,
        max_document_bytes=settings.max_document_bytes,
        max_pending_bytes=settings.max_pending_bytes,
        compaction=CompactionConfig(
            max_updates=settings.compact_max_updates,
            max_bytes=settings.compact_max_bytes,
            max_age_seconds=settings.compact_max_age_seconds,
            version_interval_seconds=settings.version_interval_seconds,
        ),
    )


def load_callable(spec: str) -> Any:
    """`package.module:function` (COLLAB_STATELESS_HOOK) to the function it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r} is not `package.module:function`")
    target = getattr(importlib.import_module(module_name), attribute)
    if not callable(target):
        raise ValueError(f"{spec!r} is not callable")
    return target


async def build_context(settings: Settings, database_url: str, redis_url: str) -> tuple[AppContext, Metrics]:
    conn = await db.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await db.create_pool(database_url, settings.db_pool_min, settings.db_pool_max, warm=DocumentStore.warm)
    redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    counters = Counters()  # one per process, shared by everything that counts
    offloop = OffLoop(settings.conversion_processes)
    store = DocumentStore(pool, settings.version_interval_seconds, offloop, settings.rich_text_field, counters)
    if settings.auth == "off":
        await store.ensure_local_workspace()
    process_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    spill_dir = Path(settings.data_dir) / "spill"
    if replayed := await replay_spills(pool, spill_dir):
        log.warning("replayed %d updates a process held on disk while PostgreSQL was down", replayed)
    wal = WriteAhead(pool, settings.commit_window_ms / 1000, settings.write_backlog_bytes, counters,
                     feed_interval=settings.feed_interval_seconds, spill=Spill(spill_dir, process_id))
    access = AccessResolver(pool)
    metrics = Metrics(counters)
    presence = Presence(redis, settings, process_id)
    extensions: list[Extension] = [metrics, presence]
    if settings.stateless_hook:
        extensions.append(StatelessHook(load_callable(settings.stateless_hook)))
    revocation = bus = None
    if settings.auth == "on":
        revocation = RevocationWatcher(database_url, access)
        extensions.append(revocation)
    if settings.bus == "on":
        bus = Bus(redis_url, process_id, replay_ms=settings.bus_replay_ms, counters=counters)
        extensions.append(bus)
    hub = Hub(PostgresStorage(store, wal), hub_config(settings), extensions, counters)
    tokens = TokenVerifier(
        load_secret(settings), settings.jwt_issuer, settings.jwt_audience,
        jwks_url=settings.jwks_url, jwks_cooldown=settings.jwks_cooldown_seconds,
    )
    ctx = AppContext(
        settings, pool, redis, store, wal, hub, tokens, access, presence, process_id,
        AddressLimiter(settings.rate_connections_per_minute, burst=settings.rate_connections_burst), offloop,
        counters, TrustedProxies(settings.trusted_proxies), revocation, bus, metrics.lag.summary,
    )
    return ctx, metrics


async def start_context(ctx: AppContext) -> None:
    await ctx.offloop.start(ydoc.ready)
    await ctx.hub.start()


async def stop_context(ctx: AppContext) -> None:
    await ctx.hub.shutdown()
    ctx.offloop.close()
    await bounded(ctx.pool.close(), 5)
    await bounded(ctx.redis.aclose())


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
    return PlainTextResponse(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(settings: Settings, database_url: str, redis_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        ctx, app.state.metrics = await build_context(settings, database_url, redis_url)
        app.state.ctx = ctx
        sockets = Sockets(ctx)
        await start_context(ctx)
        sockets.start()
        try:
            # The lifespan state is what uvicorn hands the WebSocket protocol (`app_state`).
            yield {STATE_KEY: sockets}
        finally:
            sockets.stop()
            await stop_context(ctx)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *api.routes,
        *web.routes,
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=api.exception_handlers)
