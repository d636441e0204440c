"""The Hocuspocus route: one socket, many documents, each authorised on its own.

A `Session` sits between one WebSocket (`websocket.WebSocketProtocol`, which still owns framing,
keepalive, rate limits and closing) and the rooms. Every document the provider opens on the socket
is a `Channel`: a `HocuspocusConnection` in the document's room, whose peer is the channel itself,
putting the document's address in front of what the room sends. The rooms are the y-websocket
route's rooms, so both dialects share auth, roles, limits, presence, write-ahead and bus.

Per document, in order: an Auth message starts the check (`authorize.resolve`, the same one the
y-websocket route uses) while what follows for that document waits in a bounded queue; the answer
is Authenticated (scope `read-write` / `readonly`), then the room's sync, or PermissionDenied with
a reason, which leaves the socket and its other documents alone. Closing a document (revocation,
deletion) sends Hocuspocus' Close for that document only; anything that concerns the whole
connection (a malformed frame, a client that does not read, shutdown) closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol
from uuid import UUID

from collab_server.access.auth import token_from
from collab_server.access.limits import TokenBucket
from collab_server.context import AppContext
from collab_server.core import hocuspocus as hp
from collab_server.core.connection import Connection, SendBudget, new_connection_id
from collab_server.core.hocuspocus import HocuspocusConnection
from collab_server.core.hub import RoomUnavailable
from collab_server.core.protocol import CloseCode, Kind, ProtocolError
from collab_server.core.room import Room

from .authorize import Refusal, Upgrade, resolve

log = logging.getLogger("collab.transport.hocuspocus")

PATH = "/hocuspocus"
# What a socket may send for documents still being authorised before it is cut off.
MAX_QUEUED_BYTES = 1024 * 1024
MAX_QUEUED_MESSAGES = 1000
# Close codes that concern one document: sent as that document's Close, the socket stays open.
DOCUMENT_CODES = frozenset({
    CloseCode.NORMAL, CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN, CloseCode.NOT_FOUND, CloseCode.DOCUMENT_TOO_LARGE,
    CloseCode.MISSING_DEPENDENCIES,
})


class Socket(Protocol):
    """What a session needs of its WebSocket (the core's Peer, plus its own close)."""

    def write(self, frame: bytes) -> bool: ...

    async def send(self, frame: bytes) -> None: ...

    def abort(self) -> None: ...

    @property
    def address(self) -> str | None: ...


Finished = Callable[[Connection, Room], None]


class UserSockets:
    """How many Hocuspocus sockets each user has open on this process (for the per-user cap)."""

    def __init__(self) -> None:
        self.counts: dict[UUID, int] = {}

    def take(self, user_id: UUID, limit: int) -> bool:
        count = self.counts.get(user_id, 0)
        if count >= limit:
            return False
        self.counts[user_id] = count + 1
        return True

    def release(self, user_id: UUID) -> None:
        count = self.counts.get(user_id, 0) - 1
        if count > 0:
            self.counts[user_id] = count
        else:
            self.counts.pop(user_id, None)


class Channel:
    """One document on a shared socket: the Peer of its connection in the room. `key` is its
    Hocuspocus message address (the document name, `name\\0session` for session-aware providers)."""

    __slots__ = ("_session", "conn", "key", "prefix", "room")

    def __init__(self, session: Session, key: str) -> None:
        self._session = session
        self.key = key
        self.prefix = hp.address_prefix(key)
        self.conn: HocuspocusConnection | None = None
        self.room: Room | None = None

    @property
    def address(self) -> str | None:
        return self._session.socket.address

    def write(self, frame: bytes) -> bool:
        return self._session.socket.write(self.prefix + frame)

    async def send(self, frame: bytes) -> None:
        await self._session.socket.send(self.prefix + frame)

    async def close(self, code: int, reason: str) -> None:
        if code in DOCUMENT_CODES:
            self._session.detach(self, hp.encode_close(reason))
        else:  # about the connection, not the document (a client that does not read, shutdown)
            self._session.socket_conn.close(code, reason)

    def abort(self) -> None:
        self._session.socket.abort()


class Session:
    """The documents of one Hocuspocus socket."""

    def __init__(
        self,
        ctx: AppContext,
        socket: Socket,
        socket_conn: Connection,
        upgrade: Upgrade,
        users: UserSockets,
        budget: SendBudget,
        reject: Callable[[int, str, str], None],
        finished: Finished,
    ) -> None:
        self.ctx = ctx
        self.socket = socket
        self.socket_conn = socket_conn
        self._upgrade = upgrade
        self._users = users
        self.budget = budget  # shared by the socket's documents: one bound however many are open
        self._reject = reject
        self._finished = finished
        settings = ctx.settings
        self._max_documents = settings.hocuspocus_max_documents
        self._max_awareness = settings.max_awareness_bytes
        self._max_stateless = settings.max_stateless_bytes
        rate = settings.rate_stateless_per_second
        self._stateless_bucket = TokenBucket(rate, rate * 2) if rate > 0 else None
        self.channels: dict[str, Channel] = {}
        # Documents being authorised: what came for them meanwhile, and its size.
        self._waiting: dict[str, list[tuple[hp.Frame, int]]] = {}
        self._waiting_bytes = 0
        self._waiting_messages = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._user_ids: set[UUID] = set()
        self.ended = False

    # -- receiving --

    def receive(self, data: bytes) -> None:
        """One frame from the socket; ProtocolError closes the socket (the caller's business)."""
        self._route(hp.decode_frame(data), len(data))

    def _route(self, frame: hp.Frame, size: int) -> None:
        kind = frame.kind
        if kind is hp.Kind.PING:
            self.socket_conn.send(hp.PONG)
            return
        if kind is hp.Kind.PONG or kind is hp.Kind.IGNORED:
            return
        channel = self.channels.get(frame.address)
        if channel is not None:
            self._dispatch(channel, frame)
            return
        waiting = self._waiting.get(frame.address)
        if waiting is not None:  # everything waits, a Close and a new Auth too (a quick re-attach)
            self._queue(waiting, frame, size)
            return
        if kind is hp.Kind.AUTH:
            self._start(frame)
        # Anything else for a document that is not open (refused, or closed by the provider a
        # moment ago) has nowhere to go; the provider sends Auth first when it opens one.

    def _queue(self, waiting: list[tuple[hp.Frame, int]], frame: hp.Frame, size: int) -> None:
        self._waiting_bytes += size
        self._waiting_messages += 1
        if self._waiting_bytes > MAX_QUEUED_BYTES or self._waiting_messages > MAX_QUEUED_MESSAGES:
            raise ProtocolError(CloseCode.POLICY_VIOLATION, "too much sent for documents not yet authorised")
        waiting.append((frame, size))

    def _take_waiting(self, address: str) -> list[tuple[hp.Frame, int]]:
        queued = self._waiting.pop(address, [])
        self._waiting_messages -= len(queued)
        self._waiting_bytes -= sum(size for _frame, size in queued)
        return queued

    def _dispatch(self, channel: Channel, frame: hp.Frame) -> None:
        conn, room = channel.conn, channel.room
        if conn is None or room is None or conn.closing:
            return
        kind = frame.kind
        if kind is hp.Kind.ROOM:
            msg = frame.message
            assert msg is not None
            if msg.kind is Kind.AWARENESS and len(msg.payload) > self._max_awareness:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "awareness update too large")
            try:
                room.handle(conn, msg)
            except ProtocolError as exc:
                if exc.code not in DOCUMENT_CODES:
                    raise
                conn.close(exc.code, exc.reason)  # about this document only: its Close, the socket stays
        elif kind is hp.Kind.STATELESS:
            if len(frame.text.encode()) > self._max_stateless:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, "stateless message too large")
            if self._stateless_bucket is not None and not self._stateless_bucket.take():
                raise ProtocolError(CloseCode.TOO_MANY_REQUESTS, "stateless message rate limit exceeded")
            room.stateless(conn, frame.text)
        elif kind is hp.Kind.CLOSE:
            conn.closing = True
            conn.close_code = CloseCode.NORMAL
            conn.close_reason = "closed by the provider"
            self.detach(channel, None)
        # A second Auth for an open document (a provider re-created in a hurry) changes nothing.

    # -- opening a document --

    def _start(self, frame: hp.Frame) -> None:
        address = frame.address
        if len(self.channels) + len(self._waiting) >= self._max_documents:
            self._deny(address, f"too many documents on this connection (limit {self._max_documents})")
            return
        # Each document opened costs what a connection costs (a token check, a room): it is
        # charged to the client's address like one.
        if not self.ctx.address_limiter.allow(self.socket.address):
            self._deny(address, "too many documents opened from this address; slow down")
            return
        self._waiting[address] = []
        task = asyncio.get_running_loop().create_task(self._open(frame), name=f"hocuspocus-open-{address[:40]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, frame: hp.Frame) -> None:
        address = frame.address
        try:
            await self._open_steps(address, frame.document_name, frame.text or token_from(self._upgrade))
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:  # a queued frame was malformed
            self._reject(exc.code, exc.reason, exc.reason)
        except Exception:
            log.exception("opening document %r on a Hocuspocus socket failed", address)
            self._refuse(address, "internal error while opening the document")

    async def _open_steps(self, address: str, name: str, token: str | None) -> None:
        ctx = self.ctx
        decision = await resolve(ctx, name, token, self._upgrade, self.socket.address)
        if self.ended:
            return
        if isinstance(decision, Refusal):
            self._refuse(address, decision.message)
            return
        document_id, info = decision
        # Per user: in open mode everyone is the one local user, so the cap would be a global one.
        user_id = info.user_id if ctx.settings.auth == "on" else None
        if user_id is not None and user_id not in self._user_ids:
            if not self._users.take(user_id, ctx.settings.max_sockets_per_user):
                self._refuse(address, f"too many connections for this user (limit {ctx.settings.max_sockets_per_user})")
                return
            self._user_ids.add(user_id)
        channel = Channel(self, address)
        conn = HocuspocusConnection(new_connection_id(), info, channel, ctx.settings.send_queue_bytes, ctx.counters,
                                    budget=self.budget)
        channel.conn = conn
        conn.send(hp.encode_authenticated(read_only=not info.can_write))
        try:
            room = await ctx.hub.join(document_id, conn)
        except RoomUnavailable as exc:
            self._refuse(address, exc.reason, conn)  # after Authenticated, on the same queue
            return
        if self.ended or conn.closing:
            ctx.hub.leave(room, conn)
            self._take_waiting(address)
            return
        channel.room = room
        self.channels[address] = channel
        for frame, size in self._take_waiting(address):
            self._route(frame, size)  # a queued Close detaches, a queued Auth after it opens again

    def _refuse(self, address: str, reason: str, conn: Connection | None = None) -> None:
        queued = self._take_waiting(address)
        self._deny(address, reason, conn)
        for i, (frame, _size) in enumerate(queued):  # the provider tried again meanwhile
            if frame.kind is hp.Kind.AUTH:
                for again, size in queued[i:]:
                    self._route(again, size)
                return

    def _deny(self, address: str, reason: str, conn: Connection | None = None) -> None:
        self.ctx.counters.inc_label("collab_hocuspocus_denied_total", "reason", reason.split(":")[0][:40])
        if conn is not None:  # the document's own queue (its peer puts the address in front)
            conn.send(hp.encode_permission_denied(reason))
        else:
            self.socket_conn.send(hp.address_prefix(address) + hp.encode_permission_denied(reason))

    # -- closing --

    def detach(self, channel: Channel, farewell: bytes | None) -> None:
        """One document leaves the socket (the provider closed it, or the server did)."""
        if self.channels.get(channel.key) is not channel:
            return
        del self.channels[channel.key]
        if farewell is not None and not self.ended:
            self.socket_conn.send(channel.prefix + farewell)
        self._leave(channel)

    def _leave(self, channel: Channel) -> None:
        conn, room = channel.conn, channel.room
        channel.room = None
        if conn is None or room is None:
            return
        conn.closing = True
        self.ctx.hub.leave(room, conn)
        self._finished(conn, room)

    def end(self) -> None:
        """The socket is over: every document leaves its room at once."""
        if self.ended:
            return
        self.ended = True
        for task in self._tasks:
            task.cancel()
        code, reason = self.socket_conn.close_code, self.socket_conn.close_reason
        channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            if channel.conn is not None and channel.conn.close_code is None:
                channel.conn.close_code, channel.conn.close_reason = code, reason
            self._leave(channel)
        self._waiting.clear()
        for user_id in self._user_ids:
            self._users.release(user_id)
        self._user_ids.clear()
