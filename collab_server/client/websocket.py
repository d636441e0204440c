"""A y-websocket client in Python (pycrdt): for desktop apps, scripts, tests and the load tester.

It speaks the same protocol as the npm WebsocketProvider: on open it sends sync step 1 and
its awareness, answers the server's step 1 with step 2, and sends every local transaction
as an update. `synced` is set when the server's step 2 has been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Self

import orjson
import websockets
from pycrdt import Doc, TransactionEvent

from collab_server.core.awareness import decode_entries, encode_entries
from collab_server.core.protocol import (
    Kind,
    decode,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
)


class YClient:
    def __init__(
        self,
        url: str,
        doc: Doc[Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        max_size: int | None = 64 * 1024 * 1024,
        on_update: Callable[[bytes], None] | None = None,
    ) -> None:
        self.url = url
        self.doc = doc if doc is not None else Doc()
        self.headers = headers or {}
        self.max_size = max_size
        self.on_update = on_update
        self.ws: websockets.ClientConnection | None = None
        self.synced = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.permission_denied: str | None = None
        self.remote_awareness: dict[int, Any] = {}
        self.awareness_clock = 0
        self.local_state: dict[str, Any] | None = None
        self._applying_remote = False
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription = self.doc.observe(self._on_local_update)
        self.received_updates = 0

    @property
    def client_id(self) -> int:
        return int(self.doc.client_id)

    async def connect(self, timeout: float = 10.0, wait_synced: bool = True) -> Self:
        """Connect, or reconnect once closed: the sync exchange then sends the server whatever it lacks
        (edits made offline included), as the npm provider does, so nothing queued offline is replayed."""
        if self.ws is not None:
            if not self.closed.is_set():
                raise RuntimeError("already connected")
            await self.wait_closed(0)
            self.synced.clear()
            self.closed.clear()
            self.close_code, self.close_reason, self.permission_denied = None, "", None
            self.remote_awareness.clear()
            self._outbox = asyncio.Queue()
        try:
            self.ws = await websockets.connect(
                self.url, max_size=self.max_size, additional_headers=self.headers, compression=None,
                open_timeout=timeout, ping_interval=None,
            )
        except BaseException:
            if self.ws is not None:
                self.closed.set()  # still the closed socket: a later connect() may try again
            raise
        self._tasks = [
            asyncio.create_task(self._reader(), name="yclient-reader"),
            asyncio.create_task(self._writer(), name="yclient-writer"),
        ]
        self._send(encode_sync_step1(self.doc.get_state()))
        if self.local_state is not None:
            self._send(self._awareness_frame(self.local_state))
        if wait_synced:
            await self.wait_synced(timeout)
        return self

    async def wait_synced(self, timeout: float = 10.0) -> None:
        synced = asyncio.ensure_future(self.synced.wait())
        closed = asyncio.ensure_future(self.closed.wait())
        _, pending = await asyncio.wait({synced, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not self.synced.is_set():
            state = f"closed={self.closed.is_set()} code={self.close_code} {self.close_reason}"
            raise ConnectionError(f"not synced: {state}")

    def _send(self, frame: bytes) -> None:
        self._outbox.put_nowait(frame)

    def send_raw(self, frame: bytes | str) -> None:
        """Send an arbitrary frame (tests use it for malformed input)."""
        self._outbox.put_nowait(frame)  # type: ignore[arg-type]

    def _on_local_update(self, event: TransactionEvent) -> None:
        if self._applying_remote or self.closed.is_set():  # offline: the next sync exchange carries it
            return
        self._send(encode_update(event.update))

    def _awareness_frame(self, state: dict[str, Any] | None) -> bytes:
        self.awareness_clock += 1
        body = b"null" if state is None else orjson.dumps(state)
        return encode_awareness(encode_entries([(self.client_id, self.awareness_clock, body)]))

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        self.local_state = state
        if self.ws is not None:
            self._send(self._awareness_frame(state))

    def apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying_remote = False

    async def _reader(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    continue
                msg = decode(frame)
                if msg.kind is Kind.SYNC_STEP1:
                    self._send(encode_sync_step2(self.doc.get_update(msg.payload)))
                elif msg.kind is Kind.SYNC_STEP2:
                    self.apply_remote(msg.payload)
                    self.synced.set()
                elif msg.kind is Kind.SYNC_UPDATE:
                    self.received_updates += 1
                    self.apply_remote(msg.payload)
                    if self.on_update is not None:
                        self.on_update(msg.payload)
                elif msg.kind is Kind.AWARENESS:
                    for client_id, _clock, state in decode_entries(msg.payload):
                        if client_id == self.client_id:
                            continue
                        if state == b"null":
                            self.remote_awareness.pop(client_id, None)
                        else:
                            self.remote_awareness[client_id] = orjson.loads(state)
                elif msg.kind is Kind.AUTH:
                    self.permission_denied = msg.payload.decode(errors="replace")
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.ws is not None and self.ws.close_code is not None:
                self.close_code = self.ws.close_code
                self.close_reason = self.ws.close_reason or ""
            self.closed.set()
            self._outbox.put_nowait(None)

    async def _writer(self) -> None:
        assert self.ws is not None
        while True:
            frame = await self._outbox.get()
            if frame is None:
                return
            try:
                await self.ws.send(frame)
            except websockets.ConnectionClosed:
                return

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.01)

    async def close(self, code: int = 1000) -> None:
        if self.ws is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code), 5)
        await self.wait_closed()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ws is not None and self.close_code is None and self.ws.close_code is not None:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""

    def abort(self) -> None:
        """Drop the TCP connection with no close frame (a crashed client or a dead network)."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
