"""Threaded, inline comments (the seed's `comments`): list threads, create, reply, edit, resolve,
reopen, soft delete. Commenters may do all of this without being allowed to edit the document.

Threads are resolved and reopened as a whole (on the root). An edit keeps the previous text in
`edit_history`. A deleted comment disappears; a deleted root with live replies stays as a
tombstone (no content) so the replies keep their context.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from .access import COMMENT, MANAGE, DocumentAccess, authorize_document, context, user_transaction
from .errors import ApiError
from .openapi import Endpoint
from .payload import Field, JSONOut, Param, Schema, read_json

COLUMNS = """
    c.id, c.document_id, c.parent_id, c.thread_id, c.depth, c.author_id, c.content, c.position, c.anchor_text,
    c.mentions, c.resolved, c.resolved_by, c.resolved_at, c.reactions, c.edited, c.edit_history,
    c.created_at, c.updated_at, c.deleted_at
"""
_CONTENT = Field("content", required=True, max_length=10_000, non_empty=True)
_MENTIONS = Field("mentions", "uuid_list", description="ids of mentioned users")
CREATE = Schema((
    _CONTENT,
    Field("position", "object", description='where in the document, e.g. {"from": 100, "to": 150}'),
    Field("anchor_text", max_length=10_000, description="the text the comment refers to"),
    _MENTIONS,
))
REPLY = Schema((_CONTENT, _MENTIONS))
EDIT = Schema((_CONTENT,))


def _comment_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["comment_id"])
    except ValueError:
        raise ApiError(404, "comment not found") from None


async def _comment(conn: asyncpg.Connection, access: DocumentAccess, comment_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM comments c WHERE c.id = $1 AND c.document_id = $2 AND c.deleted_at IS NULL",
        comment_id, access.document_id,
    )
    if row is None:
        raise ApiError(404, "comment not found")
    return row


def _threads(rows: list[asyncpg.Record], resolved: bool | None) -> list[dict[str, Any]]:
    threads: dict[UUID, dict[str, Any]] = {}
    replies: dict[UUID, list[dict[str, Any]]] = {}
    for row in rows:  # ordered by creation
        comment = dict(row)
        if comment["depth"] == 0:
            threads[comment["id"]] = comment
        elif comment["deleted_at"] is None:
            replies.setdefault(comment["thread_id"], []).append(comment)
    out = []
    for root_id, root in threads.items():
        thread_replies = replies.get(root_id, [])
        if root["deleted_at"] is not None:
            if not thread_replies:
                continue
            root = {**root, "content": None, "anchor_text": None, "edit_history": []}
        if resolved is not None and bool(root["resolved"]) != resolved:
            continue
        out.append({**root, "replies": thread_replies})
    return out


_RESOLVED = Param("resolved", "boolean", "only resolved (true) or open (false) threads; both when absent")


async def list_comments(request: Request) -> Response:
    access = await authorize_document(request)
    resolved = _RESOLVED.read(request)
    async with user_transaction(context(request), access.user_id) as conn:
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM comments c WHERE c.document_id = $1 ORDER BY c.created_at, c.id",
            access.document_id,
        )
    return JSONOut({"threads": _threads(rows, resolved)})


async def _insert(request: Request, access: DocumentAccess, body: dict[str, Any], parent: UUID | None) -> Response:
    async with user_transaction(context(request), access.user_id) as conn:
        if parent is not None:
            await _comment(conn, access, parent)
        row = await conn.fetchrow(
            f"""
            INSERT INTO comments AS c (document_id, parent_id, author_id, content, position, anchor_text, mentions)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}
            """,
            access.document_id, parent, access.user_id, body["content"], body.get("position"),
            body.get("anchor_text"), body.get("mentions"),
        )
    return JSONOut(dict(row), status_code=201)


async def create_comment(request: Request) -> Response:
    access = await authorize_document(request, need=COMMENT)
    return await _insert(request, access, await read_json(request, CREATE), None)


async def reply_comment(request: Request) -> Response:
    access = await authorize_document(request, need=COMMENT)
    parent = _comment_id(request)
    return await _insert(request, access, await read_json(request, REPLY), parent)


async def edit_comment(request: Request) -> Response:
    """Authors edit their own comments; the previous text goes to edit_history."""
    access = await authorize_document(request, need=COMMENT)
    comment_id = _comment_id(request)
    body = await read_json(request, EDIT)
    async with user_transaction(context(request), access.user_id) as conn:
        current = await _comment(conn, access, comment_id)
        if current["author_id"] != access.user_id:
            raise ApiError(403, "only the author may edit a comment")
        row = await conn.fetchrow(
            f"""
            UPDATE comments c
            SET content = $2, edited = true,
                edit_history = coalesce(c.edit_history, '[]'::jsonb)
                               || jsonb_build_array(jsonb_build_object('content', c.content, 'edited_at', now()))
            WHERE c.id = $1 RETURNING {COLUMNS}
            """,
            comment_id, body["content"],
        )
    return JSONOut(dict(row))


async def _set_resolved(request: Request, resolved: bool) -> Response:
    access = await authorize_document(request, need=COMMENT)
    comment_id = _comment_id(request)
    async with user_transaction(context(request), access.user_id) as conn:
        current = await _comment(conn, access, comment_id)
        row = await conn.fetchrow(
            f"""
            UPDATE comments c
            SET resolved = $2::boolean, resolved_by = CASE WHEN $2 THEN $3::uuid END,
                resolved_at = CASE WHEN $2 THEN now() END
            WHERE c.id = $1 RETURNING {COLUMNS}
            """,
            current["thread_id"] or current["id"], resolved, access.user_id,
        )
    return JSONOut(dict(row))


async def resolve_comment(request: Request) -> Response:
    """Resolve the thread the comment belongs to."""
    return await _set_resolved(request, True)


async def reopen_comment(request: Request) -> Response:
    return await _set_resolved(request, False)


async def delete_comment(request: Request) -> Response:
    """Soft delete, by the author or an owner/admin."""
    access = await authorize_document(request, need=COMMENT)
    comment_id = _comment_id(request)
    async with user_transaction(context(request), access.user_id) as conn:
        current = await _comment(conn, access, comment_id)
        if current["author_id"] != access.user_id and access.role not in MANAGE:
            raise ApiError(403, "only the author or an owner/admin may delete a comment")
        deleted_at = await conn.fetchval(
            "UPDATE comments SET deleted_at = now() WHERE id = $1 RETURNING deleted_at", comment_id
        )
    return JSONOut({"id": comment_id, "deleted": True, "deleted_at": deleted_at})


_BASE = "/api/documents/{document_id}/comments"
_ONE = _BASE + "/{comment_id}"
endpoints = [
    Endpoint("GET", _BASE, list_comments, "Comment threads of a document", "comments", query=(_RESOLVED,)),
    Endpoint("POST", _BASE, create_comment, "Start a thread", "comments", body=CREATE, success=201, errors=(403,)),
    Endpoint("POST", f"{_ONE}/replies", reply_comment, "Reply in a thread", "comments", body=REPLY, success=201,
             errors=(403,)),
    Endpoint("PATCH", _ONE, edit_comment, "Edit your comment (history kept)", "comments", body=EDIT,
             errors=(403,)),
    Endpoint("POST", f"{_ONE}/resolve", resolve_comment, "Resolve the thread", "comments", errors=(403,)),
    Endpoint("POST", f"{_ONE}/reopen", reopen_comment, "Reopen the thread", "comments", errors=(403,)),
    Endpoint("DELETE", _ONE, delete_comment, "Delete a comment (soft)", "comments", errors=(403,)),
]
