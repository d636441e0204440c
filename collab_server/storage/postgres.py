"""Durable documents in PostgreSQL: loading, compaction into yjs_state/content, versions.

Compaction is the only writer of documents.yjs_state. It locks the document row, merges
the write-ahead rows it can see, and deletes exactly those rows in the same transaction,
so two processes compacting one document serialise on the row lock and neither can lose
or double-merge an update. The documents trigger turns the UPDATE into one sync_log row,
with the small summary we hand it through transaction-local settings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from pycrdt import merge_updates

from collab_server.content import rich_fields
from collab_server.core.counters import Counters
from collab_server.core.storage import CommitListener, CompactionResult, LoadedDocument, PendingUpdate

from . import ydoc
from .batch import BatchedLookup
from .offloop import OffLoop
from .wal import WriteAhead

log = logging.getLogger("collab.store")

# Open mode (COLLAB_AUTH=off): room names map to stable document ids in one local workspace.
OPEN_NAMESPACE = uuid.UUID("6f1d3c56-0e0b-4c53-9d0f-3c5e1f7a2b10")
LOCAL_USER_ID = uuid.uuid5(OPEN_NAMESPACE, "user:local")
LOCAL_WORKSPACE_ID = uuid.uuid5(OPEN_NAMESPACE, "workspace:local")
# A document with its pending updates, in one snapshot. `= $1` for one (PostgreSQL keeps a generic
# plan, planned once), `= ANY($1)` for the several asked for in one moment (see BatchedLookup): its
# generic plan is poor, so PostgreSQL plans it each time, which a batch pays once.
_LOAD = """
    SELECT d.id, d.workspace_id, d.type::text AS type, d.yjs_state,
           d.deleted OR w.deleted_at IS NOT NULL AS gone,
           ARRAY(SELECT u.payload FROM document_updates u
                 WHERE u.document_id = d.id ORDER BY u.seq) AS updates
    FROM documents d JOIN workspaces w ON w.id = d.workspace_id
    WHERE d.id = {}
"""
_LOAD_ONE, _LOAD_MANY = _LOAD.format("$1"), _LOAD.format("ANY($1::uuid[])")
COMPACT_CHUNK = 20_000  # rows merged per transaction; a larger backlog takes several


@functools.lru_cache(maxsize=4096)  # a SHA-1 per connection otherwise; room names repeat
def open_document_id(name: str) -> UUID:
    try:
        return UUID(name)
    except ValueError:
        return uuid.uuid5(OPEN_NAMESPACE, f"document:{name}")


class DocumentStore:
    def __init__(
        self, pool: asyncpg.Pool, version_interval_seconds: float, offloop: OffLoop | None = None,
        rich_text_field: str = "default", counters: Counters | None = None,
    ) -> None:
        self.pool = pool
        self.counters = counters if counters is not None else Counters()
        self.offloop = offloop or OffLoop(0)
        self.fields = rich_fields(rich_text_field)
        self.version_interval = version_interval_seconds
        self._ensured: set[UUID] = set()  # open-mode documents known to exist (saves a round trip)
        self._expected: dict[UUID, str] = {}  # open-mode rooms asked for: `load` creates them if missing
        self._rows: BatchedLookup[UUID, asyncpg.Record] = BatchedLookup(self._fetch_rows)

    async def load(self, document_id: UUID) -> LoadedDocument | None:
        """The document's full state, or None when it does not exist or is deleted.

        One statement, so the row and its pending updates come from one snapshot (a
        compaction committing in between can neither hide rows nor double them) in one
        round trip, shared with every other document asked for in the same moment; an
        open-mode document asked for but missing costs two more, once."""
        row = await self._load_row(document_id)
        name = self._expected.pop(document_id, None)
        if row is None and name is not None:  # an open-mode room's first use: create it, then read it
            await self.ensure_open_document(name)
            row = await self._load_row(document_id)
        elif row is not None and name is not None:  # it exists: later connections skip `_expected`
            self._remember(document_id)
        if row is None or row["gone"]:
            return None
        updates = row["updates"]
        parts = [row["yjs_state"], *updates] if row["yjs_state"] else list(updates)
        if len(parts) > 1:
            state = await asyncio.to_thread(merge_updates, *parts)
        else:
            state = parts[0] if parts else b""
        return LoadedDocument(document_id, row["workspace_id"], row["type"], state, len(updates))

    async def _load_row(self, document_id: UUID) -> asyncpg.Record | None:
        return await self._rows.get(document_id)

    async def _fetch_rows(self, document_ids: Sequence[UUID]) -> dict[UUID, asyncpg.Record]:
        if len(document_ids) == 1:
            row = await self.pool.fetchrow(_LOAD_ONE, document_ids[0])
            return {row["id"]: row} if row is not None else {}
        return {row["id"]: row for row in await self.pool.fetch(_LOAD_MANY, document_ids)}

    @property
    def load_statements(self) -> int:
        """Load statements sent so far (each carries every document asked for in its moment)."""
        return self._rows.batches

    @staticmethod
    async def warm(conn: asyncpg.Connection) -> None:
        """For `create_pool`: the loads, prepared and their types introspected once per connection
        (a nil id matches no row)."""
        await conn.fetchrow(_LOAD_ONE, UUID(int=0))
        await conn.fetch(_LOAD_MANY, [])

    async def compact(self, document_id: UUID, *, snapshot: bool = False) -> CompactionResult | None:
        """Merge pending write-ahead rows; write a version when asked or when one is due."""
        result = None
        while True:
            step = await self._compact_chunk(document_id, snapshot)
            if step is None:
                return result
            result = step
            if step.merged < COMPACT_CHUNK:
                return result

    async def _compact_chunk(self, document_id: UUID, snapshot: bool) -> CompactionResult | None:
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            doc = await conn.fetchrow(
                """
                SELECT workspace_id, type::text AS type, title, yjs_state, yjs_clock, content,
                       created_by, updated_by, last_version_at, deleted
                FROM documents WHERE id = $1 FOR UPDATE
                """,
                document_id,
            )
            if doc is None:
                return None
            rows = await conn.fetch(
                """
                SELECT seq, payload, user_id, device_id, client_version
                FROM document_updates WHERE document_id = $1 ORDER BY seq LIMIT $2
                """,
                document_id,
                COMPACT_CHUNK,
            )
            version_due = snapshot or (
                doc["last_version_at"] is None
                or (time.time() - doc["last_version_at"].timestamp()) >= self.version_interval
            )
            if not rows:
                if not snapshot or doc["yjs_state"] is None:
                    return None
                # Edits since the last version were already compacted: snapshot what is stored,
                # unless the newest version already holds exactly this content.
                latest = await conn.fetchval(
                    "SELECT content_hash FROM document_versions WHERE document_id = $1 "
                    "ORDER BY version_number DESC LIMIT 1",
                    document_id,
                )
                stored = ydoc.Compacted(doc["yjs_state"], doc["content"])
                if latest == ydoc.content_hash(stored.content):
                    return None
                number = await self._insert_version(
                    conn, document_id, doc, stored, {"updates": 0}, doc["updated_by"] or doc["created_by"]
                )
                return CompactionResult(0, 0, doc["yjs_clock"], stored.content, number)
            payloads = [r["payload"] for r in rows]
            merged = await self.offloop.run(
                ydoc.compact, doc["yjs_state"], payloads, doc["type"], doc["content"] or "", self.fields
            )
            for problem in merged.problems:
                log.warning("document %s: %s", document_id, problem)
            seqs = [r["seq"] for r in rows]
            editors = list(dict.fromkeys(str(r["user_id"]) for r in rows if r["user_id"]))
            last = rows[-1]
            actor = next((r["user_id"] for r in reversed(rows) if r["user_id"]), None)
            summary = {
                "source": "compaction",
                "clock": [seqs[0], seqs[-1]],
                "updates": len(rows),
                "bytes": sum(len(p) for p in payloads),
                "editors": editors,
                "chars_added": merged.chars_added,
                "chars_removed": merged.chars_removed,
                "size": len(merged.content),
            }
            await conn.execute(
                """
                SELECT set_config('app.sync_changes', $1, true),
                       set_config('app.device_id', coalesce($2, ''), true),
                       set_config('app.client_version', coalesce($3, ''), true)
                """,
                orjson.dumps(summary).decode(),
                last["device_id"],
                last["client_version"],
            )
            await conn.execute(
                """
                UPDATE documents
                SET yjs_state = $2, yjs_clock = GREATEST(yjs_clock, $3), content = $4,
                    updated_by = coalesce($5, updated_by), last_edited_at = now()
                WHERE id = $1
                """,
                document_id,
                merged.state,
                seqs[-1],
                merged.content,
                actor,
            )
            await conn.execute(
                "DELETE FROM document_updates WHERE document_id = $1 AND seq = ANY($2::bigint[])",
                document_id,
                seqs,
            )
            if merged.mindmap is not None:
                await self._mirror_mindmap(conn, document_id, merged.mindmap)
            version_number = None
            if version_due:
                version_number = await self._insert_version(
                    conn, document_id, doc, merged, summary, actor or doc["updated_by"] or doc["created_by"]
                )
        self.counters.inc("collab_compactions_total")
        log.debug(
            "compacted %s: %d updates in %.1f ms", document_id, len(rows), (time.perf_counter() - started) * 1e3
        )
        return CompactionResult(len(rows), sum(len(p) for p in payloads), seqs[-1], merged.content, version_number)

    async def _mirror_mindmap(self, conn: asyncpg.Connection, document_id: UUID, mm: dict[str, Any]) -> None:
        await conn.execute(
            """
            INSERT INTO mindmaps (document_id, nodes, edges, layout_type, layout_settings)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (document_id) DO UPDATE
            SET nodes = EXCLUDED.nodes, edges = EXCLUDED.edges,
                layout_type = EXCLUDED.layout_type, layout_settings = EXCLUDED.layout_settings
            """,
            document_id, mm["nodes"], mm["edges"], mm["layout_type"], mm["layout_settings"],
        )

    async def _insert_version(
        self,
        conn: asyncpg.Connection,
        document_id: UUID,
        doc: asyncpg.Record,
        merged: ydoc.Compacted,
        summary: dict[str, Any],
        author: UUID,
        description: str = "autosave",
    ) -> int:
        number = await conn.fetchval(
            """
            INSERT INTO document_versions
                (document_id, version_number, title, content, content_hash, change_description,
                 changes_summary, created_by, yjs_state)
            VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8)
            RETURNING version_number
            """,
            document_id, doc["title"], merged.content, ydoc.content_hash(merged.content), description,
            {"added": merged.chars_added, "removed": merged.chars_removed, "updates": summary["updates"]},
            author, merged.state,
        )
        await conn.execute("UPDATE documents SET last_version_at = now() WHERE id = $1", document_id)
        return int(number)

    async def pending_documents(self) -> list[UUID]:
        """Documents with write-ahead rows not yet compacted (e.g. after a crash)."""
        rows = await self.pool.fetch("SELECT DISTINCT document_id FROM document_updates")
        return [r["document_id"] for r in rows]

    async def ensure_local_workspace(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO users (id, cognito_sub, email, display_name)
                VALUES ($1, 'local', 'local@collab.localhost', 'Local user')
                ON CONFLICT DO NOTHING
                """,
                LOCAL_USER_ID,
            )
            await conn.execute(
                """
                INSERT INTO workspaces (id, owner_id, name, is_personal)
                VALUES ($1, $2, 'Local (open mode)', true) ON CONFLICT DO NOTHING
                """,
                LOCAL_WORKSPACE_ID, LOCAL_USER_ID,
            )
            await conn.execute(
                """
                INSERT INTO workspace_members (workspace_id, user_id, role)
                VALUES ($1, $2, 'owner') ON CONFLICT DO NOTHING
                """,
                LOCAL_WORKSPACE_ID, LOCAL_USER_ID,
            )

    def expect_open_document(self, name: str) -> UUID:
        """Open mode, WebSocket: the document a room name stands for, created by `load` only when it
        is missing, so opening one that exists costs one statement (the load), not two."""
        document_id = open_document_id(name)
        if document_id not in self._ensured:
            if len(self._expected) > 10_000:  # names asked for by clients that never got to load
                self._expected.clear()
            self._expected[document_id] = name
        return document_id

    def pending_open_documents(self) -> int:
        """Open-mode names asked for whose load has not run yet (for tests and /api/stats)."""
        return len(self._expected)

    def forget_open_documents(self) -> None:
        """Drop what this process knows about open-mode documents, as a restart would."""
        self._ensured.clear()
        self._expected.clear()

    async def ensure_open_document(self, name: str) -> UUID:
        """Open mode: the document a room name stands for, created on first use."""
        document_id = open_document_id(name)
        if document_id in self._ensured:
            return document_id
        await self.pool.execute(
            """
            INSERT INTO documents (id, workspace_id, title, created_by)
            VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING
            """,
            document_id, LOCAL_WORKSPACE_ID, (name.strip() or "untitled")[:500], LOCAL_USER_ID,
        )
        self._remember(document_id)
        return document_id

    def _remember(self, document_id: UUID) -> None:
        if len(self._ensured) > 100_000:
            self._ensured.clear()
        self._ensured.add(document_id)


class PostgresStorage:
    """The core's Storage over PostgreSQL: documents and versions in `DocumentStore`, the
    group-committed write-ahead in `WriteAhead`."""

    def __init__(self, store: DocumentStore, wal: WriteAhead) -> None:
        self.store = store
        self.wal = wal

    @property
    def healthy(self) -> bool:
        return self.wal.healthy

    @property
    def backlog_bytes(self) -> int:
        return self.wal.backlog_bytes

    async def start(self, on_committed: CommitListener) -> None:
        self.wal.start(on_committed)

    async def stop(self, timeout: float) -> bool:
        return await self.wal.stop(timeout)

    async def load(self, document_id: UUID) -> LoadedDocument | None:
        return await self.store.load(document_id)

    def append(self, update: PendingUpdate) -> bool:
        return self.wal.append(update)

    def has_room_for(self, size: int) -> bool:
        return self.wal.has_room_for(size)

    async def flush(self, timeout: float | None = None) -> bool:
        return await self.wal.flush(timeout)

    async def compact(self, document_id: UUID, *, snapshot: bool = False) -> CompactionResult | None:
        return await self.store.compact(document_id, snapshot=snapshot)

    async def pending_documents(self) -> list[UUID]:
        return await self.store.pending_documents()
