"""The WebSocket route: authenticate before any byte, then pump frames into the room.

Refusals happen before the upgrade (HTTP 401/403 with a JSON body) so a client without
access never receives a byte of content. After that the loop is: receive a frame, decode
it once, hand it to the room; any malformed frame closes only this connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any
from uuid import UUID

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import AuthError, token_from
from .connection import ClientInfo, Connection
from .hub import RoomUnavailable
from .metrics import METRICS
from .protocol import CloseCode, Kind, ProtocolError, decode
from .ratelimit import TokenBucket
from .room import Room
from .store import LOCAL_USER_ID

if TYPE_CHECKING:
    from .app import AppContext

log = logging.getLogger("collab.transport")

DEVICE_TYPES = {"web", "desktop", "mobile"}


def client_info(ws: WebSocket, user_id: UUID | None, role: str) -> ClientInfo:
    def pick(name: str, limit: int) -> str | None:
        value = ws.query_params.get(name) or ws.headers.get(f"x-{name.replace('_', '-')}")
        return value[:limit] if value else None

    device_type = (pick("device_type", 50) or "web").lower()
    return ClientInfo(
        user_id=user_id,
        role=role,
        device_type=device_type if device_type in DEVICE_TYPES else "web",
        device_name=pick("device_name", 255),
        client_version=pick("client_version", 50),
        address=ws.client.host if ws.client else None,
    )


def find_protocol(send: Any) -> Any:
    """uvicorn's protocol object behind an ASGI send callable (reached through Starlette's
    wrappers). ASGI offers no way to abort a connection (a graceful close never completes
    while the peer keeps its receive window shut) nor to write without a task switch."""
    stack, seen = [send], set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        owner = getattr(fn, "__self__", None)
        if hasattr(getattr(owner, "transport", None), "abort"):
            return owner
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):
                if callable(cell.cell_contents):
                    stack.append(cell.cell_contents)
    return None


async def _deny(ws: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the upgrade with an HTTP response, or a close code where the server can't."""
    body = {"error": {"code": code, "message": message}}
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=status))
    except RuntimeError:
        await ws.accept()
        await ws.close(4000 + status, message[:120])


async def websocket_endpoint(ws: WebSocket) -> None:
    ctx: AppContext = ws.app.state.ctx
    settings = ctx.settings
    name = ws.path_params["document_id"]
    if not ctx.address_limiter.allow(ws.client.host if ws.client else None):
        await _deny(ws, 429, "too_many_requests", "too many connections from this address; slow down")
        return

    if settings.auth == "off":
        try:
            document_id = await ctx.store.ensure_open_document(name)
        except Exception as exc:
            log.warning("open-mode document %r could not be created: %s", name, exc)
            await _deny(ws, 503, "unavailable", "the database is unavailable")
            return
        info = client_info(ws, LOCAL_USER_ID, "editor")
    else:
        try:
            document_id = UUID(name)
        except ValueError:
            await ws.accept()
            await ws.close(CloseCode.BAD_REQUEST, "document id must be a UUID")
            return
        try:
            claims = await ctx.tokens.verify(token_from(ws))
            user_id = await ctx.access.user_id(str(claims["sub"]))
            if user_id is None:
                raise AuthError("unknown user")
        except AuthError as exc:
            await _deny(ws, 401, "unauthorized", str(exc))
            return
        access = await ctx.access.document_access(user_id, document_id)
        if not access.visible or access.role is None:  # never say whether it exists
            await _deny(ws, 403, "forbidden", "no access to this document")
            return
        if access.gone:
            await _deny(ws, 404, "not_found", "document was deleted")
            return
        info = client_info(ws, user_id, access.role)

    await ws.accept()
    conn = Connection(
        uuid.uuid4().hex, info, settings.send_queue_bytes, ws.send_bytes, ws.close, find_protocol(ws._send)
    )
    if settings.rate_messages_per_second > 0:
        rate = settings.rate_messages_per_second
        conn.bucket = TokenBucket(rate, rate * 2)
    try:
        room = await ctx.hub.join(document_id, conn)
    except RoomUnavailable as exc:
        await ws.close(exc.code, exc.reason)
        return
    METRICS.inc("collab_connections_opened_total")
    ctx.on_connect(room, conn)
    try:
        await _pump(ws, room, conn, settings.max_awareness_bytes)
    finally:
        ctx.hub.leave(room, conn)
        ctx.on_disconnect(room, conn)
        await conn.finish()
        code = conn.close_code or 1000
        METRICS.inc_label("collab_connections_closed_total", "code", str(code))
        log.info(
            "connection closed",
            extra={
                "event": "close", "conn": conn.id, "document": str(room.id), "code": code,
                "reason": conn.close_reason, "bytes_in": conn.bytes_in, "bytes_out": conn.bytes_out,
                "messages_in": conn.messages_in,
                "seconds": round(time.monotonic() - conn.opened_at, 3),
                "user": str(conn.info.user_id) if conn.info.user_id else None,
            },
        )


async def _pump(ws: WebSocket, room: Room, conn: Connection, max_awareness: int) -> None:
    counters = METRICS.counters
    task = asyncio.current_task()
    conn.reader = task
    while not conn.closing:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        except asyncio.CancelledError:
            if conn.closing and task is not None:  # woken by conn.close(), not by shutdown
                task.uncancel()
                return
            raise
        if conn.closing:
            return
        if message["type"] == "websocket.disconnect":
            conn.close_code = conn.close_code or int(message.get("code", 1005))
            if conn.close_code == CloseCode.MESSAGE_TOO_BIG:  # refused by the WebSocket layer
                METRICS.inc_label("collab_rejected_frames_total", "reason", "frame over the size limit")
            conn.closing = True
            return
        data = message.get("bytes")
        if data is None:
            METRICS.inc_label("collab_rejected_frames_total", "reason", "text frame")
            conn.close(CloseCode.UNSUPPORTED_DATA, "text frames are not supported; send binary y-protocols")
            return
        if conn.bucket is not None and not conn.bucket.take():
            METRICS.inc_label("collab_rejected_frames_total", "reason", "message rate limit")
            conn.close(CloseCode.TOO_MANY_REQUESTS, "message rate limit exceeded")
            return
        conn.bytes_in += len(data)
        conn.messages_in += 1
        counters["collab_bytes_in_total"] += len(data)
        try:
            msg = decode(data)
            if msg.kind is Kind.AWARENESS and len(msg.payload) > max_awareness:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "awareness update too large")
            room.handle(conn, msg)
        except ProtocolError as exc:
            METRICS.inc_label("collab_rejected_frames_total", "reason", exc.reason)
            log.info("rejected a frame from %s: %s", conn.id, exc.reason)
            conn.close(exc.code, exc.reason)
            return
