"""The caller's workspaces: where a desktop client starts (ids for the changes feed)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .access import caller, context, user_transaction
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


endpoints = [Endpoint("GET", "/api/workspaces", list_workspaces, "Your workspaces and roles", "workspaces")]
