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
from dataclasses import dataclass, field
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


@dataclass(eq=False, slots=True)
class Connection:
    id: str
    info: ClientInfo
    queue_limit: int
    _send_bytes: SendBytes
    _close: Close
    _queue: deque[bytes] = field(default_factory=deque)
    _queued_bytes: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _writer: asyncio.Task[None] | None = None
    _closer: asyncio.Task[None] | None = None
    reader: asyncio.Task[object] | None = None  # the task blocked in receive(), woken on close
    closing: bool = False
    close_code: int | None = None
    close_reason: str = ""
    denied_sent: bool = False
    opened_at: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    last_activity: float = field(default_factory=time.time)
    bucket: TokenBucket | None = None
    transport: Any = None  # the asyncio transport under the WebSocket, to abort a stuck peer
    stuck_checks: int = 0

    def start(self) -> None:
        self._writer = asyncio.create_task(self._drain(), name=f"writer-{self.id}")

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        size = len(frame)
        if self._queued_bytes + size > self.queue_limit:
            METRICS.inc("collab_send_queue_overflows_total")
            self.close(CloseCode.TRY_AGAIN_LATER, "send queue full: the client is not reading")
            return
        self._queue.append(frame)
        self._queued_bytes += size
        self._wake.set()

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
        self._queue.clear()
        self._queued_bytes = 0
        self._wake.set()
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
        try:
            while not self.closing:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                frame = self._queue.popleft()
                self._queued_bytes -= len(frame)
                await self._send_bytes(frame)
                self.bytes_out += len(frame)
        except Exception as exc:  # the socket went away under us
            log.debug("writer for %s stopped: %s", self.id, exc)
            self.closing = True

    async def finish(self) -> None:
        """Stop the writer (after the read loop ended)."""
        self.closing = True
        self._wake.set()
        for task in (self._writer, self._closer):
            if task is None or task.done():
                continue
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                task.cancel()
