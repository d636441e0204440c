"""When a room's write-ahead updates become one stored state: the policy and all its state.

A room is compacted when enough updates are committed (count or bytes), when its oldest
uncompacted update gets old, and when it unloads; never twice at once (a store slower than
the edits must not cause a storm: one compaction runs and at most one more is queued,
Hocuspocus PR #1110). A version is written at most every `version_interval_seconds` while
edits happen, and on unload if anything changed since the last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .counters import Counters
from .extension import Extension, UpdateBatch
from .storage import PendingUpdate, Storage

if TYPE_CHECKING:
    from .room import Room

log = logging.getLogger("collab.compaction")

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    max_updates: int = 5000
    max_bytes: int = 1 << 20
    max_age_seconds: float = 30.0
    version_interval_seconds: float = 600.0


@dataclass(slots=True)
class Backlog:
    """One room's uncompacted updates and where its compaction stands."""

    updates: int = 0
    bytes: int = 0
    since: float | None = None  # when the oldest uncompacted update was committed
    running: bool = False
    again: bool = False  # more was committed while a compaction ran
    edited: bool = False  # edits since the last version
    last_version_at: float = field(default_factory=time.monotonic)

    def add(self, updates: int, size: int, now: float) -> None:
        self.updates += updates
        self.bytes += size
        if self.since is None:
            self.since = now


class CompactionPolicy(Extension):
    """Registered by the hub before every other extension; owns one Backlog per open room."""

    def __init__(self, storage: Storage, config: CompactionConfig, spawn: Spawn, counters: Counters) -> None:
        self._storage = storage
        self.config = config
        self._spawn = spawn
        self._counters = counters
        self.backlogs: dict[UUID, Backlog] = {}

    def track(self, document_id: UUID, pending: int = 0) -> Backlog:
        backlog = self.backlogs[document_id] = Backlog()
        if pending:
            backlog.add(pending, 0, time.monotonic())
        return backlog

    def on_updates(self, room: Room, batch: UpdateBatch) -> None:
        backlog = self.backlogs.get(room.id)
        if backlog is not None and batch.local:
            backlog.edited = True

    def on_committed(self, updates: Sequence[PendingUpdate]) -> None:
        now = time.monotonic()
        touched: dict[UUID, Backlog] = {}
        for u in updates:
            backlog = self.backlogs.get(u.document_id)
            if backlog is not None:
                backlog.add(1, len(u.payload), now)
                touched[u.document_id] = backlog
        c = self.config
        for document_id, backlog in touched.items():
            if backlog.updates >= c.max_updates or backlog.bytes >= c.max_bytes:
                self.request(document_id)

    def sweep(self) -> None:
        """Compact every room whose oldest uncompacted update is older than `max_age_seconds`."""
        if not self._storage.healthy:
            return
        now = time.monotonic()
        for document_id, backlog in list(self.backlogs.items()):
            if backlog.since is not None and now - backlog.since >= self.config.max_age_seconds:
                self.request(document_id)

    def request(self, document_id: UUID) -> None:
        backlog = self.backlogs.get(document_id)
        if backlog is None:
            return
        if backlog.running:
            backlog.again = True
            return
        backlog.running = True
        self._spawn(self._run(document_id, backlog), f"compact-{document_id}")

    async def _run(self, document_id: UUID, backlog: Backlog) -> None:
        try:
            while True:
                backlog.again = False
                taken, backlog.updates, backlog.bytes, backlog.since = backlog.updates, 0, 0, None
                snapshot = backlog.edited and (
                    time.monotonic() - backlog.last_version_at >= self.config.version_interval_seconds
                )
                try:
                    result = await self._storage.compact(document_id, snapshot=snapshot)
                except Exception as exc:
                    self._counters.inc("collab_compaction_failures_total")
                    log.warning("compacting %s failed (will retry): %s", document_id, exc)
                    backlog.add(taken, 0, time.monotonic())
                    return
                if result is not None and result.version_number is not None:
                    backlog.last_version_at = time.monotonic()
                    backlog.edited = False
                if not backlog.again:
                    return
        finally:
            backlog.running = False

    async def persist(self, document_id: UUID, flush_timeout: float) -> None:
        """The last compaction of a room leaving memory: flush the write-ahead, then compact
        (with a version if it was edited). On failure the rows stay for the next load or restart.
        A room only read (no edit here, nothing pending when it loaded) has nothing to compact: its
        unload costs no statement, which is most of what a cold room opened to be read would pay."""
        backlog = self.backlogs.pop(document_id, None)
        if backlog is not None and not (backlog.edited or backlog.updates or backlog.running):
            return
        if not await self._storage.flush(flush_timeout):
            log.warning("room %s unloaded with updates still queued for storage", document_id)
            return
        try:
            await self._storage.compact(document_id, snapshot=backlog is not None and backlog.edited)
        except Exception as exc:
            self._counters.inc("collab_compaction_failures_total")
            log.warning("compacting %s failed (will retry): %s", document_id, exc)
