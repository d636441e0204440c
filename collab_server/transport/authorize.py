"""Who may open which document: the checks both WebSocket dialects make before a room is joined.

The y-websocket route names its document in the path and carries its token in the upgrade request;
the Hocuspocus route names each document in its messages and sends a token for each. Both end in
`resolve`, so the two dialects can never disagree about who may read or edit what.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote
from uuid import UUID

from websockets.datastructures import Headers

from collab_server.access.auth import AuthError, token_from
from collab_server.context import AppContext
from collab_server.core.connection import ClientInfo
from collab_server.storage.postgres import LOCAL_USER_ID

log = logging.getLogger("collab.transport")

PATH_PREFIX = "/ws/"
DEVICE_TYPES = {"web", "desktop", "mobile"}


@dataclass(frozen=True, slots=True)
class Upgrade:
    """The parts of an upgrade request that authentication reads (what `token_from` expects)."""

    path: str
    headers: Headers
    query_params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    code: str
    message: str


def client_info(upgrade: Upgrade, address: str | None, user_id: UUID | None, role: str) -> ClientInfo:
    def pick(name: str, limit: int) -> str | None:
        value = upgrade.query_params.get(name) or upgrade.headers.get(f"x-{name.replace('_', '-')}")
        return value[:limit] if value else None

    device_type = (pick("device_type", 50) or "web").lower()
    return ClientInfo(
        user_id=user_id,
        role=role,
        device_type=device_type if device_type in DEVICE_TYPES else "web",
        device_name=pick("device_name", 255),
        client_version=pick("client_version", 50),
        address=address,
    )


async def authorize(ctx: AppContext, upgrade: Upgrade, address: str | None) -> tuple[UUID, ClientInfo] | Refusal:
    """Who may open which document, decided before the upgrade: a refused client never gets a socket."""
    if not ctx.address_limiter.allow(address):
        return Refusal(429, "too_many_requests", "too many connections from this address; slow down")
    return await resolve(ctx, unquote(upgrade.path[len(PATH_PREFIX):]), token_from(upgrade), upgrade, address)


async def resolve(
    ctx: AppContext, name: str, token: str | None, upgrade: Upgrade, address: str | None
) -> tuple[UUID, ClientInfo] | Refusal:
    """Which document `name` is and what the bearer of `token` may do there (both dialects). Names
    are document ids (UUIDs) in auth mode, checked first: a bad name costs no token check."""
    if ctx.settings.auth == "off":  # the load creates a missing document: no statement here
        return ctx.store.expect_open_document(name), client_info(upgrade, address, LOCAL_USER_ID, "editor")
    try:
        document_id = UUID(name)
    except ValueError:
        return Refusal(400, "bad_document_id", "unknown document: names are document ids (UUIDs)")
    try:
        claims = await ctx.tokens.verify(token)
        user_id = await ctx.access.user_id(str(claims["sub"]))
        if user_id is None:
            raise AuthError("unknown user")
    except AuthError as exc:
        return Refusal(401, "unauthorized", str(exc))
    try:
        access = await ctx.access.document_access(user_id, document_id)
    except Exception as exc:
        log.warning("access check failed: %s", exc)
        return Refusal(503, "unavailable", "the database is unavailable")
    if not access.visible or access.role is None:  # never say whether it exists
        return Refusal(403, "forbidden", "no access to this document")
    if access.gone:
        return Refusal(404, "not_found", "document was deleted")
    return document_id, client_info(upgrade, address, user_id, access.role)
