"""One client connection: who it is, and a bounded send queue drained by its own writer.

Fan-out calls `send`, which never awaits: a slow reader only grows its own queue, and
past `queue_limit` bytes it is closed (1013) instead of holding memory or the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from .metrics import METRICS
from .protocol import CloseCode
from .ratelimit import TokenBucket

log = logging.getLogger("collab.connection")

SendBytes = Callable[[bytes], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


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


class Connection:
    """Fan-out calls `send`, which never awaits. When the socket can take the frame it is
    written at once, synchronously (no task switch, no per-connection writer task while
    idle); otherwise it waits in a queue drained by a writer task that exists only while
    there is a backlog."""

    __slots__ = (
        "_close", "_closer", "_proto", "_queue", "_queued_bytes", "_send_bytes", "_writer", "bucket",
        "bytes_in", "bytes_out", "close_code", "close_reason", "closing", "denied_sent", "id", "info",
        "messages_in", "opened_at", "queue_limit", "reader", "stuck_checks", "transport",
    )

    def __init__(
        self, id: str, info: ClientInfo, queue_limit: int, send_bytes: SendBytes, close: Close, proto: Any = None
    ) -> None:
        self.id = id
        self.info = info
        self.queue_limit = queue_limit
        self._send_bytes = send_bytes
        self._close = close
        # uvicorn's sansio WebSocket protocol, when we run under it: enables the direct path.
        self._proto = proto if _supports_direct_send(proto) else None
        self.transport: Any = getattr(proto, "transport", None)
        self._queue: deque[bytes] | None = None
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[object] | None = None  # the task blocked in receive(), woken on close
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.denied_sent = False
        self.opened_at = time.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.bucket: TokenBucket | None = None
        self.stuck_checks = 0

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        if self._queue is None and self._direct(frame):
            return
        size = len(frame)
        if self._queued_bytes + size > self.queue_limit:
            METRICS.inc("collab_send_queue_overflows_total")
            self.close(CloseCode.TRY_AGAIN_LATER, "send queue full: the client is not reading")
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(frame)
        self._queued_bytes += size
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _direct(self, frame: bytes) -> bool:
        """Write now if the socket is writable (what uvicorn's ASGI send does after its await)."""
        proto = self._proto
        if proto is None or not proto.writable.is_set() or proto.close_sent or proto.disconnected:
            return False
        try:
            proto.conn.send_binary(frame)
            proto.transport.write(b"".join(proto.conn.data_to_send()))
        except Exception:  # the connection is going away; the read loop will notice
            return False
        self.bytes_out += len(frame)
        return True

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
        self._queue = None
        self._queued_bytes = 0
        # The writer may be blocked on a peer that does not read: do not wait for it.
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        if self.reader is not None and self.reader is not asyncio.current_task() and not self.reader.done():
            self.reader.cancel()
        self._closer = asyncio.create_task(self._send_close(), name=f"close-{self.id}")

    async def _send_close(self) -> None:
        try:
            await asyncio.wait_for(self._close(self.close_code or 1000, self.close_reason[:120]), 2)
        except TimeoutError:
            # The peer does not read, so the close frame cannot even be written: drop the TCP
            # connection rather than hold its buffers for as long as it keeps its window shut.
            self.abort()
        except Exception as exc:
            log.debug("closing %s: %s", self.id, exc)

    def abort(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()

    async def _drain(self) -> None:
        """Send the backlog in order, then go away (the next frame goes direct again)."""
        try:
            while self._queue and not self.closing:
                frame = self._queue.popleft()
                self._queued_bytes -= len(frame)
                await self._send_bytes(frame)
                self.bytes_out += len(frame)
            self._queue = None
        except Exception as exc:  # the socket went away under us
            log.debug("writer for %s stopped: %s", self.id, exc)
            self.closing = True

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


def _supports_direct_send(proto: Any) -> bool:
    return all(hasattr(proto, name) for name in ("conn", "writable", "transport", "close_sent", "disconnected"))
