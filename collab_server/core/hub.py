"""The room registry: the one owner of every room's lifecycle (load, share, compact, unload).

A room is loaded once however many clients join at the same moment, unloaded after its last
connection leaves plus a grace period, and never dropped with edits that are not yet written:
unload flushes the write-ahead and compacts first. A failed load leaves no room behind, so
the next join tries again instead of finding a broken room. The hub knows storage only
through its interface and everything optional through extensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from .compaction import CompactionConfig, CompactionPolicy
from .connection import Connection
from .counters import Counters
from .extension import Extension, Extensions
from .protocol import CloseCode
from .room import Room
from .storage import PendingUpdate, Storage

log = logging.getLogger("collab.hub")


class RoomUnavailable(Exception):
    """A room cannot be opened; carries the close code and reason for the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HubConfig:
    max_connections: int = 10_000
    max_rooms: int = 10_000
    room_grace_seconds: float = 5.0
    shutdown_timeout: float = 10.0
    max_awareness_clients: int = 32  # client IDs one connection may announce
    max_document_bytes: int = 0  # a document's size limit (0: none)
    max_pending_bytes: int = 1 << 20  # updates waiting for missing changes, per room (0: no check)
    compaction: CompactionConfig = field(default_factory=CompactionConfig)


class Hub:
    def __init__(
        self,
        storage: Storage,
        config: HubConfig | None = None,
        extensions: Sequence[Extension] = (),
        counters: Counters | None = None,
    ) -> None:
        self.config = config or HubConfig()
        self.storage = storage
        self.counters = counters if counters is not None else Counters()
        self._policy = CompactionPolicy(storage, self.config.compaction, self._spawn, self.counters)
        self.extensions = Extensions([self._policy, *extensions])
        self._rooms: dict[UUID, Room] = {}
        self._loading: dict[UUID, asyncio.Future[Room]] = {}
        self._unloading: dict[UUID, asyncio.Task[None]] = {}
        self._grace: dict[UUID, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()  # loads and compactions: awaited at shutdown
        self._repairs: set[asyncio.Task[None]] = set()  # cancelled at shutdown (the store has it all)
        self._sweeper: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self.connections = 0
        self.closing = False

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, into: set[asyncio.Task[None]] | None = None) -> None:
        """Run in the background, keeping a reference (the loop holds tasks weakly)."""
        tasks = self._background if into is None else into
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def start(self) -> None:
        """Start storage and the extensions, then compact what a crash left uncompacted."""
        await self.storage.start(self._committed)
        for ext in self.extensions.all:
            await ext.on_start(self)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="compaction-sweeper")
        for document_id in await self.storage.pending_documents():
            try:
                await self.storage.compact(document_id)
            except Exception:
                log.exception("recovery compaction of %s failed; retried when the document is next opened", document_id)

    # -- reading the registry ----------------------------------------------------------------

    def get(self, document_id: UUID) -> Room | None:
        """The room of a document open on this process, if any (never loads one)."""
        return self._rooms.get(document_id)

    def rooms(self) -> list[Room]:
        """A snapshot of the open rooms (safe to iterate while rooms come and go)."""
        return list(self._rooms.values())

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def is_loading(self, document_id: UUID) -> bool:
        return document_id in self._loading

    def is_unloading(self, document_id: UUID) -> bool:
        return document_id in self._unloading

    # -- joining and leaving -----------------------------------------------------------------

    def refusal(self, document_id: UUID) -> RoomUnavailable | None:
        """Why `join` would refuse this document now, if it would: asked before loading anything."""
        if self.closing:
            return RoomUnavailable(CloseCode.GOING_AWAY, "server is shutting down")
        if self.connections >= self.config.max_connections:
            return RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "connection limit reached on this server")
        if (document_id not in self._rooms and document_id not in self._loading
                and len(self._rooms) + len(self._loading) >= self.config.max_rooms):
            return RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "room limit reached on this server")
        return None

    async def join(self, document_id: UUID, conn: Connection) -> Room:
        refused = self.refusal(document_id)
        if refused is not None:
            raise refused
        self.connections += 1
        try:
            room = await self.open_room(document_id)
        except BaseException:
            self.connections -= 1
            raise
        room.add(conn)
        self.extensions.on_join(room, conn)
        return room

    async def open_room(self, document_id: UUID) -> Room:
        """The live room for a document, loading it once for every concurrent caller."""
        timer = self._grace.pop(document_id, None)
        if timer is not None:
            timer.cancel()
        room = self._rooms.get(document_id)
        if room is not None:
            return room
        pending = self._loading.get(document_id)
        if pending is None:
            if len(self._rooms) + len(self._loading) >= self.config.max_rooms:
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
            self.extensions.on_loading(document_id)
            loaded = await self.storage.load(document_id)
            if loaded is None:
                raise RoomUnavailable(CloseCode.NOT_FOUND, "document not found")
            room = Room(document_id, loaded.workspace_id, loaded.type, self.storage, self.extensions, self.counters,
                        self.config.max_awareness_clients, self.config.max_document_bytes,
                        self.config.max_pending_bytes)
            room.load_state(loaded.state)
            self._policy.track(document_id, loaded.pending)
            self._rooms[document_id] = room
            self.extensions.on_loaded(room)
            result.set_result(room)
            # Whoever asked may be gone (a client that left while the room loaded): if nobody has
            # joined or used the room by then, it unloads like any room that was left.
            delay = max(self.config.room_grace_seconds, 1.0)
            asyncio.get_running_loop().call_later(delay, self._unload_if_unused, room)
        except RoomUnavailable as exc:
            result.set_exception(exc)
        except Exception as exc:
            log.warning("loading document %s failed: %s", document_id, exc)
            result.set_exception(RoomUnavailable(CloseCode.TRY_AGAIN_LATER, "document could not be loaded"))
        finally:
            self._loading.pop(document_id, None)
            if document_id not in self._rooms:
                self.extensions.on_load_failed(document_id)
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
            if not room.connections and self._rooms.get(room.id) is room and room.id not in self._grace:
                self._schedule_unload(room)

    def leave(self, room: Room, conn: Connection) -> None:
        self.connections -= 1
        room.remove(conn)
        self.extensions.on_leave(room, conn)
        if not room.connections and self._rooms.get(room.id) is room:
            self._schedule_unload(room)

    def _unload_if_unused(self, room: Room) -> None:
        if not room.connections and self._rooms.get(room.id) is room and room.id not in self._grace:
            self._schedule_unload(room)

    def _schedule_unload(self, room: Room) -> None:
        if self.closing:
            return  # shutdown persists every room itself
        grace = self.config.room_grace_seconds
        if grace <= 0:
            self._start_unload(room)
            return
        self._grace[room.id] = asyncio.get_running_loop().call_later(grace, self._start_unload, room)

    def _start_unload(self, room: Room) -> None:
        self._grace.pop(room.id, None)
        if room.connections or self._rooms.get(room.id) is not room:
            return
        del self._rooms[room.id]
        self.extensions.on_unloaded(room)
        task = asyncio.get_running_loop().create_task(self._unload(room), name=f"unload-{room.id}")
        self._unloading[room.id] = task

    async def _unload(self, room: Room) -> None:
        try:
            await self._policy.persist(room.id, self.config.shutdown_timeout)
        finally:
            self._unloading.pop(room.id, None)

    # -- storage events ------------------------------------------------------------------

    def _committed(self, updates: Sequence[PendingUpdate]) -> None:
        rooms = self._rooms
        for update in updates:
            room = rooms.get(update.document_id)
            if room is not None and room.awaiting_commit:
                try:
                    room.committed(update)
                except Exception:  # the relay below must run whatever happens here
                    log.exception("acknowledging committed edits of %s failed", update.document_id)
        self.extensions.on_committed(updates)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every edit applied so far is durable."""
        return await self.storage.flush(timeout)

    def repair(self, room: Room) -> None:
        """Catch a room up from storage after a relay may have lost entries; twice, the second
        time after other processes' write-ahead windows have surely committed."""

        async def run() -> None:
            for delay in (0.0, 2.0):
                await asyncio.sleep(delay)
                if self._rooms.get(room.id) is not room:
                    return
                try:
                    loaded = await self.storage.load(room.id)
                except Exception as exc:
                    log.warning("repairing %s failed: %s", room.id, exc)
                    continue
                if loaded is None:
                    continue
                try:
                    room.apply_remote(loaded.state)
                except Exception as exc:  # a corrupt stored state must not end the repairs silently
                    log.warning("repairing %s: the stored state does not apply: %r", room.id, exc)

        self._spawn(run(), f"repair-{room.id}", self._repairs)

    def request_compaction(self, document_id: UUID) -> None:
        self._policy.request(document_id)

    async def _sweep(self) -> None:
        """Compact rooms whose oldest pending update is old. (A socket that never finishes
        closing is the transport's to drop: it owns the TCP connection.)"""
        every = max(0.2, min(5.0, self.config.compaction.max_age_seconds / 2))
        while True:
            await asyncio.sleep(every)
            self._policy.sweep()

    # -- shutdown ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Close every socket with 1001, write everything ahead, compact, unload, then stop
        storage and the extensions (once, however many callers)."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shutdown_once())
        await asyncio.shield(self._shutdown)

    async def _shutdown_once(self) -> None:
        self.closing = True
        for task in self._repairs:
            task.cancel()
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for room in self._rooms.values():
            room.close_all(CloseCode.GOING_AWAY, "server shutting down")
        # Let the sockets finish closing so no frame arrives after the final flush.
        for _ in range(50):
            if not self.connections:
                break
            await asyncio.sleep(0.02)
        timeout = self.config.shutdown_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self._background:
                    await asyncio.gather(*self._background, return_exceptions=True)
                if self._unloading:
                    await asyncio.gather(*self._unloading.values(), return_exceptions=True)
                rooms = list(self._rooms.values())
                self._rooms.clear()
                for room in rooms:
                    self.extensions.on_unloaded(room)
                await asyncio.gather(*(self._policy.persist(r.id, timeout) for r in rooms), return_exceptions=True)
        if self._sweeper:
            self._sweeper.cancel()
        await self.storage.stop(timeout)
        for ext in reversed(self.extensions.all):
            try:
                await ext.on_stop()
            except Exception:
                log.exception("stopping extension %s failed", type(ext).__name__)

    def stats(self) -> dict[str, Any]:
        return {"rooms": len(self._rooms), "connections": self.connections}
