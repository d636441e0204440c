"""PostgreSQL connection pool, with failures turned into one clear line."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import asyncpg
import orjson

from collab_server.config import mask_url

# The errors that mean "PostgreSQL is not there right now" rather than "this query is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


class DatabaseUnavailable(RuntimeError):
    pass


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


async def connect(url: str, timeout: float = 10.0) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except (*UNAVAILABLE_ERRORS, socket.gaierror, asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {mask_url(url)}: {_why(exc)}") from None
    await _init_connection(conn)
    return conn


async def create_pool(
    url: str, min_size: int = 2, max_size: int = 10,
    warm: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """`warm` runs on every new pooled connection, so that what a connection does once (asyncpg's
    type introspection, a statement's preparation) happens when the pool grows, not in a client's
    first request on it. The server opens `COLLAB_DB_POOL_MIN` (8) at start: eight cold rooms at
    once otherwise wait on six connections opened and warmed in a row (measured: p95 131 ms)."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if warm is not None:
            await warm(conn)

    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=init, timeout=10,
            command_timeout=60, reset=_keep_session,
        )
    except (*UNAVAILABLE_ERRORS, socket.gaierror, asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {mask_url(url)}: {_why(exc)}") from None
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, in place of asyncpg's default (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL), which is a round trip per release: two per room opened. Nothing here leaves session
    state on a pooled connection: every `set_config` is transaction-local, LISTEN and the migration
    lock use connections of their own, and asyncpg still rolls back an open transaction first."""


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text
