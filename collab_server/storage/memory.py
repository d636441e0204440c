"""The core's Storage in memory: documents in a dict, a group commit per loop turn.

For unit tests of the core and for trying the hub without a database. It keeps the
contract the hub relies on (append never waits, a listener hears each commit after it is
durable, flush waits for what came before it, compaction merges committed updates) and
nothing else: no versions table, no content conversion beyond what `ydoc.compact` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID, uuid4

from pycrdt import merge_updates

from collab_server.core.storage import CommitListener, CompactionResult, LoadedDocument, PendingUpdate

from . import ydoc


@dataclass(slots=True)
class StoredDocument:
    workspace_id: UUID | None = None
    type: str = "markdown"
    state: bytes = b""
    content: str = ""
    updates: list[PendingUpdate] = field(default_factory=list)  # committed, not yet compacted
    clock: int = 0
    versions: list[bytes] = field(default_factory=list)
    deleted: bool = False


class MemoryStorage:
    def __init__(self, backlog_limit_bytes: int = 64 << 20) -> None:
        self.documents: dict[UUID, StoredDocument] = {}
        self.limit = backlog_limit_bytes
        self._queue: list[PendingUpdate] = []
        self._queued_bytes = 0
        self._listener: CommitListener | None = None
        self._scheduled = False
        self._committed = asyncio.Event()
        self.commits = 0
        self.compactions = 0
        self.healthy = True

    def create(self, doc_type: str = "markdown", state: bytes = b"", document_id: UUID | None = None) -> UUID:
        document_id = document_id or uuid4()
        self.documents[document_id] = StoredDocument(type=doc_type, state=state)
        return document_id

    @property
    def backlog_bytes(self) -> int:
        return self._queued_bytes

    async def start(self, on_committed: CommitListener) -> None:
        self._listener = on_committed

    async def stop(self, timeout: float) -> bool:
        return await self.flush(timeout)

    async def load(self, document_id: UUID) -> LoadedDocument | None:
        doc = self.documents.get(document_id)
        if doc is None or doc.deleted:
            return None
        parts = [p for p in (doc.state, *(u.payload for u in doc.updates)) if p]
        state = merge_updates(*parts) if len(parts) > 1 else (parts[0] if parts else b"")
        return LoadedDocument(document_id, doc.workspace_id, doc.type, state, len(doc.updates))

    def append(self, update: PendingUpdate) -> bool:
        if not self.has_room_for(len(update.payload)):
            return False
        self._queue.append(update)
        self._queued_bytes += len(update.payload)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)
        return True

    def has_room_for(self, size: int) -> bool:
        return self._queued_bytes + size <= self.limit

    def _commit(self) -> None:
        self._scheduled = False
        batch, self._queue, self._queued_bytes = self._queue, [], 0
        durable: list[PendingUpdate] = []
        for u in batch:
            doc = self.documents.get(u.document_id)
            if doc is not None:  # an update of a document deleted meanwhile is dropped, as in PostgreSQL
                doc.updates.append(u)
                durable.append(u)
        self.commits += 1
        self._committed.set()
        self._committed = asyncio.Event()
        if self._listener is not None and durable:
            self._listener(durable)

    async def flush(self, timeout: float | None = None) -> bool:
        if not self._queue:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._committed.wait()
        except TimeoutError:
            return False
        return True

    async def compact(self, document_id: UUID, *, snapshot: bool = False) -> CompactionResult | None:
        doc = self.documents.get(document_id)
        if doc is None or (not doc.updates and not snapshot):
            return None
        taken = list(doc.updates)
        merged = ydoc.compact(doc.state or None, [u.payload for u in taken], doc.type, doc.content)
        del doc.updates[: len(taken)]  # only once merged: a failed compaction keeps them for the retry
        doc.state, doc.content = merged.state, merged.content
        doc.clock += len(taken)
        self.compactions += 1
        version = None
        if snapshot:
            doc.versions.append(doc.state)
            version = len(doc.versions)
        return CompactionResult(len(taken), sum(len(u.payload) for u in taken), doc.clock, doc.content, version)

    async def pending_documents(self) -> list[UUID]:
        return [i for i, d in self.documents.items() if d.updates]

    def stored_updates(self, document_id: UUID) -> Sequence[PendingUpdate]:
        return tuple(self.documents[document_id].updates)
