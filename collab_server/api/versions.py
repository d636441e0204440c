"""Versions: list, read, take a named snapshot, and restore.

A restore does not overwrite the document: it is one new Yjs update, computed as the edits
that turn the live text into the version's text, applied through the room like any other
edit. Connected editors receive it and converge; whatever they type meanwhile is merged, not
lost. The restored state is then recorded as a version of its own.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from collab_server.storage import ydoc

from . import live
from .access import WRITE, DocumentAccess, authorize_document, context, user_transaction
from .errors import ApiError
from .openapi import Endpoint
from .payload import Field, JSONOut, Param, Schema, encode_base64, limit_param, read_json

COLUMNS = """
    v.id, v.document_id, v.version_number, v.title, v.content_hash, v.change_description, v.changes_summary,
    v.created_by, v.created_at, v.size_bytes
"""
SNAPSHOT = Schema((Field("change_description", max_length=1000, description="what this version is"),))


def _number(request: Request) -> int:
    raw = request.path_params["version_number"]
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError(404, "version not found")
    return int(raw)


async def snapshot(request: Request, access: DocumentAccess, description: str | None) -> dict[str, Any]:
    """Record the live state (not the last compaction) as a new version."""
    ctx = context(request)
    state = await live.current_state(ctx, access.document_id)
    content = await ctx.offloop.run(ydoc.markdown_of, state.update, state.doc_type, ctx.store.fields)
    async with user_transaction(ctx, access.user_id) as conn:
        row = await conn.fetchrow(
            f"""
            INSERT INTO document_versions AS v
                (document_id, version_number, title, content, change_description, changes_summary,
                 metadata_snapshot, created_by, yjs_state)
            SELECT d.id, 0, d.title, $2, $3, $4, d.metadata, $5, $6 FROM documents d
            WHERE d.id = $1 AND NOT d.deleted
            RETURNING {COLUMNS}
            """,
            access.document_id, content, description, {"source": "api"}, access.user_id, state.update,
        )
        if row is not None:
            # A named version restarts the autosave interval, as compaction's own versions do.
            await conn.execute("UPDATE documents SET last_version_at = now() WHERE id = $1", access.document_id)
    if row is None:
        raise ApiError(404, "document not found")
    return dict(row)


_LIMIT = limit_param(50, 200)
_BEFORE = Param("before", "integer", "only versions numbered below this (the next page)", None, 1)


async def list_versions(request: Request) -> Response:
    access = await authorize_document(request)
    limit, before = _LIMIT.read(request), _BEFORE.read(request)
    async with user_transaction(context(request), access.user_id) as conn:
        rows = await conn.fetch(
            f"""
            SELECT {COLUMNS} FROM document_versions v
            WHERE v.document_id = $1 AND ($2::int IS NULL OR v.version_number < $2)
            ORDER BY v.version_number DESC LIMIT $3
            """,
            access.document_id, before, limit + 1,
        )
    page = [dict(r) for r in rows[:limit]]
    return JSONOut({"versions": page, "next_before": page[-1]["version_number"] if len(rows) > limit else None})


async def _version(conn: asyncpg.Connection, access: DocumentAccess, number: int, extra: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS}, {extra} FROM document_versions v WHERE v.document_id = $1 AND v.version_number = $2",
        access.document_id, number,
    )
    if row is None:
        raise ApiError(404, "version not found")
    return row


async def get_version(request: Request) -> Response:
    access = await authorize_document(request)
    number = _number(request)
    async with user_transaction(context(request), access.user_id) as conn:
        row = await _version(conn, access, number, "v.content, v.metadata_snapshot")
    return JSONOut(dict(row))


async def create_version(request: Request) -> Response:
    access = await authorize_document(request, need=WRITE)
    body = await read_json(request, SNAPSHOT, optional=True)
    version = await snapshot(request, access, body.get("change_description") or "snapshot")
    location = f"/api/documents/{access.document_id}/versions/{version['version_number']}"
    return JSONOut(version, status_code=201, headers={"Location": location})


async def restore_version(request: Request) -> Response:
    ctx = context(request)
    access = await authorize_document(request, need=WRITE)
    number = _number(request)
    async with user_transaction(ctx, access.user_id) as conn:
        old = await _version(conn, access, number, "v.content, v.yjs_state")
    state = await live.current_state(ctx, access.document_id)
    update = await ctx.offloop.run(
        live.restore_update, state.update, old["content"], old["yjs_state"], state.doc_type, ctx.store.fields
    )
    vector = await live.apply(ctx, access, update, live.actor(request, access))
    version = await snapshot(request, access, f"restored version {number}")
    return JSONOut({"restored_from": number, "version": version, "state_vector": encode_base64(vector)})


_DOC = "/api/documents/{document_id}"
endpoints = [
    Endpoint("GET", f"{_DOC}/versions", list_versions, "List versions, newest first", "versions",
             query=(_LIMIT, _BEFORE)),
    Endpoint("POST", f"{_DOC}/versions", create_version, "Take a named snapshot of the live document", "versions",
             body=SNAPSHOT, body_optional=True, success=201, errors=(403,)),
    Endpoint("GET", f"{_DOC}/versions/{{version_number}}", get_version, "A version with its content", "versions"),
    Endpoint("POST", f"{_DOC}/versions/{{version_number}}/restore", restore_version,
             "Restore a version as a new edit that live editors converge on", "versions", errors=(403,)),
]
