"""Who is calling and what their workspace role lets them do; user-scoped transactions under RLS.

Same tokens and roles as the WebSocket. An outsider gets the same 404 for a document or
workspace that exists as for one that does not; a member whose role is too weak gets 403.
Open mode (COLLAB_AUTH=off) acts as the local user, owner of the local workspace, and accepts
room names as document ids, so the same queries and row-level security apply in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg
from starlette.requests import Request

from collab_server.access.auth import AuthError, as_user, token_from
from collab_server.storage.postgres import LOCAL_USER_ID, open_document_id

from .errors import ApiError

if TYPE_CHECKING:
    from collab_server.context import AppContext

READ = frozenset({"owner", "admin", "editor", "commenter", "viewer"})
COMMENT = frozenset({"owner", "admin", "editor", "commenter"})
WRITE = frozenset({"owner", "admin", "editor"})
MANAGE = frozenset({"owner", "admin"})
_REFUSAL = {COMMENT: "your role may not comment here", WRITE: "your role may not edit this document",
            MANAGE: "only owners and admins may do this"}


@dataclass(frozen=True, slots=True)
class DocumentAccess:
    document_id: UUID
    workspace_id: UUID | None
    user_id: UUID
    role: str


@dataclass(frozen=True, slots=True)
class WorkspaceAccess:
    workspace_id: UUID
    user_id: UUID
    role: str


def context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


async def caller(request: Request) -> UUID:
    """The calling user's id; 401 for a missing, invalid or expired token or an unknown user."""
    ctx = context(request)
    if ctx.settings.auth == "off":
        return LOCAL_USER_ID
    try:
        claims = await ctx.tokens.verify(token_from(request))
    except AuthError as exc:
        raise ApiError(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    user_id = await ctx.access.user_id(str(claims["sub"]))
    if user_id is None:
        raise ApiError(401, "unknown user", headers={"WWW-Authenticate": "Bearer"})
    return user_id


def _require(role: str, need: frozenset[str]) -> None:
    if role not in need:
        raise ApiError(403, _REFUSAL.get(need, "your role may not do this"))


def _uuid_or_404(raw: str, what: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise ApiError(404, f"{what} not found") from None


async def authorize_document(
    request: Request, raw_id: str | None = None, need: frozenset[str] = READ, *, lookup: bool = True
) -> DocumentAccess:
    """The caller's access to a document, or 401/403/404. `lookup=False` (open mode only) skips
    the existence check, for routes that make sense for a room nobody has opened yet."""
    ctx = context(request)
    raw = raw_id if raw_id is not None else request.path_params["document_id"]
    user_id = await caller(request)
    if ctx.settings.auth == "off":
        document_id = open_document_id(raw)
        if not lookup:
            return DocumentAccess(document_id, None, user_id, "owner")
    else:
        document_id = _uuid_or_404(raw, "document")
    access = await ctx.access.document_access(user_id, document_id, fresh=True)  # HTTP: always the current role
    if not access.allowed or access.role is None:
        raise ApiError(404, "document not found")
    _require(access.role, need)
    return DocumentAccess(document_id, access.workspace_id, user_id, access.role)


async def authorize_workspace(request: Request, need: frozenset[str] = READ) -> WorkspaceAccess:
    """The caller's role in the workspace of the path, or 401/403/404 (non-members: 404)."""
    ctx = context(request)
    workspace_id = _uuid_or_404(request.path_params["workspace_id"], "workspace")
    user_id = await caller(request)
    async with user_transaction(ctx, user_id) as conn:
        role = await conn.fetchval(
            """
            SELECT m.role::text FROM workspace_members m JOIN workspaces w ON w.id = m.workspace_id
            WHERE m.workspace_id = $1 AND m.user_id = $2 AND m.is_active AND w.deleted_at IS NULL
            """,
            workspace_id, user_id,
        )
    if role is None:
        raise ApiError(404, "workspace not found")
    _require(role, need)
    return WorkspaceAccess(workspace_id, user_id, role)


@contextlib.asynccontextmanager
async def user_transaction(
    ctx: AppContext, user_id: UUID, request: Request | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that runs as `collab_user` for `user_id`, so row-level security applies.
    With a request, its device headers label the sync_log rows the transaction writes."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        await as_user(conn, user_id)
        if request is not None:
            await conn.execute(
                "SELECT set_config('app.device_id', $1, true), set_config('app.client_version', $2, true)",
                device_header(request, "x-device-name", 255) or "",
                device_header(request, "x-client-version", 50) or "",
            )
        yield conn


def device_header(request: Request, name: str, limit: int) -> str | None:
    value = request.headers.get(name)
    return value[:limit] if value else None
