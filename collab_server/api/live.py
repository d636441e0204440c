"""A document's current state for HTTP work, and the pycrdt edits the API makes.

Reads never load a room: a document open on this process is read from its live Doc (exact,
including edits not yet compacted); otherwise from PostgreSQL, yjs_state merged with the
write-ahead rows, which every process commits within milliseconds. Writes go through
`hub.use_room`, i.e. the same path as a WebSocket update.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING
from uuid import UUID

from pycrdt import Array, Doc, Map, Text, TransactionEvent

from .. import ydoc
from ..connection import ClientInfo
from ..hub import RoomUnavailable
from ..protocol import CloseCode, ProtocolError
from .access import DocumentAccess, device_header
from .errors import ApiError

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..app import AppContext

CHAR_DIFF_LIMIT = 4_000_000  # len(a) * len(b) above which a changed block is replaced whole
EMPTY_UPDATE = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class State:
    update: bytes  # the whole document as one Yjs update
    doc_type: str

    @property
    def etag(self) -> str:
        return f'"{hashlib.sha256(self.update).hexdigest()[:40]}"'


async def current_state(ctx: AppContext, document_id: UUID) -> State:
    room = ctx.hub.rooms.get(document_id)
    if room is not None:
        return State(room.doc.get_update(), room.type)
    loaded = await ctx.store.load(document_id)
    if loaded is None:
        raise ApiError(404, "document not found")
    return State(loaded.state or EMPTY_UPDATE, loaded.type)


def _doc(update: bytes) -> Doc:
    doc = Doc()
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


def text_of(update: bytes) -> str:
    return ydoc.read_text(_doc(update))


def initial_state(content: str) -> bytes:
    doc = Doc()
    if content:
        doc.get(ydoc.CONTENT_KEY, type=Text).insert(0, content)
    return doc.get_update()


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
                raise ApiError(400, exc.reason) from None
            vector = room.doc.get_state()
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
    return vector


# -- restoring a version: edits that turn the live document into the version's content ------


def text_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) in character offsets of `old`, ascending: a line diff, refined
    to characters inside changed blocks that are small enough, so concurrent edits elsewhere in
    the text survive a restore instead of being overwritten by one big replacement."""
    a_lines, b_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    offsets = [0, *itertools.accumulate(len(line) for line in a_lines)]
    edits: list[tuple[int, int, str]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a_lines, b_lines, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        start, end, replacement = offsets[i1], offsets[i2], "".join(b_lines[j1:j2])
        segment = old[start:end]
        if tag == "replace" and len(segment) * len(replacement) <= CHAR_DIFF_LIMIT:
            matcher = SequenceMatcher(None, segment, replacement, autojunk=False)
            edits += [(start + k1, start + k2, replacement[l1:l2])
                      for op, k1, k2, l1, l2 in matcher.get_opcodes() if op != "equal"]
        else:
            edits.append((start, end, replacement))
    return edits


def _rewrite_text(text: Text, new: str) -> None:
    old = str(text)
    # pycrdt indexes Y.Text by UTF-8 byte offset.
    byte_at = [0, *itertools.accumulate(len(ch.encode()) for ch in old)]
    for start, end, replacement in reversed(text_edits(old, new)):
        if end > start:
            del text[byte_at[start]:byte_at[end]]
        if replacement:
            text.insert(byte_at[start], replacement)


def _replace_mindmap(doc: Doc, version: Doc) -> None:
    for key in (ydoc.MINDMAP_NODES, ydoc.MINDMAP_EDGES):
        target, source = doc.get(key, type=Array), version.get(key, type=Array).to_py() or []
        if target.to_py() != source:
            target.clear()
            target.extend(source)
    layout, source_layout = doc.get(ydoc.MINDMAP_LAYOUT, type=Map), version.get(ydoc.MINDMAP_LAYOUT, type=Map).to_py()
    if layout.to_py() != (source_layout or {}):
        layout.clear()
        layout.update(source_layout or {})


def restore_update(current: bytes, content: str, version_state: bytes | None, mindmap: bool) -> bytes:
    """One Yjs update that, applied to `current`, gives the version's content. Built on a copy
    (off the event loop); it merges with whatever else happened meanwhile like any edit."""
    doc = _doc(current)
    captured: list[bytes] = []

    def capture(event: TransactionEvent) -> None:
        captured.append(event.update)

    subscription = doc.observe(capture)
    try:
        with doc.transaction():
            _rewrite_text(doc.get(ydoc.CONTENT_KEY, type=Text), content)
            if mindmap and version_state:
                _replace_mindmap(doc, _doc(version_state))
    finally:
        doc.unobserve(subscription)
    return captured[0] if captured else EMPTY_UPDATE

