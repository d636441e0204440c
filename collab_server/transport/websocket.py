"""The WebSocket route (ASGI, under uvicorn): authenticate before any byte, then pump frames into the room.

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
from typing import Any
from uuid import UUID

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from collab_server.access.auth import AuthError, token_from
from collab_server.access.limits import TokenBucket
from collab_server.context import AppContext
from collab_server.core.connection import ClientInfo, Connection
from collab_server.core.counters import Counters
from collab_server.core.hub import RoomUnavailable
from collab_server.core.protocol import CloseCode, Kind, ProtocolError, decode
from collab_server.core.room import Room
from collab_server.storage.postgres import LOCAL_USER_ID

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


class AsgiPeer:
    """The core's Peer over an ASGI WebSocket. ASGI offers no way to write without a task
    switch nor to abort a connection (a graceful close never completes while the peer keeps
    its receive window shut), so where uvicorn's protocol object can be found the writes and
    aborts go to it directly; otherwise every frame takes the ASGI path."""

    __slots__ = ("_address", "_proto", "_transport", "_ws", "reader", "receiving")

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._address = ws.client.host if ws.client else None
        proto = find_protocol(ws._send)
        self._proto = proto if _supports_direct_send(proto) else None
        self._transport: Any = getattr(proto, "transport", None)
        self.reader: asyncio.Task[Any] | None = None  # the task reading frames
        self.receiving = False  # the reader is blocked in receive() (and may be woken)

    @property
    def address(self) -> str | None:
        return self._address

    def write(self, frame: bytes) -> bool:
        proto = self._proto
        if proto is None or not proto.writable.is_set() or proto.close_sent or proto.disconnected:
            return False
        proto.conn.send_binary(frame)
        proto.transport.write(b"".join(proto.conn.data_to_send()))
        return True

    async def send(self, frame: bytes) -> None:
        await self._ws.send_bytes(frame)

    async def close(self, code: int, reason: str) -> None:
        if self.reader is not None and self.receiving and not self.reader.done():
            self.reader.cancel()  # wake the read loop: the connection is over
        await self._ws.close(code, reason)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport is not None and self._transport.is_closing()


def _supports_direct_send(proto: Any) -> bool:
    return all(hasattr(proto, name) for name in ("conn", "writable", "transport", "close_sent", "disconnected"))


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
    peer = AsgiPeer(ws)
    conn = Connection(uuid.uuid4().hex, info, peer, settings.send_queue_bytes, ctx.counters)
    try:
        room = await ctx.hub.join(document_id, conn)
    except RoomUnavailable as exc:
        await ws.close(exc.code, exc.reason)
        return
    rate = settings.rate_messages_per_second
    bucket = TokenBucket(rate, rate * 2) if rate > 0 else None
    try:
        await _pump(ws, peer, room, conn, bucket, settings.max_awareness_bytes, ctx.counters)
    finally:
        ctx.hub.leave(room, conn)
        await conn.finish()
        code = conn.close_code or 1000
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


async def _pump(
    ws: WebSocket, peer: AsgiPeer, room: Room, conn: Connection, bucket: TokenBucket | None, max_awareness: int,
    counters: Counters,
) -> None:
    task = asyncio.current_task()
    peer.reader = task
    values = counters.values
    while not conn.closing:
        peer.receiving = True
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        except asyncio.CancelledError:
            if conn.closing and task is not None:  # woken by conn.close(), not by shutdown
                task.uncancel()
                return
            raise
        finally:
            peer.receiving = False
        if conn.closing:
            return
        if message["type"] == "websocket.disconnect":
            conn.close_code = conn.close_code or int(message.get("code", 1005))
            if conn.close_code == CloseCode.MESSAGE_TOO_BIG:  # refused by the WebSocket layer
                counters.inc_label("collab_rejected_frames_total", "reason", "frame over the size limit")
            conn.closing = True
            return
        data = message.get("bytes")
        if data is None:
            counters.inc_label("collab_rejected_frames_total", "reason", "text frame")
            conn.close(CloseCode.UNSUPPORTED_DATA, "text frames are not supported; send binary y-protocols")
            return
        if bucket is not None and not bucket.take():
            counters.inc_label("collab_rejected_frames_total", "reason", "message rate limit")
            conn.close(CloseCode.TOO_MANY_REQUESTS, "message rate limit exceeded")
            return
        conn.bytes_in += len(data)
        conn.messages_in += 1
        values["collab_bytes_in_total"] += len(data)
        try:
            msg = decode(data)
            if msg.kind is Kind.AWARENESS and len(msg.payload) > max_awareness:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "awareness update too large")
            room.handle(conn, msg)
        except ProtocolError as exc:
            counters.inc_label("collab_rejected_frames_total", "reason", exc.reason)
            log.info("rejected a frame from %s: %s", conn.id, exc.reason)
            conn.close(exc.code, exc.reason)
            return
