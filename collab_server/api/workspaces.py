"""The caller's workspaces: where a desktop client starts (ids for the changes feed)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .access import caller, context, user_transaction
from .errors import ApiError
from .openapi import Endpoint
from .payload import JSONOut


async def list_workspaces(request: Request) -> Response:
    user_id = await caller(request)
    async with user_transaction(context(request), user_id) as conn:
        rows = await conn.fetch(
            """
            SELECT workspace_id AS id, workspace_name AS name, role::text AS role, is_owner, document_count,
                   member_count
            FROM get_user_workspaces($1)
            """,
            user_id,
        )
    return JSONOut({"workspaces": [dict(r) for r in rows]})


async def who_am_i(request: Request) -> Response:
    """The name an editor shows beside its cursor comes from here, not from the token."""
    user_id = await caller(request)
    async with user_transaction(context(request), user_id) as conn:
        row = await conn.fetchrow("SELECT id, email, display_name FROM users WHERE id = $1", user_id)
    if row is None:
        raise ApiError(401, "unknown user", headers={"WWW-Authenticate": "Bearer"})
    return JSONOut({"user_id": row["id"], "email": row["email"], "name": row["display_name"] or row["email"]})


endpoints = [
    Endpoint("GET", "/api/workspaces", list_workspaces, "Your workspaces and roles", "workspaces"),
    Endpoint("GET", "/api/me", who_am_i, "Who the token belongs to (id, email, display name)", "workspaces"),
]
