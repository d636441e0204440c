"""Our own WebSocket transport: websockets' sans-I/O `ServerProtocol` driven by an asyncio Protocol.

uvicorn parses HTTP and, at an upgrade request, hands the socket to the protocol class its
configuration names (`uvicorn.Config(ws=...)` accepts a class, constructed with `config`,
`server_state` and `app_state`): this one. HTTP stays on Starlette, on the same port. From the
handshake on, bytes in → frames → decode → `room.handle`, synchronously, in `data_received`: no
task and no queue per connection while it is idle. Frames out are written straight to the transport;
the Connection's bounded queue takes over only while the transport is above its high-water mark
(`pause_writing`). The handshake (authentication, the room's load) is the one task a connection gets,
and reading is paused while it runs. Keepalive pings for every connection come from one task.

Refusals happen before the upgrade (HTTP 401/403/404/429/503 with a JSON body) so a client without
access never receives a byte of content; any malformed frame afterwards closes only its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from collab_server.access.limits import AddressSockets, TokenBucket, peer_address
from collab_server.context import AppContext
from collab_server.core.connection import ClientInfo, Connection, SendBudget, new_connection_id
from collab_server.core.hub import RoomUnavailable
from collab_server.core.protocol import CloseCode, Kind, ProtocolError, decode
from collab_server.core.room import Room

from . import hocuspocus
from .authorize import PATH_PREFIX, Refusal, Upgrade, authorize

log = logging.getLogger("collab.transport")
# websockets logs every open and close at INFO; our own close line carries more.
_WS_LOG = logging.getLogger("collab.transport.websockets")
_WS_LOG.setLevel(logging.WARNING)

CLOSE_GRACE = 5.0  # seconds a client gets to answer our close frame before the socket counts as stuck
STATE_KEY = "collab_sockets"  # where the lifespan state holds the `Sockets` of this app
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 503: "Service Unavailable"}


class WireFrames:
    """Binary frames as they go on the wire, serialised once for every socket a broadcast writes
    the same frame to (2.1 µs per receiver saved), by websockets' own serialiser: a server's frames
    are unmasked, and we negotiate no extension and never fragment."""

    __slots__ = ("_frame", "_wire")

    def __init__(self) -> None:
        self._frame = b""  # the last frame asked for (kept, so its identity cannot be reused)
        self._wire = self.serialize(b"")

    @staticmethod
    def serialize(frame: bytes) -> bytes:
        return Frame(Opcode.BINARY, frame).serialize(mask=False, extensions=[])

    def wire(self, frame: bytes) -> bytes:
        if frame is not self._frame:
            self._wire = self.serialize(frame)
            self._frame = frame
        return self._wire


class Sockets:
    """Every WebSocket of one app: its settings, the open connections and their keepalive."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.open: set[WebSocketProtocol] = set()
        self.users = hocuspocus.UserSockets()  # per-user socket counts of the Hocuspocus route
        # Every socket (HTTP too) per client address: the HTTP protocol counts it at accept; an
        # upgraded socket is released by whichever protocol holds it when it closes.
        self.addresses = AddressSockets(ctx.settings.max_connections_per_address, ctx.proxies)
        self._keepalive: asyncio.Task[None] | None = None
        self.frames = WireFrames()

    def start(self) -> None:
        self._keepalive = asyncio.get_running_loop().create_task(self._tick_loop(), name="ws-keepalive")

    def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()

    async def _tick_loop(self) -> None:
        """Pings (when enabled) and the end of sockets whose client never finished a close."""
        interval, timeout = self.ctx.settings.ping_interval, self.ctx.settings.ping_timeout
        pings = interval > 0 and timeout > 0
        tick = max(0.05, min(interval, timeout) / 4) if pings else 0.5
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for sock in list(self.open):
                try:
                    sock.tick(now, interval if pings else 0.0, timeout)
                except Exception:  # one socket must never stop the keepalive of all the others
                    log.exception("keepalive tick failed")


def _json_response(status: int, code: str, message: str) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close")])
    return Response(status, _REASONS.get(status, "Error"), headers, body)


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection, and the core's `Peer` for it."""

    __slots__ = (  # one per socket: no instance dict
        "__weakref__", "_address", "_bucket", "_closing_since", "_corked", "_ctx", "_fragments", "_gone", "_handshake",
        "_max_awareness", "_next_ping", "_path", "_paused", "_ping_at", "_resumed", "_server_state",
        "_sockets", "_transport", "_ws", "conn", "room", "session",
    )

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], **_: Any) -> None:
        self._sockets: Sockets = app_state[STATE_KEY]
        self._ctx = self._sockets.ctx
        self._server_state = server_state  # uvicorn's: `connections` is what its graceful shutdown waits for
        settings = self._ctx.settings
        self._ws = ServerProtocol(max_size=settings.max_message_bytes, logger=_WS_LOG)
        self._transport: asyncio.Transport | None = None
        self._address: str | None = None
        self._path: str | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._gone = False  # connection_lost has run
        self._fragments: list[bytes] | None = None
        self._corked: list[bytes] | None = None  # held from our 101 until the room is joined
        self._ping_at = 0.0  # when the last ping went out (0: none outstanding)
        self._closing_since = 0.0  # when we sent a close frame or closed the transport (0: not yet)
        self._next_ping = 0.0
        self._bucket: TokenBucket | None = None
        self._max_awareness = settings.max_awareness_bytes
        self.conn: Connection | None = None
        self.room: Room | None = None
        self.session: hocuspocus.Session | None = None  # the Hocuspocus route: many documents

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transport is not a subclass
        self._address = peer_address(transport)
        self._server_state.connections.add(self)
        self._sockets.open.add(self)  # ticked from the start: a socket stuck in any phase is dropped in time

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        if self.conn is None:
            for event in events:
                if isinstance(event, Request) and self._handshake is None:
                    self._pause_reading()
                    self._handshake = asyncio.get_running_loop().create_task(self._open(event))
            self._send_pending()
            return
        conn = self.conn
        for event in events:
            if conn.closing:
                break
            if isinstance(event, Frame):
                self._frame(conn, event)
        if ws.parser_exc is not None and not conn.closing:
            self._failed(conn, ws.parser_exc)
        self._send_pending()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        conn = self.conn
        if conn is not None and not conn.closing:  # gone without a close frame
            conn.closing = True
            conn.close_code = conn.close_code or 1006
        self._leave()
        self._send_pending()
        return None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)
        self._resumed = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        self._sockets.open.discard(self)
        self._sockets.addresses.release(self._transport)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        self._gone = True
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_exception(ConnectionError("connection lost"))
            self._resumed.exception()  # retrieved here if no writer waits for it
        conn = self.conn
        if conn is not None and not conn.closing:
            conn.closing = True
            received = self._ws.close_rcvd
            conn.close_code = conn.close_code or (received.code if received is not None else 1006)
        self._leave()

    def _leave(self) -> None:
        """Out of the room as soon as the connection is over for us (our close sent, the client's
        close received, or the socket gone): no more fan-out to it while TCP winds down."""
        session = self.session
        if session is not None and not session.ended:
            session.end()
            if self.conn is not None:
                self._finished(self.conn, None)
        conn, room = self.conn, self.room
        if conn is None or room is None:
            return
        self.room = None
        self._ctx.hub.leave(room, conn)
        self._finished(conn, room)

    def _finished(self, conn: Connection, room: Room | None) -> None:
        if conn.settled:  # a client's own close, most often: no task needed to wait for anything
            conn.closing = True
            self._log_close(conn, room)
        else:
            asyncio.get_running_loop().create_task(self._finish(conn, room), name=f"finish-{conn.id}")

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (the hub has closed the rooms' connections already)."""
        if self.conn is not None:
            self.conn.close(CloseCode.GOING_AWAY, "server shutting down")
        else:
            self._close_transport()

    # -- the core's Peer -------------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        return self._address

    def write(self, frame: bytes) -> bool:
        transport = self._transport
        if self._paused or transport is None or transport.is_closing() or self._ws.close_sent is not None:
            return False
        # No close sent: websockets' protocol is OPEN, and a data frame changes none of its state.
        wire = self._sockets.frames.wire(frame)
        if self._corked is not None:
            self._corked.append(wire)
        else:
            transport.write(wire)
        return True

    async def send(self, frame: bytes) -> None:
        while self._paused:
            if self._resumed is None:
                self._resumed = asyncio.get_running_loop().create_future()
            await self._resumed
        if not self.write(frame):
            raise ConnectionError("the connection is closing")

    async def close(self, code: int, reason: str) -> None:
        """Queue the close frame behind what is in flight. The TCP connection ends when the client
        answers; one that has not within CLOSE_GRACE is aborted by `tick`."""
        if self._ws.close_sent is None and self._transport is not None and not self._transport.is_closing():
            self._ws.send_close(code, reason)
            self._closing_since = self._closing_since or time.monotonic()
            self._send_pending()
        self._leave()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- opening --------------------------------------------------------------------------------

    async def _open(self, request: Request) -> None:
        """The handshake task; whatever fails in it ends this socket visibly, never silently."""
        try:
            await self._handshake_steps(request)
            self._uncork()
            self._handshake = None  # a finished task kept for the socket's life is ~600 B each
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("opening a WebSocket failed")
            self._uncork()
            if self.conn is not None:  # upgraded already: a close code the client acts on
                self._refuse_open(self.conn, CloseCode.INTERNAL_ERROR, "internal error while opening")
            elif self._ws.state is State.CONNECTING:
                self._refuse(Refusal(503, "unavailable", "the server could not open this connection"))
            elif self._transport is not None:
                if self._ws.state is State.OPEN:
                    self._ws.send_close(CloseCode.INTERNAL_ERROR, "internal error while opening")
                    self._send_pending()
                self._close_transport()

    async def _handshake_steps(self, request: Request) -> None:
        ctx = self._ctx
        response = self._ws.accept(request)
        if response.status_code != 101:  # not a valid WebSocket handshake: websockets says why
            self._ws.send_response(response)
            self._send_pending()
            return
        parts = urlsplit(request.path)
        self._path = parts.path  # without the query: a token may be in it
        upgrade = Upgrade(parts.path, request.headers, dict(parse_qsl(parts.query)))
        self._address = ctx.proxies.client(self._address, request.headers)
        if parts.path.rstrip("/") == hocuspocus.PATH:
            self._open_hocuspocus(response, upgrade)
            return
        if not parts.path.startswith(PATH_PREFIX):
            message = "no WebSocket endpoint here; connect to /ws/{document} or /hocuspocus"
            self._refuse(Refusal(404, "not_found", message))
            return
        decision = await authorize(ctx, upgrade, self._address)
        if isinstance(decision, Refusal):
            self._refuse(decision)
            return
        document_id, info = decision
        self._accept(response)
        if ctx.hub.get(document_id) is None:
            # The room must load first: the 101 goes now, so the client's first message travels
            # while we read PostgreSQL (held, it would add a round trip to the client's open).
            self._uncork()
        conn = Connection(new_connection_id(), info, self, ctx.settings.send_queue_bytes, ctx.counters)
        try:
            room = await ctx.hub.join(document_id, conn)
        except RoomUnavailable as exc:
            self._refuse_open(conn, exc.code, exc.reason)
            return
        if self._gone:  # the client left while the room loaded
            ctx.hub.leave(room, conn)
            return
        self.conn, self.room = conn, room
        self._opened()

    def _accept(self, response: Response) -> None:
        """Accept, then go on with a protocol object born OPEN: websockets' handshake parser
        keeps the parsed request (headers and all, about 2 KiB) alive in its generator for the
        socket's lifetime. Nothing is lost in the swap: a client sends no frame before it has
        our 101 (RFC 6455 4.1), and our reading is paused until the room is joined.
        Joining a live room, the 101 leaves with the room's first frames (or its close) in one
        write: a system call fewer per connection (strace: 3 writes per connection opened and
        synced instead of 4)."""
        self._ws.send_response(response)
        self._corked = self._ws.data_to_send()
        self._ws = ServerProtocol(
            state=State.OPEN, max_size=self._ctx.settings.max_message_bytes, logger=_WS_LOG
        )

    def _opened(self) -> None:
        settings = self._ctx.settings
        rate = settings.rate_messages_per_second
        self._bucket = TokenBucket(rate, rate * 2) if rate > 0 else None
        self._next_ping = time.monotonic() + settings.ping_interval
        self._resume_reading()

    def _open_hocuspocus(self, response: Response, upgrade: Upgrade) -> None:
        """Upgrade at once: who may open what is asked per document, in the messages."""
        ctx = self._ctx
        if not ctx.address_limiter.allow(self._address):
            self._refuse(Refusal(429, "too_many_requests", "too many connections from this address; slow down"))
            return
        if ctx.hub.closing:
            self._refuse(Refusal(503, "unavailable", "server is shutting down"))
            return
        self._accept(response)
        # The socket's own connection: in no room; closing it closes the socket and every document.
        budget = SendBudget(ctx.settings.send_queue_bytes)
        self.conn = Connection(new_connection_id(), ClientInfo(address=self._address), self,
                               ctx.settings.send_queue_bytes, ctx.counters, budget=budget)
        self.session = hocuspocus.Session(
            ctx, self, self.conn, upgrade, self._sockets.users, budget,
            lambda code, reason, label: self._reject(self.conn, code, reason, label) if self.conn else None,
            self._finished,
        )
        self._opened()

    def _refuse_open(self, conn: Connection, code: int, reason: str) -> None:
        """Accepted, then closed with a code the client acts on; reading resumes for its close reply.
        (A held 101 leaves first: the close frame goes out through `_send_pending`, which uncorks.)"""
        self.conn = conn
        conn.close(code, reason)
        self._resume_reading()

    def _refuse(self, refusal: Refusal) -> None:
        """One info line, never an error: a refusal is the server working (a client asking why it
        cannot connect finds the reason here and in the JSON body)."""
        log.info("upgrade refused", extra={
            "event": "refused", "status": refusal.status, "code": refusal.code, "reason": refusal.message,
            "path": self._path, "address": self._address,
        })
        self._ws.send_response(_json_response(refusal.status, refusal.code, refusal.message))
        self._send_pending()
        self._close_transport()

    # -- frames ---------------------------------------------------------------------------------

    def _frame(self, conn: Connection, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY:
            if frame.fin:
                self._message(conn, bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT:
            if self._fragments is not None:
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    data, self._fragments = b"".join(self._fragments), None
                    self._message(conn, data)
        elif opcode is Opcode.TEXT:
            self._reject(conn, CloseCode.UNSUPPORTED_DATA, "text frames are not supported; send binary y-protocols",
                         "text frame")
        elif opcode is Opcode.PONG:
            self._ping_at = 0.0
        elif opcode is Opcode.CLOSE:  # websockets has answered it; the TCP close follows
            received = self._ws.close_rcvd
            conn.closing = True
            conn.close_code = conn.close_code or (received.code if received is not None else 1005)
            self._send_pending()  # the answer and our end of TCP first: leaving the room can wait for them
            self._leave()

    def _message(self, conn: Connection, data: bytes) -> None:
        counters = self._ctx.counters
        if self._bucket is not None and not self._bucket.take():
            self._reject(conn, CloseCode.TOO_MANY_REQUESTS, "message rate limit exceeded", "message rate limit")
            return
        conn.bytes_in += len(data)
        conn.messages_in += 1
        counters.values["collab_bytes_in_total"] += len(data)
        try:
            if self.session is not None:
                self.session.receive(data)
                return
            msg = decode(data)
            if msg.kind is Kind.AWARENESS and len(msg.payload) > self._max_awareness:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "awareness update too large")
            if self.room is not None:
                self.room.handle(conn, msg)
        except ProtocolError as exc:
            log.info("rejected a frame from %s: %s", conn.id, exc.reason)
            self._reject(conn, exc.code, exc.reason, exc.reason)

    def _reject(self, conn: Connection, code: int, reason: str, label: str) -> None:
        self._ctx.counters.inc_label("collab_rejected_frames_total", "reason", label)
        conn.close(code, reason)

    def _failed(self, conn: Connection, exc: Exception) -> None:
        """websockets refused the framing itself and has sent its close frame (1009, 1002, …)."""
        sent = self._ws.close_sent
        conn.closing = True
        conn.close_code = sent.code if sent is not None else CloseCode.BAD_REQUEST
        conn.close_reason = sent.reason if sent is not None else str(exc)
        label = "frame over the size limit" if isinstance(exc, PayloadTooBig) else "invalid WebSocket framing"
        self._ctx.counters.inc_label("collab_rejected_frames_total", "reason", label)
        self._leave()

    # -- plumbing -------------------------------------------------------------------------------

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(corked))

    def _send_pending(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._corked is not None:
            self._uncork()
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # end of stream: a server closes the TCP connection itself
                self._close_transport()
                return

    def _close_transport(self) -> None:
        """Close once the buffer is written; `tick` aborts it if the client never reads that far."""
        if self._transport is not None:
            self._closing_since = self._closing_since or time.monotonic()
            self._transport.close()

    def _pause_reading(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()

    def tick(self, now: float, interval: float, timeout: float) -> None:
        """Abort a socket whose close the client has not answered within CLOSE_GRACE; send a
        ping every `interval` (0: none) and drop the connection if one goes unanswered for `timeout`."""
        if self._closing_since and now - self._closing_since > CLOSE_GRACE:
            if self._transport is not None:
                self._transport.abort()
            return
        conn = self.conn
        if conn is None or conn.closing or not interval or self._ws.state is not State.OPEN:
            return
        if self._ping_at and now - self._ping_at >= timeout:
            # A peer that does not answer pings will not answer a close either: drop it.
            conn.close_code, conn.close_reason = CloseCode.INTERNAL_ERROR, "keepalive ping timeout"
            conn.closing = True
            if self._transport is not None:
                self._transport.abort()
            return
        if not self._ping_at and now >= self._next_ping:
            # The clock starts even while our writes are paused: a peer that has not read what it
            # was sent for `timeout` seconds is as gone as one that does not answer (and is dropped).
            self._ping_at, self._next_ping = now, now + interval
            if not self._paused:
                self._ws.send_ping(b"")
                self._send_pending()

    async def _finish(self, conn: Connection, room: Room | None) -> None:
        await conn.finish()
        self._log_close(conn, room)

    def _log_close(self, conn: Connection, room: Room | None) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        code = conn.close_code or 1000
        log.info(
            "connection closed" if room is not None or self.session is None else "hocuspocus socket closed",
            extra={
                "event": "close", "conn": conn.id, "document": str(room.id) if room else None, "code": code,
                "reason": conn.close_reason, "bytes_in": conn.bytes_in, "bytes_out": conn.bytes_out,
                "messages_in": conn.messages_in,
                "seconds": round(time.monotonic() - conn.opened_at, 3),
                "user": str(conn.info.user_id) if conn.info.user_id else None,
            },
        )
