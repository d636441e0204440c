"""Group-committed write-ahead of Yjs updates to PostgreSQL.

Every update a room applies is appended here without waiting; one writer task sends all
updates of all rooms that arrived within the commit window in one INSERT (one round trip,
one fsync). Relay never waits for it. While PostgreSQL is down the writer keeps the batch
and retries with backoff; the backlog is bounded in bytes so memory cannot grow without
limit, and `append` says no when it is full so the caller can refuse the edit visibly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from collab_server.core.counters import Counters
from collab_server.core.storage import CommitListener, PendingUpdate

from .db import UNAVAILABLE_ERRORS
from .spill import Spill, orphans

log = logging.getLogger("collab.wal")

# ORDER BY the array position: without it the EXISTS becomes a hash join that may emit rows
# (and so allocate seq) in any order.
_INSERT = """
INSERT INTO document_updates (document_id, payload, user_id, device_id, client_version)
SELECT u.document_id, u.payload, u.user_id, u.device_id, u.client_version
FROM unnest($1::uuid[], $2::bytea[], $3::uuid[], $4::text[], $5::text[])
     WITH ORDINALITY AS u(document_id, payload, user_id, device_id, client_version, n)
WHERE EXISTS (SELECT 1 FROM documents d WHERE d.id = u.document_id)
ORDER BY u.n
"""


# A live entry in the changes feed: desktop clients following the feed learn of WebSocket edits within
# `feed_interval` instead of at the next compaction (up to 30 s). One row per edited document per interval.
_FEED_ENTRY = """
INSERT INTO sync_log (entity_type, entity_id, workspace_id, operation, changes, changed_by, device_id, client_version)
SELECT 'document', d.id, d.workspace_id, 'update', jsonb_build_object('live', true, 'updates', u.updates),
       u.user_id, u.device_id, u.client_version
FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[])
     AS u(id, updates, user_id, device_id, client_version)
JOIN documents d ON d.id = u.id AND NOT d.deleted
"""


@dataclass(slots=True)
class _Unlogged:
    updates: int
    last: PendingUpdate


# One attempt's bound: a PostgreSQL that hangs (a partition, not a refusal) must not keep the batch out of
# the spill file for the pool's 60 s command timeout. A commit that lands after the timeout is written again
# by the retry: updates are idempotent.
ATTEMPT_SECONDS = 5.0


class WriteAhead:
    def __init__(
        self,
        pool: asyncpg.Pool,
        window_seconds: float,
        backlog_limit_bytes: int,
        counters: Counters | None = None,
        feed_interval: float = 0.0,
        spill: Spill | None = None,
    ) -> None:
        self._pool = pool
        self._spill = spill  # where updates wait on local disk while PostgreSQL is down
        self._feed_interval = feed_interval
        self._unlogged: dict[UUID, _Unlogged] = {}  # documents edited since their last live feed entry
        self._logged_at: dict[UUID, float] = {}
        self._window = window_seconds
        self._limit = backlog_limit_bytes
        self.counters = counters if counters is not None else Counters()
        self._on_committed: CommitListener | None = None
        self._pending: list[PendingUpdate] = []
        self._pending_since = 0.0  # when the oldest update of _pending was appended
        self._writing_since: float | None = None  # the same for the batch being written
        self._inflight: list[PendingUpdate] = []  # the batch being written, and how much of it is spilled
        self._inflight_spilled = 0
        self._backlog_bytes = 0
        self._appended = 0
        self._committed = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.last_error: str | None = None

    @property
    def backlog_bytes(self) -> int:
        return self._backlog_bytes

    def start(self, on_committed: CommitListener | None = None) -> None:
        """`on_committed` hears every batch once it is durable (and only then: another process
        must never hold, and let its clients build on, an update that exists nowhere durable)."""
        self._on_committed = on_committed
        if self._spill is not None:
            try:
                self._spill.open()
            except OSError as exc:  # e.g. a read-only data directory: run as before, memory only
                log.warning("no spill file (%s): edits held during a PostgreSQL outage are in memory only", exc)
                self._spill = None
        self._task = asyncio.create_task(self._run(), name="wal-writer")

    async def stop(self, timeout: float) -> bool:
        """Flush what is queued (bounded by `timeout`), then stop the writer."""
        flushed = await self.flush(timeout)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._spill is not None:
            # PostgreSQL down at shutdown: what is still held goes to disk, replayed by the next start.
            unspilled = self._inflight[self._inflight_spilled:] + self._pending
            if unspilled and not flushed:
                with contextlib.suppress(OSError):
                    self._spill.append(unspilled)
            self._spill.close()
        return flushed

    def append(self, item: PendingUpdate) -> bool:
        size = len(item.payload)
        if self._backlog_bytes + size > self._limit:
            self.counters.inc("collab_wal_refused_total")
            return False
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(item)
        self._backlog_bytes += size
        self._appended += 1
        self._wake.set()
        return True

    def stats(self) -> dict[str, object]:
        """For the console: how much waits, and how long the oldest of it has (the lag a crash would lose)."""
        oldest = self._writing_since if self._writing_since is not None else (
            self._pending_since if self._pending else None)
        return {"healthy": self.healthy, "last_error": self.last_error, "backlog_bytes": self._backlog_bytes,
                "waiting_updates": self._appended - self._committed,
                "lag_ms": round((time.monotonic() - oldest) * 1000, 1) if oldest is not None else 0.0}

    def has_room_for(self, size: int) -> bool:
        return self._backlog_bytes + size <= self._limit

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything appended before this call is committed; False on timeout."""
        target = self._appended
        if self._committed >= target:
            return True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                async with self._progress:
                    await self._progress.wait_for(lambda: self._committed >= target)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            self._wake.clear()
            if not self._pending:
                await self._log_due()  # the trailing entry of a document that stopped being edited
                continue
            if self._window:
                await asyncio.sleep(self._window)
            batch, self._pending = self._pending, []
            self._count(batch)
            self._writing_since = self._pending_since
            self._inflight, self._inflight_spilled = batch, 0
            await self._write_with_retry(batch)
            self._inflight, self._writing_since = [], None
            self._backlog_bytes -= sum(len(p.payload) for p in batch)
            self._committed += len(batch)
            async with self._progress:
                self._progress.notify_all()
            if self._on_committed is not None:
                self._notify(batch)
            if self._pending:
                self._wake.set()

    def _notify(self, batch: Sequence[PendingUpdate]) -> None:
        assert self._on_committed is not None
        try:
            self._on_committed(batch)
        except Exception:  # a listener must never stop the writer
            log.exception("the commit listener failed")

    async def _write_with_retry(self, batch: list[PendingUpdate]) -> None:
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                await self._write(batch)
            except UNAVAILABLE_ERRORS as exc:
                if self.healthy:
                    log.warning("PostgreSQL unavailable, keeping %d updates and retrying: %s", len(batch), exc)
                self.healthy = False
                self.last_error = str(exc) or exc.__class__.__name__
                self.counters.inc("collab_wal_retries_total")
                await self._hold(batch, delay)
                delay = min(delay * 2, 2.0)
                continue
            except asyncpg.PostgresError as exc:
                # A data error (e.g. a document hard-deleted mid-batch): write row by row so
                # one doomed row cannot block everyone else's edits.
                log.warning("batch insert failed (%s); writing row by row", exc)
                await self._write_rows(batch)
            if not self.healthy:
                log.info("PostgreSQL is back; write-ahead resumed")
            self.healthy = True
            self.last_error = None
            self.counters.inc("collab_wal_commits_total")
            self.counters.inc("collab_wal_updates_total", len(batch))
            self.counters.inc("collab_wal_commit_seconds_total", time.perf_counter() - started)
            if self._inflight_spilled and self._spill is not None:
                try:
                    await asyncio.to_thread(self._spill.clear)
                except OSError as exc:  # replayed twice at worst: updates are idempotent
                    log.error("cannot empty %s: %s", self._spill.path, exc)
            return

    async def _hold(self, batch: list[PendingUpdate], delay: float) -> None:
        """Until the next attempt, keep every update that arrives durable in the spill file (one fsync per
        commit window); they join the batch, so the attempt that succeeds commits them all."""
        deadline = time.monotonic() + delay
        while True:
            if self._pending:
                extra, self._pending = self._pending, []
                self._count(extra)
                batch.extend(extra)
            spilled = self._inflight_spilled
            if self._spill is not None and spilled < len(batch):
                try:
                    await asyncio.to_thread(self._spill.append, batch[spilled:])
                    self._inflight_spilled = len(batch)
                except OSError as exc:  # a full or read-only disk: they stay in memory, as before
                    log.error("cannot spill %d updates to %s: %s", len(batch) - spilled, self._spill.path, exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            if self._window:
                await asyncio.sleep(self._window)

    async def _wait_for_work(self) -> None:
        if not self._unlogged:
            await self._wake.wait()
            return
        due = min(self._logged_at.get(d, 0.0) for d in self._unlogged) + self._feed_interval
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due - time.monotonic())):  # not wait_for: no task per wait
                await self._wake.wait()

    def _count(self, batch: Sequence[PendingUpdate]) -> None:
        if not self._feed_interval:
            return
        for p in batch:
            entry = self._unlogged.get(p.document_id)
            if entry is None:
                self._unlogged[p.document_id] = _Unlogged(1, p)
            else:
                entry.updates += 1
                entry.last = p

    def _due(self) -> list[UUID]:
        """Edited documents whose last live feed entry is at least an interval old."""
        if not self._unlogged:
            return []
        horizon = time.monotonic() - self._feed_interval
        if len(self._logged_at) > 4 * len(self._unlogged) + 1000:  # forget documents long quiet
            self._logged_at = {d: t for d, t in self._logged_at.items() if t > horizon or d in self._unlogged}
        return [d for d in self._unlogged if self._logged_at.get(d, 0.0) <= horizon]

    @staticmethod
    def _feed_args(entries: list[_Unlogged]) -> list[list[Any]]:
        return [[e.last.document_id for e in entries], [e.updates for e in entries], [e.last.user_id for e in entries],
                [e.last.device_id for e in entries], [e.last.client_version for e in entries]]

    def _logged(self, due: list[UUID], entries: list[_Unlogged]) -> None:
        """Written or dropped, these are done. Only what was counted before the write is marked: the writer
        may have counted more meanwhile (an HTTP `announce` runs beside it)."""
        now = time.monotonic()
        for d, entry in zip(due, entries, strict=True):
            if self._unlogged.get(d) is entry:
                del self._unlogged[d]
            self._logged_at[d] = now

    async def announce(self, document_id: UUID) -> None:
        """Write the document's live feed entry now if its committed edits have none yet (HTTP writes)."""
        if document_id not in self._unlogged:
            return
        await self._write_entries([document_id])

    async def _write_entries(self, due: list[UUID]) -> None:
        entries = [self._unlogged[d] for d in due]
        try:
            async with asyncio.timeout(ATTEMPT_SECONDS):
                await self._pool.execute(_FEED_ENTRY, *self._feed_args(entries))
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, TimeoutError) as exc:
            log.debug("live feed entries not written (the next compaction writes one): %s", exc)
        self._logged(due, entries)  # not retried at once either: that would spin while PostgreSQL is away

    async def _log_due(self) -> None:
        due = self._due()
        if due:
            await self._write_entries(due)

    async def _write(self, batch: list[PendingUpdate], feed: bool = True) -> None:
        args = _columns(batch)
        due = self._due() if feed else []
        if not due:
            async with asyncio.timeout(ATTEMPT_SECONDS):  # not wait_for: no task per commit
                await self._pool.execute(_INSERT, *args)
            return
        entries = [self._unlogged[d] for d in due]
        async with asyncio.timeout(ATTEMPT_SECONDS), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_INSERT, *args)
            try:  # in a savepoint: an entry that cannot be written never costs the updates their commit
                async with conn.transaction():
                    await conn.execute(_FEED_ENTRY, *self._feed_args(entries))
            except asyncpg.PostgresError as exc:
                log.warning("live feed entries dropped (the next compaction writes one): %s", exc)
        self._logged(due, entries)

    async def _write_rows(self, batch: list[PendingUpdate]) -> None:
        for p in batch:
            try:
                try:
                    await self._write([p], feed=False)
                except asyncpg.ForeignKeyViolationError:
                    if p.user_id is None:
                        raise
                    # Its author was deleted meanwhile: the edit is kept, without an author.
                    await self._write([PendingUpdate(p.document_id, p.payload, None, p.device_id,
                                                     p.client_version)], feed=False)
            except asyncpg.PostgresError as exc:
                self.counters.inc("collab_wal_dropped_total")
                log.error("dropping an update for document %s: %s", p.document_id, exc)


def _columns(batch: Sequence[PendingUpdate]) -> list[list[Any]]:
    return [[p.document_id for p in batch], [p.payload for p in batch], [p.user_id for p in batch],
            [p.device_id for p in batch], [p.client_version for p in batch]]


async def replay_spills(pool: asyncpg.Pool, directory: Path) -> int:
    """At start: write what processes that died during an outage held on disk, then delete their files
    (each locked meanwhile). A row PostgreSQL refuses is logged and skipped: it must not stop a start."""
    replayed = 0
    for path, records in orphans(directory):
        try:
            await pool.execute(_INSERT, *_columns(records))
        except asyncpg.PostgresError:
            for record in records:
                try:
                    await pool.execute(_INSERT, *_columns([record]))
                except asyncpg.PostgresError as exc:
                    log.error("a spilled update for document %s cannot be written: %s", record.document_id, exc)
        path.unlink(missing_ok=True)
        replayed += len(records)
    return replayed
