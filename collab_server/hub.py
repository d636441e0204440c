"""The room registry: the one owner of every room's lifecycle (load, share, compact, unload).

A room is loaded once however many clients join at the same moment, unloaded after its
last connection leaves plus a grace period, and never dropped with edits that are not yet
written: unload flushes the write-ahead and compacts first. A failed load leaves no room
behind, so the next join tries again instead of finding a broken room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from uuid import UUID

from .bus import KIND_UPDATE, Bus
from .config import Settings
from .connection import Connection
from .metrics import METRICS
from .protocol import CloseCode
from .room import AwarenessListener, Room
from .store import DocumentStore
from .wal import WriteAhead

log = logging.getLogger("collab.hub")


class RoomUnavailable(Exception):
    """A room cannot be opened; carries the close code and reason for the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Hub:
    def __init__(
        self,
        settings: Settings,
        store: DocumentStore,
        wal: WriteAhead,
        on_awareness: AwarenessListener | None = None,
    ) -> None:
        self.bus: Bus | None = None  # set when cross-process relay is on
        self.settings = settings
        self.store = store
        self.wal = wal
        self.on_awareness = on_awareness
        self.rooms: dict[UUID, Room] = {}
        self._loading: dict[UUID, asyncio.Future[Room]] = {}
        self._unloading: dict[UUID, asyncio.Task[None]] = {}
        self._grace: dict[UUID, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()  # loads, compactions, repairs: awaited at shutdown
        self._sweeper: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self.connections = 0
        self.closing = False
        METRICS.gauge("collab_rooms", lambda: len(self.rooms))
        METRICS.gauge("collab_connections", lambda: self.connections)
        METRICS.gauge("collab_wal_backlog_bytes", lambda: self.wal.backlog_bytes)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run in the background, keeping a reference (the loop holds tasks weakly)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="compaction-sweeper")

    # -- joining and leaving -------------------------------------------------------------

    async def join(self, document_id: UUID, conn: Connection) -> Room:
        if self.closing:
            raise RoomUnavailable(CloseCode.GOING_AWAY, "server is shutting down")
        if self.connections >= self.settings.max_connections:
            raise RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "connection limit reached on this server")
        self.connections += 1
        try:
            room = await self.open_room(document_id)
        except BaseException:
            self.connections -= 1
            raise
        room.add(conn)
        return room

    async def open_room(self, document_id: UUID) -> Room:
        """The live room for a document, loading it once for every concurrent caller."""
        timer = self._grace.pop(document_id, None)
        if timer is not None:
            timer.cancel()
        room = self.rooms.get(document_id)
        if room is not None:
            return room
        pending = self._loading.get(document_id)
        if pending is None:
            if len(self.rooms) + len(self._loading) >= self.settings.max_rooms:
                raise RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "room limit reached on this server")
            pending = asyncio.get_running_loop().create_future()
            self._loading[document_id] = pending
            self._spawn(self._load(document_id, pending), f"load-{document_id}")
        return await asyncio.shield(pending)

    async def _load(self, document_id: UUID, result: asyncio.Future[Room]) -> None:
        try:
            unloading = self._unloading.get(document_id)
            if unloading is not None:
                await asyncio.shield(unloading)
            if self.bus is not None:
                self.bus.subscribe(document_id)  # before loading: see bus.py on the loading race
            loaded = await self.store.load(document_id)
            if loaded is None:
                raise RoomUnavailable(CloseCode.NOT_FOUND, "document not found")
            room = Room(document_id, loaded.workspace_id, loaded.type, self.wal, self.on_awareness, self.bus)
            room.load_state(loaded.state)
            if loaded.pending:
                room.pending_updates = loaded.pending
                room.pending_since = time.monotonic()
            self.rooms[document_id] = room
            METRICS.inc("collab_rooms_loaded_total")
            result.set_result(room)
        except RoomUnavailable as exc:
            result.set_exception(exc)
        except Exception as exc:
            log.warning("loading document %s failed: %s", document_id, exc)
            result.set_exception(RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "document could not be loaded"))
        finally:
            self._loading.pop(document_id, None)
            if self.bus is not None and document_id not in self.rooms:
                self.bus.unsubscribe(document_id)
            if not result.done():  # cancelled
                result.set_exception(RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "loading interrupted"))
            # A result nobody awaited must not warn "exception never retrieved".
            if result.exception() is not None:
                result.exception()

    @contextlib.asynccontextmanager
    async def use_room(self, document_id: UUID) -> AsyncIterator[Room]:
        """A room for work without a connection (HTTP API): unloaded later if nobody joined."""
        room = await self.open_room(document_id)
        try:
            yield room
        finally:
            if not room.connections and self.rooms.get(room.id) is room and room.id not in self._grace:
                self._schedule_unload(room)

    def leave(self, room: Room, conn: Connection) -> None:
        self.connections -= 1
        room.remove(conn)
        if not room.connections and self.rooms.get(room.id) is room:
            self._schedule_unload(room)

    def _schedule_unload(self, room: Room) -> None:
        if self.closing:
            return  # shutdown persists every room itself
        grace = self.settings.room_grace_seconds
        if grace <= 0:
            self._start_unload(room)
            return
        loop = asyncio.get_running_loop()
        self._grace[room.id] = loop.call_later(grace, self._start_unload, room)

    def _start_unload(self, room: Room) -> None:
        self._grace.pop(room.id, None)
        if room.connections or self.rooms.get(room.id) is not room:
            return
        del self.rooms[room.id]
        if self.bus is not None:
            self.bus.unsubscribe(room.id)
        task = asyncio.create_task(self._unload(room), name=f"unload-{room.id}")
        self._unloading[room.id] = task

    async def _unload(self, room: Room) -> None:
        try:
            await self._persist(room, snapshot=room.edits_since_version)
        finally:
            self._unloading.pop(room.id, None)
            METRICS.inc("collab_rooms_unloaded_total")

    async def _persist(self, room: Room, snapshot: bool) -> None:
        """Flush the write-ahead, then compact. On failure the rows stay and the sweeper retries."""
        if not await self.wal.flush(self.settings.shutdown_timeout):
            log.warning("room %s unloaded with updates still queued for PostgreSQL", room.id)
            return
        try:
            await self.store.compact(room.id, snapshot=snapshot)
        except Exception as exc:
            METRICS.inc("collab_compaction_failures_total")
            log.warning("compacting %s failed (will retry): %s", room.id, exc)

    def repair(self, room: Room) -> None:
        """Catch a room up from PostgreSQL after the bus may have lost entries; twice, the
        second time after other processes' write-ahead windows have surely committed."""

        async def run() -> None:
            for delay in (0.0, 2.0):
                await asyncio.sleep(delay)
                if self.rooms.get(room.id) is not room:
                    return
                try:
                    loaded = await self.store.load(room.id)
                except Exception as exc:
                    log.warning("repairing %s failed: %s", room.id, exc)
                    continue
                if loaded is not None:
                    room.apply_remote(loaded.state)

        self._spawn(run(), f"repair-{room.id}")

    def republish(self) -> None:
        """A process joined the bus while we were alone: once our write-ahead is committed
        (the bus only carries what is durable), publish every room's state to it."""

        async def run() -> None:
            await self.wal.flush(self.settings.shutdown_timeout)
            if self.bus is None:
                return
            for room in list(self.rooms.values()):
                self.bus.publish(room.id, KIND_UPDATE, room.doc.get_update())

        self._spawn(run(), "republish")

    # -- compaction policy ---------------------------------------------------------------

    def on_committed(self, summary: dict[UUID, tuple[int, int]]) -> None:
        """Called by the write-ahead after each group commit."""
        now = time.monotonic()
        s = self.settings
        for document_id, (count, size) in summary.items():
            room = self.rooms.get(document_id)
            if room is None:
                continue
            room.pending_updates += count
            room.pending_bytes += size
            if room.pending_since is None:
                room.pending_since = now
            if room.pending_updates >= s.compact_max_updates or room.pending_bytes >= s.compact_max_bytes:
                self.request_compaction(room)

    def request_compaction(self, room: Room) -> None:
        if room.compacting:
            room.compact_again = True
            return
        room.compacting = True
        self._spawn(self._compact(room), f"compact-{room.id}")

    async def _compact(self, room: Room) -> None:
        try:
            while True:
                room.compact_again = False
                taken, room.pending_updates, room.pending_bytes = room.pending_updates, 0, 0
                room.pending_since = None
                snapshot = room.edits_since_version and (
                    time.monotonic() - room.last_version_at >= self.settings.version_interval_seconds
                )
                try:
                    result = await self.store.compact(room.id, snapshot=snapshot)
                except Exception as exc:
                    METRICS.inc("collab_compaction_failures_total")
                    log.warning("compacting %s failed (will retry): %s", room.id, exc)
                    room.pending_updates += taken
                    room.pending_since = room.pending_since or time.monotonic()
                    return
                if result is not None and result.version_number is not None:
                    room.last_version_at = time.monotonic()
                    room.edits_since_version = False
                if not room.compact_again:
                    return
        finally:
            room.compacting = False

    async def _sweep(self) -> None:
        """Once a second: abort stuck sockets; compact rooms whose oldest pending update is old."""
        every = max(1, round(max(0.2, min(5.0, self.settings.compact_max_age_seconds / 2))))
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            self._abort_stuck()
            tick += 1
            if tick % every:
                continue
            now = time.monotonic()
            for room in list(self.rooms.values()):
                if (
                    room.pending_since is not None
                    and now - room.pending_since >= self.settings.compact_max_age_seconds
                    and self.wal.healthy
                ):
                    self.request_compaction(room)

    def _abort_stuck(self) -> None:
        """A socket the server has begun to close (keepalive timeout, our close) but whose
        peer does not read never finishes closing on its own; seen twice, it is aborted."""
        for room in list(self.rooms.values()):
            for conn in list(room.connections):
                transport = conn.transport
                if transport is None or not transport.is_closing():
                    conn.stuck_checks = 0
                    continue
                conn.stuck_checks += 1
                if conn.stuck_checks >= 2:
                    log.info("aborting the stuck connection %s", conn.id)
                    conn.abort()

    # -- shutdown ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Close every socket with 1001, write everything ahead, compact, unload (once)."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shutdown_once())
        await asyncio.shield(self._shutdown)

    async def _shutdown_once(self) -> None:
        self.closing = True
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for room in self.rooms.values():
            room.close_all(CloseCode.GOING_AWAY, "server shutting down")
        # Let the sockets finish closing so no frame arrives after the final flush.
        for _ in range(50):
            if not self.connections:
                break
            await asyncio.sleep(0.02)
        deadline = self.settings.shutdown_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                if self._background:
                    await asyncio.gather(*self._background, return_exceptions=True)
                if self._unloading:
                    await asyncio.gather(*self._unloading.values(), return_exceptions=True)
                rooms = list(self.rooms.values())
                self.rooms.clear()
                await asyncio.gather(
                    *(self._persist(r, snapshot=r.edits_since_version) for r in rooms), return_exceptions=True
                )
        if self._sweeper:
            self._sweeper.cancel()

    def stats(self) -> dict[str, Any]:
        return {"rooms": len(self.rooms), "connections": self.connections}

