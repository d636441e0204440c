"""What the core needs from durable storage: a small interface and the records that cross it.

The hub never knows where documents live. It loads a document, appends every edit ahead
without waiting (group commit is the implementation's business), waits for a flush before it
lets a room go, and asks for compactions. PostgreSQL implements it in production
(`storage.postgres`), a dict in unit tests (`storage.memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID


@dataclass(slots=True)
class LoadedDocument:
    id: UUID
    workspace_id: UUID | None
    type: str
    state: bytes  # the stored state merged with every update written ahead but not compacted
    pending: int  # how many such updates


@dataclass(slots=True)
class CompactionResult:
    merged: int
    bytes: int
    clock: int
    content: str
    version_number: int | None


@dataclass(slots=True)
class PendingUpdate:
    """One write-ahead row: an update and who made it (for the changes feed)."""

    document_id: UUID
    payload: bytes
    user_id: UUID | None = None
    device_id: str | None = None
    client_version: str | None = None


# Called after each group commit with the updates it made durable, in append order.
CommitListener = Callable[[Sequence[PendingUpdate]], None]


class Storage(Protocol):
    @property
    def healthy(self) -> bool:
        """False while writes are being retried (the store is unreachable)."""
        ...

    @property
    def backlog_bytes(self) -> int: ...

    async def start(self, on_committed: CommitListener) -> None: ...

    async def stop(self, timeout: float) -> bool:
        """Commit what is queued (bounded by `timeout`); False if something was left."""
        ...

    async def load(self, document_id: UUID) -> LoadedDocument | None:
        """None when the document does not exist or is deleted."""
        ...

    def append(self, update: PendingUpdate) -> bool:
        """Queue an update for the next group commit; False when the backlog is full."""
        ...

    def has_room_for(self, size: int) -> bool: ...

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything appended before the call is committed; False on timeout."""
        ...

    async def compact(self, document_id: UUID, *, snapshot: bool = False) -> CompactionResult | None:
        """Merge the committed updates into the stored state; a version when asked or due."""
        ...

    async def pending_documents(self) -> list[UUID]:
        """Documents with updates not yet compacted (after a crash)."""
        ...
