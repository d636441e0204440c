"""Documents of a workspace: list, create, read metadata, rename/update, soft delete, search.

Every query runs as the caller under row-level security; the role checks on top say what a
member may do. Deleting is a tombstone (`deleted`), which the documents trigger reports to the
changes feed as a `delete`, so desktop copies learn about it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from . import live
from .access import MANAGE, WRITE, authorize_document, authorize_workspace, context, user_transaction
from .errors import ApiError
from .openapi import Endpoint
from .payload import Field, JSONOut, Param, Schema, limit_param, read_json

DOCUMENT_TYPES = ("markdown", "mindmap", "presentation", "mixed")
COLUMNS = """
    d.id, d.workspace_id, d.title, d.type::text AS type, d.metadata, d.settings, d.content_hash, d.yjs_clock,
    d.view_count, d.created_by, d.updated_by, d.created_at, d.updated_at, d.last_edited_at
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TITLE = Field("title", max_length=500, non_empty=True)
_METADATA = Field("metadata", "object", description="merged into the current object; a null value removes a key")
_SETTINGS = Field("settings", "object", description="merged into the current object; a null value removes a key")
CREATE = Schema((
    Field("title", required=True, max_length=500, non_empty=True),
    Field("type", choices=DOCUMENT_TYPES),
    Field("content", description="initial Markdown"),
    Field("metadata", "object"),
    Field("settings", "object"),
))
UPDATE = Schema((_TITLE, _METADATA, _SETTINGS), at_least_one=True)


def _page_token(row: dict[str, Any]) -> str:
    return f"{(row['updated_at'] - _EPOCH) // timedelta(microseconds=1)}_{row['id']}"


def _parse_page_token(raw: str | None) -> tuple[datetime, UUID] | None:
    if not raw:
        return None
    try:
        micros, _, ident = raw.partition("_")
        return _EPOCH + timedelta(microseconds=int(micros)), UUID(ident)
    except (ValueError, OverflowError):
        raise ApiError(400, "cursor is not a position from this listing", "bad_cursor") from None


_TYPE = Param("type", description="only documents of this type", choices=DOCUMENT_TYPES)
_LIST_LIMIT = limit_param(50, 200)
_CURSOR = Param("cursor", description="next_cursor of the previous page",
                schema_extra={"pattern": r"^\d{1,20}_[0-9a-fA-F-]{32,36}$"})


async def list_documents(request: Request) -> Response:
    """Newest (most recently updated) first, keyset-paged."""
    access = await authorize_workspace(request)
    doc_type, limit = _TYPE.read(request), _LIST_LIMIT.read(request)
    after = _parse_page_token(_CURSOR.read(request))
    async with user_transaction(context(request), access.user_id) as conn:
        rows = await conn.fetch(
            f"""
            SELECT {COLUMNS} FROM documents d
            WHERE d.workspace_id = $1 AND NOT d.deleted
              AND ($2::text IS NULL OR d.type = $2::document_type)
              AND ($3::timestamptz IS NULL OR (d.updated_at, d.id) < ($3, $4))
            ORDER BY d.updated_at DESC, d.id DESC
            LIMIT $5
            """,
            access.workspace_id, doc_type, after[0] if after else None, after[1] if after else None, limit + 1,
        )
    page = [dict(r) for r in rows[:limit]]
    return JSONOut({"documents": page, "next_cursor": _page_token(page[-1]) if len(rows) > limit else None})


async def create_document(request: Request) -> Response:
    access = await authorize_workspace(request, WRITE)
    body = await read_json(request, CREATE)
    content = body.pop("content", "") or ""
    body.setdefault("type", "markdown")
    ctx = context(request)
    editor_mode = (body.get("settings") or {}).get("editor_mode")
    state, content = await ctx.offloop.run(live.initial_document, content, body["type"], editor_mode,
                                           ctx.store.fields)
    # Only the columns given, so the others keep their schema defaults (metadata, settings).
    values: dict[str, Any] = {**body, "content": content, "yjs_state": state, "workspace_id": access.workspace_id,
                              "created_by": access.user_id, "updated_by": access.user_id}
    names = list(values)
    placeholders = [f"${i}::document_type" if n == "type" else f"${i}" for i, n in enumerate(names, 1)]
    async with user_transaction(ctx, access.user_id, request) as conn:
        row = await conn.fetchrow(
            f"INSERT INTO documents AS d ({', '.join(names)}) VALUES ({', '.join(placeholders)}) RETURNING {COLUMNS}",
            *values.values(),
        )
    return JSONOut(dict(row), status_code=201, headers={"Location": f"/api/documents/{row['id']}"})


async def get_document(request: Request) -> Response:
    access = await authorize_document(request)
    async with user_transaction(context(request), access.user_id) as conn:
        row = await conn.fetchrow(
            f"""
            SELECT {COLUMNS},
                   (SELECT count(*) FROM comments c WHERE c.document_id = d.id AND c.deleted_at IS NULL)
                       AS comment_count,
                   (SELECT count(*) FROM document_versions v WHERE v.document_id = d.id) AS version_count
            FROM documents d WHERE d.id = $1 AND NOT d.deleted
            """,
            access.document_id,
        )
    if row is None:
        raise ApiError(404, "document not found")
    return JSONOut({**dict(row), "role": access.role})


def _merge_patch(value: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """A JSON merge patch of one level: (keys to set, keys to remove)."""
    if value is None:
        return None, []
    return {k: v for k, v in value.items() if v is not None}, [k for k, v in value.items() if v is None]


async def update_document(request: Request) -> Response:
    """Rename and/or merge metadata and settings."""
    access = await authorize_document(request, need=WRITE)
    body = await read_json(request, UPDATE)
    metadata, metadata_drop = _merge_patch(body.get("metadata"))
    settings, settings_drop = _merge_patch(body.get("settings"))
    async with user_transaction(context(request), access.user_id, request) as conn:
        row = await conn.fetchrow(
            f"""
            UPDATE documents d
            SET title = coalesce($2, d.title),
                metadata = CASE WHEN $3::jsonb IS NULL THEN d.metadata
                                ELSE (coalesce(d.metadata, '{{}}'::jsonb) - $4::text[]) || $3::jsonb END,
                settings = CASE WHEN $5::jsonb IS NULL THEN d.settings
                                ELSE (coalesce(d.settings, '{{}}'::jsonb) - $6::text[]) || $5::jsonb END,
                updated_by = $7
            WHERE d.id = $1 AND NOT d.deleted
            RETURNING {COLUMNS}
            """,
            access.document_id, body.get("title"), metadata, metadata_drop, settings, settings_drop, access.user_id,
        )
    if row is None:
        raise ApiError(404, "document not found")
    return JSONOut(dict(row))


async def delete_document(request: Request) -> Response:
    """Soft delete. Owners and admins may delete any document; editors their own, or any when
    their membership grants `can_delete_documents`."""
    access = await authorize_document(request, need=WRITE)
    async with user_transaction(context(request), access.user_id, request) as conn:
        row = await conn.fetchrow(
            """
            UPDATE documents d SET deleted = true, deleted_at = now(), deleted_by = $2
            WHERE d.id = $1 AND NOT d.deleted
              AND ($3 OR d.created_by = $2 OR EXISTS (
                  SELECT 1 FROM workspace_members m
                  WHERE m.workspace_id = d.workspace_id AND m.user_id = $2
                    AND (m.permissions ->> 'can_delete_documents')::boolean))
            RETURNING d.id, d.deleted_at
            """,
            access.document_id, access.user_id, access.role in MANAGE,
        )
    if row is None:
        raise ApiError(403, "your role may not delete this document")
    return JSONOut({"id": row["id"], "deleted": True, "deleted_at": row["deleted_at"]})


_Q = Param("q", description="words (full-text over title, content and tags) or part of a title (trigram)",
           required=True, schema_extra={"minLength": 1, "maxLength": 200, "pattern": r"\S"})
_SEARCH_LIMIT = limit_param(20, 100)
_OFFSET = Param("offset", "integer", "skip this many results", 0, 0, 10_000)


async def search_documents(request: Request) -> Response:
    """The seed's full-text `search_documents`, plus trigram matching on titles (typos, prefixes)."""
    access = await authorize_workspace(request)
    raw = _Q.read(request)
    query = raw.strip()
    if not query or len(raw) > 200:
        raise ApiError(400, "q must be 1 to 200 characters")
    limit, offset = _SEARCH_LIMIT.read(request), _OFFSET.read(request)
    async with user_transaction(context(request), access.user_id) as conn:
        rows = await conn.fetch(
            """
            WITH fts AS (
                SELECT f.id, f.rank FROM search_documents($1, $2, $3::int + $4::int, 0) f
            ), titles AS (
                SELECT d.id, greatest(similarity(d.title, $2), word_similarity($2, d.title)) AS similarity
                FROM documents d
                WHERE d.workspace_id = $1 AND NOT d.deleted AND ($2 <% d.title OR d.title % $2)
                ORDER BY 2 DESC LIMIT $3::int + $4::int
            )
            SELECT d.id, d.title, d.type::text AS type, d.updated_at, left(d.content, 200) AS snippet,
                   coalesce(f.rank, 0) AS rank, coalesce(t.similarity, 0) AS title_similarity
            FROM documents d
            LEFT JOIN fts f ON f.id = d.id
            LEFT JOIN titles t ON t.id = d.id
            WHERE f.id IS NOT NULL OR t.id IS NOT NULL
            ORDER BY coalesce(f.rank, 0) + coalesce(t.similarity, 0) DESC, d.updated_at DESC, d.id
            LIMIT $3 OFFSET $4
            """,
            access.workspace_id, query, limit, offset,
        )
    return JSONOut({"results": [dict(r) for r in rows]})


_WS = "/api/workspaces/{workspace_id}"
_DOC = "/api/documents/{document_id}"
endpoints = [
    Endpoint("GET", f"{_WS}/documents", list_documents, "List documents, newest first", "documents",
             query=(_TYPE, _LIST_LIMIT, _CURSOR)),
    Endpoint("POST", f"{_WS}/documents", create_document, "Create a document", "documents", body=CREATE,
             success=201, errors=(403,)),
    Endpoint("GET", f"{_WS}/search", search_documents, "Search documents", "documents",
             query=(_Q, _SEARCH_LIMIT, _OFFSET)),
    Endpoint("GET", _DOC, get_document, "Document metadata", "documents"),
    Endpoint("PATCH", _DOC, update_document, "Rename, update metadata or settings", "documents", body=UPDATE,
             errors=(403,)),
    Endpoint("DELETE", _DOC, delete_document, "Soft delete (a tombstone in the changes feed)", "documents",
             errors=(403,)),
]
