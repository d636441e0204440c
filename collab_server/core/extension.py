"""The hub's extension interface: optional behaviour hooked to room and hub events.

Cross-process relay, presence, revocation and metrics are extensions; the hub and its rooms
run with none. Every hook is synchronous and fires once per event (a join, a batch of
updates flushed in one loop turn, a group commit), never once per frame; a hook that needs
I/O hands the work to a task of its own. A hook that raises is logged and skipped: an
extension can never break a room. `on_start` receives the hub, which is how an extension
reaches rooms (`hub.get`, `hub.rooms`): there is no shared dict to mutate.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .awareness import AwarenessChange
from .storage import PendingUpdate

if TYPE_CHECKING:
    from .connection import ClientInfo, Connection
    from .hub import Hub
    from .room import Room

log = logging.getLogger("collab.extension")


@dataclass(slots=True)
class AppliedUpdate:
    """One update a room applied this loop turn."""

    update: bytes
    origin: Connection | None  # the connection that sent it (None: HTTP or another process)
    actor: ClientInfo | None  # who made it, for the write-ahead row (None when remote)
    remote: bool  # relayed by another process, already stored there


@dataclass(slots=True)
class UpdateBatch:
    """Everything a room applied in one loop turn, merged into the one frame it relayed."""

    merged: bytes
    updates: list[AppliedUpdate]
    local: bool  # any of them made here (not relayed by another process)


class Extension:
    """Override the hooks you need; the defaults do nothing."""

    async def on_start(self, hub: Hub) -> None:
        """After storage has started, before any room opens."""

    async def on_stop(self) -> None:
        """After every room is persisted and storage has stopped."""

    def on_loading(self, document_id: UUID) -> None:
        """Before a room reads its document from storage (the bus subscribes here)."""

    def on_loaded(self, room: Room) -> None: ...

    def on_load_failed(self, document_id: UUID) -> None: ...

    def on_unloaded(self, room: Room) -> None:
        """The room left the registry; its edits are being persisted."""

    def on_join(self, room: Room, conn: Connection) -> None: ...

    def on_leave(self, room: Room, conn: Connection) -> None:
        """`conn.close_code` is set when the server closed it."""

    def on_awareness(self, room: Room, origin: object, change: AwarenessChange) -> None:
        """`origin` is a Connection, or the owner another process's clients are recorded under."""

    def on_updates(self, room: Room, batch: UpdateBatch) -> None: ...

    def on_stateless(self, room: Room, origin: Connection, payload: str) -> bool | None:
        """A client sent an application message (Hocuspocus' Stateless) for this document. Hooks
        run in order; one that returns False ends the chain and the message is not relayed (as a
        rejecting hook does in Hocuspocus). The bus, registered last, relays it to other processes."""
        return None

    def on_committed(self, updates: Sequence[PendingUpdate]) -> None:
        """A group commit made `updates` durable (cross-process relay starts only here)."""


_HOOKS = (
    "on_loading", "on_loaded", "on_load_failed", "on_unloaded", "on_join", "on_leave",
    "on_awareness", "on_updates", "on_stateless", "on_committed",
)


class Extensions:
    """Dispatches each hook only to the extensions that override it, each call guarded."""

    def __init__(self, extensions: Sequence[Extension] = ()) -> None:
        self.all = tuple(extensions)
        self._by_hook: dict[str, tuple[Any, ...]] = {
            name: tuple(
                getattr(ext, name) for ext in self.all if getattr(type(ext), name) is not getattr(Extension, name)
            )
            for name in _HOOKS
        }

    def _fire(self, name: str, *args: Any) -> None:
        for hook in self._by_hook[name]:
            try:
                hook(*args)
            except Exception:
                log.exception("extension hook %s failed", getattr(hook, "__qualname__", name))

    def wants(self, name: str) -> bool:
        return bool(self._by_hook[name])

    def on_loading(self, document_id: UUID) -> None:
        self._fire("on_loading", document_id)

    def on_loaded(self, room: Room) -> None:
        self._fire("on_loaded", room)

    def on_load_failed(self, document_id: UUID) -> None:
        self._fire("on_load_failed", document_id)

    def on_unloaded(self, room: Room) -> None:
        self._fire("on_unloaded", room)

    def on_join(self, room: Room, conn: Connection) -> None:
        self._fire("on_join", room, conn)

    def on_leave(self, room: Room, conn: Connection) -> None:
        self._fire("on_leave", room, conn)

    def on_awareness(self, room: Room, origin: object, change: AwarenessChange) -> None:
        self._fire("on_awareness", room, origin, change)

    def on_updates(self, room: Room, batch: UpdateBatch) -> None:
        self._fire("on_updates", room, batch)

    def on_stateless(self, room: Room, origin: Connection, payload: str) -> bool:
        """True when the message is to be relayed (no hook said False)."""
        for hook in self._by_hook["on_stateless"]:
            try:
                if hook(room, origin, payload) is False:
                    return False
            except Exception:
                log.exception("extension hook %s failed", getattr(hook, "__qualname__", "on_stateless"))
        return True

    def on_committed(self, updates: Sequence[PendingUpdate]) -> None:
        self._fire("on_committed", updates)


@dataclass(frozen=True, slots=True)
class StatelessEvent:
    """What an application's stateless hook receives."""

    document_id: UUID
    user_id: UUID | None
    connection_id: str
    payload: str


StatelessCallable = Callable[[StatelessEvent], Any]


class StatelessHook(Extension):
    """The application's hook for stateless messages: a plain callable, which may return False to
    keep the message from being relayed, or a coroutine function, run as a task of its own (at
    most `max_tasks` at once: past that, events are dropped and counted) so a slow one never
    holds up the room."""

    def __init__(self, hook: StatelessCallable, max_tasks: int = 1000) -> None:
        self._hook = hook
        self._max_tasks = max_tasks
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dropped = 0

    def on_stateless(self, room: Room, origin: Connection, payload: str) -> bool | None:
        if len(self._tasks) >= self._max_tasks:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("stateless hook: %d events dropped (%d still running)", self.dropped, len(self._tasks))
            return None
        result = self._hook(StatelessEvent(room.id, origin.info.user_id, origin.id, payload))
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)
            return None
        return result is not False

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stateless hook failed: %r", task.exception())

    async def on_stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
