"""An in-memory peer and a client on top of it: the core tested without sockets or a database."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from pycrdt import Doc, Text, TransactionEvent

from collab_server.core.awareness import decode_entries, encode_entries
from collab_server.core.connection import ClientInfo, Connection
from collab_server.core.hub import Hub
from collab_server.core.protocol import Kind, Message, decode
from collab_server.core.room import Room

_ids = itertools.count(1)


class MemoryPeer:
    """The core's Peer with no transport: frames land in a list (or wait while "unwritable")."""

    def __init__(self, address: str = "127.0.0.1", writable: bool = True) -> None:
        self._address = address
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.aborted = False
        self.close_blocks = False  # a peer that never lets the close frame out
        self._space = asyncio.Event()
        self.set_writable(writable)
        self.listener: Any = None
        self.on_close: Any = None  # what the transport does when a socket closes: leave the room

    @property
    def address(self) -> str | None:
        return self._address

    def set_writable(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            self._space.set()
        else:
            self._space.clear()

    def _deliver(self, frame: bytes) -> None:
        self.frames.append(frame)
        if self.listener is not None:
            asyncio.get_running_loop().call_soon(self.listener, frame)

    def write(self, frame: bytes) -> bool:
        if not self.writable or self.closed is not None:
            return False
        self._deliver(frame)
        return True

    async def send(self, frame: bytes) -> None:
        await self._space.wait()
        self._deliver(frame)

    async def close(self, code: int, reason: str) -> None:
        if self.close_blocks:
            await asyncio.Event().wait()
        self.closed = (code, reason)
        if self.on_close is not None:
            self.on_close()

    def abort(self) -> None:
        self.aborted = True

    def messages(self) -> list[Message]:
        return [decode(f) for f in self.frames]

    def kinds(self) -> list[Kind]:
        return [m.kind for m in self.messages()]


class MemoryClient:
    """A pycrdt Doc on the far side of a MemoryPeer, speaking y-protocols like a provider:
    answers step 1 with step 2, applies updates, sends its own transactions as updates."""

    def __init__(self, info: ClientInfo | None = None, queue_limit: int = 1 << 20, **peer: Any) -> None:
        self.doc = Doc()
        self.text = self.doc.get("content", type=Text)
        self.peer = MemoryPeer(**peer)
        self.peer.listener = self._receive
        self.conn = Connection(f"c{next(_ids)}", info or ClientInfo(), self.peer, queue_limit)
        self.room: Room | None = None
        self.awareness: dict[int, Any] = {}
        self.updates_received = 0
        self._remote = False
        self.doc.observe(self._on_local)

    async def join(self, hub: Hub, document_id: Any) -> MemoryClient:
        self.room = room = await hub.join(document_id, self.conn)
        self.peer.on_close = lambda: hub.leave(room, self.conn)
        self.send(Message(Kind.SYNC_STEP1, self.doc.get_state()))
        return self

    def attach(self, room: Room) -> MemoryClient:
        """Join a bare Room (no hub)."""
        self.room = room
        room.add(self.conn)
        self.peer.on_close = lambda: room.remove(self.conn)
        self.send(Message(Kind.SYNC_STEP1, self.doc.get_state()))
        return self

    def send(self, msg: Message) -> None:
        assert self.room is not None
        self.room.handle(self.conn, msg)

    def say(self, client_id: int, clock: int, state: bytes) -> None:
        self.send(Message(Kind.AWARENESS, encode_entries([(client_id, clock, state)])))

    def _on_local(self, event: TransactionEvent) -> None:
        if not self._remote and self.room is not None:
            self.send(Message(Kind.SYNC_UPDATE, event.update))

    def _receive(self, frame: bytes) -> None:
        msg = decode(frame)
        if msg.kind in (Kind.SYNC_UPDATE, Kind.SYNC_STEP2):
            self.updates_received += msg.kind is Kind.SYNC_UPDATE
            self._remote = True
            try:
                self.doc.apply_update(msg.payload)
            finally:
                self._remote = False
        elif msg.kind is Kind.SYNC_STEP1 and self.room is not None and not self.conn.closing:
            self.send(Message(Kind.SYNC_STEP2, self.doc.get_update(msg.payload)))
        elif msg.kind is Kind.AWARENESS:
            for client_id, _clock, state in decode_entries(msg.payload):
                if state == b"null":
                    self.awareness.pop(client_id, None)
                else:
                    self.awareness[client_id] = state

    def __str__(self) -> str:
        return str(self.text)


async def turns(n: int = 3) -> None:
    """Let the loop run `n` turns: enough for a room's flush (scheduled with call_soon) and the
    in-memory peers' deliveries, which are all the in-memory core ever waits for."""
    for _ in range(n):
        await asyncio.sleep(0)
