"""One client connection: who it is, and a bounded send queue in front of its Peer.

Fan-out calls `send`, which never awaits: a slow reader only grows its own queue, and
past `queue_limit` bytes it is closed (1013) instead of holding memory or the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from .counters import Counters
from .peer import Peer
from .protocol import CloseCode, encode_permission_denied

log = logging.getLogger("collab.connection")


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(8).hex(), itertools.count(1)


_id_prefix, _id_counter = "", itertools.count(1)
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_connection_id() -> str:
    """Unique across processes, without a uuid4 (a system call) per connection: a random
    per-process prefix, drawn again in a forked child, and a counter; 32 hex digits, as before."""
    return f"{_id_prefix}{next(_id_counter):016x}"


@dataclass(slots=True)
class ClientInfo:
    """Who is on the other end, from the token and the query string or headers."""

    user_id: UUID | None = None
    role: str = "editor"
    device_type: str = "web"
    device_name: str | None = None
    client_version: str | None = None
    address: str | None = None

    @property
    def can_write(self) -> bool:
        return self.role in {"owner", "admin", "editor"}


class SendBudget:
    """One bound on the bytes queued by several connections over one transport (the documents of
    a Hocuspocus socket): a client that stops reading holds at most this much, however many
    documents it has open."""

    __slots__ = ("limit", "queued")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0


class Connection:
    """Fan-out calls `send`, which never awaits. When the peer can take the frame it is written
    at once, synchronously (no task switch, no per-connection writer task while idle);
    otherwise it waits in a queue drained by a writer task that exists only while there is a
    backlog."""

    CLOSE_TIMEOUT = 2.0  # seconds for the close frame to get out before the connection is aborted
    acknowledges = False  # does the client count edits until the server acknowledges them?

    __slots__ = (
        "_budget", "_closer", "_counters", "_queue", "_queued_bytes", "_writer", "bytes_in", "bytes_out", "close_code",
        "close_reason", "closing", "denied_sent", "id", "info", "messages_in", "opened_at", "peer", "queue_limit",
    )

    def __init__(
        self, id: str, info: ClientInfo, peer: Peer, queue_limit: int, counters: Counters | None = None,
        budget: SendBudget | None = None,
    ) -> None:
        self.id = id
        self._budget = budget
        self.info = info
        self.peer = peer
        self.queue_limit = queue_limit
        self._counters = counters if counters is not None else Counters()
        self._queue: deque[bytes] | None = None
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.denied_sent = False
        self.opened_at = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        if self._queue is None and self._write_now(frame):
            return
        size = len(frame)
        budget = self._budget
        if self._queued_bytes + size > self.queue_limit or (budget is not None and budget.queued + size > budget.limit):
            self._counters.inc("collab_send_queue_overflows_total")
            self.close(CloseCode.TRY_AGAIN_LATER, "send queue full: the client is not reading")
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(frame)
        self._queued_bytes += size
        if budget is not None:
            budget.queued += size
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _write_now(self, frame: bytes) -> bool:
        try:
            written = self.peer.write(frame)
        except Exception:  # the connection is going away; the read loop will notice
            return False
        if written:
            self.bytes_out += len(frame)
        return written

    # -- what differs between dialects (y-websocket here; `hocuspocus.HocuspocusConnection`) --

    def edit_refused(self, known: Callable[[bool], bool] | None) -> None:
        """A read-only client sent an edit. For a sync step 2, `known(thorough)` tells whether it
        brings nothing new (`thorough`: worth copying the document to find out). y-websocket hears
        why once; its provider has no acknowledgements."""
        if not self.denied_sent:
            self.denied_sent = True
            self.send(encode_permission_denied("read-only: this connection may not edit the document"))

    def edits_durable(self, count: int) -> None:
        """`count` edits of this connection are stored (only called when `acknowledges`)."""

    def send_stateless(self, payload: str) -> None:
        """An application message for the document; y-websocket has no such message."""

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def close(self, code: int, reason: str) -> None:
        """Close once; queued frames are discarded (the peer resyncs on reconnect)."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        self._drop_queue()
        # The writer may be blocked on a peer that does not read: do not wait for it.
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._send_close(), name=f"close-{self.id}")

    async def _send_close(self) -> None:
        try:
            closing = self.peer.close(self.close_code or 1000, self.close_reason[:120])
            await asyncio.wait_for(closing, self.CLOSE_TIMEOUT)
        except TimeoutError:
            # The peer does not read, so the close frame cannot even be written: drop the TCP
            # connection rather than hold its buffers for as long as it keeps its window shut.
            self.abort()
        except Exception as exc:
            log.debug("closing %s: %s", self.id, exc)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.peer.abort()

    def _drop_queue(self) -> None:
        if self._budget is not None:
            self._budget.queued -= self._queued_bytes
        self._queue = None
        self._queued_bytes = 0

    async def _drain(self) -> None:
        """Send the backlog in order, then go away (the next frame is written directly again)."""
        try:
            while self._queue and not self.closing:
                frame = self._queue.popleft()
                self._queued_bytes -= len(frame)
                if self._budget is not None:
                    self._budget.queued -= len(frame)
                await self.peer.send(frame)
                self.bytes_out += len(frame)
            self._queue = None
        except Exception as exc:  # the socket went away under us
            log.debug("writer for %s stopped: %s", self.id, exc)
            self.closing = True
            self._drop_queue()

    @property
    def settled(self) -> bool:
        """Nothing of it is in flight: no backlog being written, no close frame on its way."""
        return (self._writer is None or self._writer.done()) and (self._closer is None or self._closer.done())

    async def finish(self) -> None:
        """Wait briefly for the backlog and the close frame (after the read loop ended)."""
        self.closing = True
        for task in (self._writer, self._closer):
            if task is None or task.done():
                continue
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                task.cancel()
