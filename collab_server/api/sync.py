"""Binary sync without a WebSocket: full state or a diff, the state vector, pushing an update, Markdown.

A desktop client that was offline sends its state vector and gets only what it lacks, pushes
its own offline edits as one update, and is told the server's new state vector.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from collab_server.content.sanitize import storable_text
from collab_server.storage import ydoc

from . import live
from .access import WRITE, authorize_document, context
from .errors import ApiError
from .openapi import Endpoint
from .payload import (
    MARKDOWN,
    OCTET_STREAM,
    JSONOut,
    Param,
    decode_base64,
    encode_base64,
    query_param,
    read_body,
    require_media_type,
)

if TYPE_CHECKING:
    from collab_server.context import AppContext

SV_HEADER = "X-Yjs-State-Vector"  # base64 state vector of the state a response was cut from
_NO_CACHE = {"Cache-Control": "private, no-cache"}


def _not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, **_NO_CACHE})


async def _ensure_open_document(ctx: AppContext, request: Request) -> None:
    """Open mode: the path names a room, created on first write as over the WebSocket."""
    if ctx.settings.auth == "off":
        await ctx.store.ensure_open_document(request.path_params["document_id"])


async def get_state(request: Request) -> Response:
    """The whole document, or with `sv` only what a peer at that state vector lacks. The ETag
    hashes the full state, so `If-None-Match` answers 304 whenever nothing changed (the same
    state encoded differently, e.g. after the room unloads, only costs one full reply)."""
    access = await authorize_document(request)
    sv_param = query_param(request, "sv")
    peer_vector = decode_base64(sv_param, "sv") if sv_param is not None else None
    state = await live.current_state(context(request), access.document_id)
    if live.if_none_match(request, state.etag):
        return _not_modified(state.etag)
    try:
        vector, body = await asyncio.to_thread(live.cut, state.update, peer_vector)
    except ValueError:
        raise ApiError(400, "sv is not a valid Yjs state vector") from None
    headers = {"ETag": state.etag, SV_HEADER: encode_base64(vector), **_NO_CACHE}
    return Response(body, media_type=OCTET_STREAM, headers=headers)


async def get_state_vector(request: Request) -> Response:
    access = await authorize_document(request)
    state = await live.current_state(context(request), access.document_id)
    vector = await asyncio.to_thread(live.state_vector, state.update)
    return Response(vector, media_type=OCTET_STREAM, headers=_NO_CACHE)


async def post_update(request: Request) -> Response:
    """Apply a Yjs update through the room, exactly like one arriving on a WebSocket."""
    ctx = context(request)
    access = await authorize_document(request, need=WRITE, lookup=False)
    require_media_type(request, OCTET_STREAM)
    update = await read_body(request, ctx.settings.max_message_bytes)
    if not update:
        raise ApiError(400, "the body must be a Yjs update")
    await _ensure_open_document(ctx, request)
    vector = await live.apply(ctx, access, update, live.actor(request, access))
    encoded = encode_base64(vector)
    return JSONOut({"document_id": access.document_id, "state_vector": encoded}, headers={SV_HEADER: encoded})


async def get_content(request: Request) -> Response:
    """The document as Markdown (see the README's content model), from the same live state as /state."""
    ctx = context(request)
    access = await authorize_document(request)
    state = await live.current_state(ctx, access.document_id)
    text = await ctx.offloop.run(ydoc.markdown_of, state.update, state.doc_type, ctx.store.fields)
    etag = f'"{hashlib.sha256(text.encode()).hexdigest()}"'  # = documents.content_hash once compacted
    if live.if_none_match(request, etag):
        return _not_modified(etag)
    return Response(text, media_type="text/markdown; charset=utf-8", headers={"ETag": etag, **_NO_CACHE})


async def put_content(request: Request) -> Response:
    """Replace the content with Markdown as a minimal edit through the room: connected editors
    converge, and keep their cursors wherever the text did not change."""
    ctx = context(request)
    access = await authorize_document(request, need=WRITE, lookup=False)
    require_media_type(request, MARKDOWN)
    raw = await read_body(request, ctx.settings.max_message_bytes)
    try:
        source = storable_text(raw.decode())
    except UnicodeDecodeError:
        raise ApiError(400, "the body must be UTF-8 text") from None
    await _ensure_open_document(ctx, request)
    state = await live.current_state(ctx, access.document_id)
    if state.doc_type == "mindmap":
        raise ApiError(409, "a mind map's content is its nodes and edges; edit those, not Markdown")
    editor_mode = await live.editor_mode(ctx, access)
    update = await ctx.offloop.run(
        live.markdown_update, state.update, source, state.doc_type, editor_mode, ctx.store.fields
    )
    vector = await live.apply(ctx, access, update, live.actor(request, access))
    encoded = encode_base64(vector)
    return JSONOut({"document_id": access.document_id, "state_vector": encoded}, headers={SV_HEADER: encoded})


_DOC = "/api/documents/{document_id}"
_SV = Param("sv", description="base64 state vector: reply with only what a peer at this state lacks",
            schema_extra={"contentEncoding": "base64"})
endpoints = [
    Endpoint("GET", f"{_DOC}/state", get_state, "Full state or diff as a Yjs update (ETag, 304)", "sync",
             query=(_SV,), produces="binary", errors=(304,)),
    Endpoint("GET", f"{_DOC}/state-vector", get_state_vector, "The Yjs state vector", "sync", produces="binary"),
    Endpoint("POST", f"{_DOC}/updates", post_update, "Apply a Yjs update (relayed, written ahead)", "sync",
             body="binary", errors=(403, 413)),
    Endpoint("GET", f"{_DOC}/content", get_content, "The document as Markdown", "sync", produces="markdown",
             errors=(304,)),
    Endpoint("PUT", f"{_DOC}/content", put_content, "Replace the content with Markdown (a minimal edit)", "sync",
             body="markdown", errors=(403, 409, 413, 415)),
]
