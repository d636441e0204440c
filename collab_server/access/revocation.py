"""Revocation for open connections: LISTEN for access changes, re-check who is affected.

Access is decided when a socket opens; a member removed or downgraded later must lose it
within seconds, on every process. PostgreSQL NOTIFY (sql/003_access_notify.sql) reaches
all processes that LISTEN, with no extra infrastructure. If the listening connection is
lost, notifications may have been missed, so after reconnecting every connection is
re-checked once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from uuid import UUID

import asyncpg
import orjson

from collab_server.core.connection import Connection
from collab_server.core.extension import Extension
from collab_server.core.hub import Hub
from collab_server.core.protocol import CloseCode
from collab_server.storage import db

from .auth import AccessResolver

log = logging.getLogger("collab.revocation")
CHANNEL = "collab_access"

Selector = Callable[[UUID, Connection], bool]  # (room's document id, connection) -> affected?


class RevocationWatcher(Extension):
    """A hub extension: it only needs the hub to find the open connections."""

    def __init__(self, database_url: str, access: AccessResolver) -> None:
        self._url = database_url
        self._hub: Hub | None = None
        self._access = access
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()

    async def on_start(self, hub: Hub) -> None:
        self._hub = hub
        self._task = asyncio.create_task(self._supervise(), name="revocation-listener")

    async def on_stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        delay = 0.2
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await db.connect(self._url, timeout=5)
                await conn.add_listener(CHANNEL, self._on_notify)
                self.listening.set()
                delay = 0.2
                if not first:  # notifications may have been missed while we were away
                    self._access.invalidate()
                    self._schedule(lambda _doc, _conn: True)
                first = False
                while not conn.is_closed():
                    await asyncio.sleep(1)
                    await conn.execute("SELECT 1")  # detects a dead server promptly
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                raise
            except Exception as exc:
                log.debug("revocation listener lost: %s", exc)
            self.listening.clear()
            if conn is not None:
                conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._access.invalidate()  # before anything else: no new socket may open on a stale answer
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        document = event.get("document_id")
        workspace = event.get("workspace_id")
        user = event.get("user_id")
        hub = self._hub

        def affected(document_id: UUID, conn: Connection) -> bool:
            room = hub.get(document_id) if hub is not None else None
            if document is not None:
                return str(document_id) == str(document)
            if room is None or str(room.workspace_id) != workspace:
                return False
            return user is None or str(conn.info.user_id) == str(user)

        self._schedule(affected)

    def _schedule(self, selector: Selector) -> None:
        task = asyncio.create_task(self.recheck(selector))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def recheck(self, selector: Selector) -> None:
        for room in self._hub.rooms() if self._hub is not None else []:
            document_id = room.id
            for conn in list(room.connections):
                if conn.info.user_id is None or not selector(document_id, conn):
                    continue
                try:
                    access = await self._access.document_access(conn.info.user_id, document_id, fresh=True)
                except Exception as exc:
                    log.warning("re-checking access failed: %s", exc)
                    continue
                if not access.allowed:
                    conn.close(CloseCode.FORBIDDEN, "access revoked or document deleted")
                elif access.role != conn.info.role:
                    log.info("role of %s on %s changed to %s", conn.info.user_id, document_id, access.role)
                    conn.info.role = access.role or "viewer"
                    conn.denied_sent = False
