"""A document's current state for HTTP work, and the pycrdt edits the API makes.

Reads never load a room: a document open on this process is read from its live Doc (exact,
including edits not yet compacted); otherwise from PostgreSQL, yjs_state merged with the
write-ahead rows, which every process commits within milliseconds. Writes go through
`hub.use_room`, i.e. the same path as a WebSocket update.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pycrdt import Doc, TransactionEvent

from collab_server.content import copy_content, read_markdown, write_markdown
from collab_server.content.model import RICH_TEXT_FIELDS
from collab_server.content.sanitize import storable_text
from collab_server.core.connection import ClientInfo
from collab_server.core.hub import RoomUnavailable
from collab_server.core.protocol import CloseCode, ProtocolError

from .access import DocumentAccess, device_header
from .errors import ApiError

if TYPE_CHECKING:
    from starlette.requests import Request

    from collab_server.context import AppContext

EMPTY_UPDATE = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class State:
    update: bytes  # the whole document as one Yjs update
    doc_type: str

    @property
    def etag(self) -> str:
        return f'"{hashlib.sha256(self.update).hexdigest()[:40]}"'


async def current_state(ctx: AppContext, document_id: UUID) -> State:
    room = ctx.hub.get(document_id)
    if room is not None:
        return State(room.whole_update(), room.type)
    loaded = await ctx.store.load(document_id)
    if loaded is None:
        raise ApiError(404, "document not found")
    return State(loaded.state or EMPTY_UPDATE, loaded.type)


async def editor_mode(ctx: AppContext, access: DocumentAccess) -> str | None:
    """settings.editor_mode: which structure a document without content gets."""
    value = await ctx.pool.fetchval(
        "SELECT settings->>'editor_mode' FROM documents WHERE id = $1", access.document_id
    )
    return str(value) if value is not None else None


def _doc(update: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return doc


def state_vector(update: bytes) -> bytes:
    return _doc(update).get_state()


def cut(update: bytes, peer_vector: bytes | None) -> tuple[bytes, bytes]:
    """(state vector, what a peer at `peer_vector` lacks, or the whole state) from one decode.
    ValueError for a peer vector that does not decode."""
    if peer_vector is None:
        return state_vector(update), update
    doc = _doc(update)
    return doc.get_state(), doc.get_update(peer_vector)


def initial_document(content: str, doc_type: str, editor_mode: str | None,
                     fields: Sequence[str] = RICH_TEXT_FIELDS) -> tuple[bytes, str]:
    """A new document's state holding `content` (Markdown) in the structure its editor uses, and
    that content as the server reads it back (normalised for a rich-text document)."""
    doc: Doc[Any] = Doc()
    if content and doc_type != "mindmap":
        with doc.transaction():
            write_markdown(doc, content, doc_type, editor_mode=editor_mode, fields=fields)
    return doc.get_update(), storable_text(read_markdown(doc, doc_type, fields)) if content else ""


def if_none_match(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def actor(request: Request, access: DocumentAccess) -> ClientInfo:
    """Who an HTTP write comes from, for the write-ahead rows (and so the changes feed)."""
    return ClientInfo(
        user_id=access.user_id, role=access.role, device_type="desktop",
        device_name=device_header(request, "x-device-name", 255),
        client_version=device_header(request, "x-client-version", 50),
        address=request.client.host if request.client else None,
    )


# A refused update's close code as an HTTP status (any other refusal: 400).
_REFUSAL_STATUS: dict[int, int] = {CloseCode.DOCUMENT_TOO_LARGE: 413, CloseCode.MISSING_DEPENDENCIES: 409}


async def apply(ctx: AppContext, access: DocumentAccess, update: bytes, who: ClientInfo) -> bytes:
    """Apply an update as a WebSocket update would be (relayed, written ahead), wait until it is
    durable, and return the new state vector. 400 invalid update, 503 when it cannot be stored."""
    if ctx.hub.closing:
        raise ApiError(503, "server is shutting down", headers={"Retry-After": "2"})
    if not ctx.wal.has_room_for(len(update)):
        raise ApiError(503, "storage backlog full: edits are paused, retry later", headers={"Retry-After": "5"})
    try:
        async with ctx.hub.use_room(access.document_id) as room:
            try:
                room.apply_update(update, None, actor=who)
            except ProtocolError as exc:
                raise ApiError(_REFUSAL_STATUS.get(exc.code, 400), exc.reason) from None
            vector = room.state_vector()
    except RoomUnavailable as exc:
        if exc.code == CloseCode.NOT_FOUND:
            raise ApiError(404, "document not found") from None
        raise ApiError(503, exc.reason, headers={"Retry-After": "2"}) from None
    # The room relays and writes ahead what a loop turn applied at the end of that turn (one
    # call_soon, queued before this task resumes): yield once so the update is appended before
    # the flush below picks its target. CRDT updates are idempotent, so a client that sees the
    # 503 may simply send the same update again.
    await asyncio.sleep(0)
    if not await ctx.wal.flush(10.0):
        raise ApiError(503, "applied, but not yet written to the database; retry", headers={"Retry-After": "2"})
    # An HTTP writer is a desktop client or a script, and the next one to sync must see this edit in the
    # feed at once, not at the next live-entry interval.
    await ctx.wal.announce(access.document_id)
    return vector


# -- edits that start from content: restore, Markdown writes ----------------------------------


def _captured(current: bytes, edit: Callable[[Doc[Any]], None]) -> bytes:
    """The one Yjs update `edit` makes to a copy of `current` (built off the event loop); it
    merges with whatever else happened meanwhile like any edit."""
    doc = _doc(current)
    captured: list[bytes] = []

    def capture(event: TransactionEvent) -> None:
        captured.append(event.update)

    subscription = doc.observe(capture)
    try:
        with doc.transaction():
            edit(doc)
    finally:
        doc.unobserve(subscription)
    return captured[0] if captured else EMPTY_UPDATE


def restore_update(current: bytes, content: str, version_state: bytes | None, doc_type: str,
                   fields: Sequence[str] = RICH_TEXT_FIELDS) -> bytes:
    """The update that gives the live document the version's content: copied structure for
    structure (every attribute and mark) from the version's state, or from its Markdown for a
    version stored without one."""
    if version_state:
        return _captured(current, lambda doc: copy_content(doc, _doc(version_state), doc_type, fields))
    return markdown_update(current, content, doc_type, None, fields)


def markdown_update(current: bytes, source: str, doc_type: str, editor_mode: str | None,
                    fields: Sequence[str] = RICH_TEXT_FIELDS) -> bytes:
    """The minimal update that makes the document's content read as `source`."""
    return _captured(current, lambda doc: write_markdown(doc, source, doc_type, editor_mode=editor_mode,
                                                         fields=fields))
