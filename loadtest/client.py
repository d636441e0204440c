"""A minimal WebSocket client on an asyncio Protocol: every frame of one TCP read in one callback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import resource
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension on every platform we use

    def _apply_mask(data: bytes, mask: bytes) -> bytes:  # type: ignore[misc]
        if not data:
            return data
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")




_randbytes = random.randbytes
_SMALL_HEADERS = [bytes((0x82, 0x80 | n)) for n in range(126)]  # FIN + binary, masked, length n
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER = 64 * 1024


# -- a minimal WebSocket client ------------------------------------------------------------


class HandshakeError(ConnectionError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WSClient(asyncio.Protocol):
    """RFC 6455 client on a raw asyncio Protocol: binary messages in and out, pings answered.

    `on_message(payload, t)` is called for every complete binary message, with `t` the
    perf_counter reading taken once when the TCP read that completed it arrived.
    `on_close(code, reason)` is called once when the connection is gone.
    """

    def __init__(
        self,
        host: str,
        path: str,
        on_message: Callable[[bytes, float], None],
        on_close: Callable[[int, str], None],
        max_message: int = 256 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.path = path
        self.on_message = on_message
        self.on_close = on_close
        self.max_message = max_message
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.open = False
        self.close_sent = False
        self.close_code = 1006
        self.close_reason = ""
        self._key = base64.b64encode(os.urandom(16))
        self._head = b""
        self._buf = b""
        self._chunks: list[bytes] | None = None  # a large frame being gathered
        self._chunks_len = 0
        self._need = 0
        self._fragments: list[bytes] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(  # type: ignore[union-attr]
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: collab-server-loadtest\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self._key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if not self.done.done():
            self.done.set_result(None)
            self.on_close(self.close_code, self.close_reason)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            data = self._handshake(data)
            if not data:
                return
        now = time.perf_counter()
        if self._chunks is not None:
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks = None
        elif self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            if length > self.max_message:
                self._fail(1009, "message too big")
                return
            masked = b1 & 0x80
            if masked:
                hdr += 4
            end = pos + hdr + length
            if end > n:
                if end - pos > 65536:
                    self._chunks = [data[pos:]]
                    self._chunks_len = n - pos
                    self._need = end - pos
                    return
                break
            payload = data[pos + hdr : end]
            if masked:  # servers must not mask, but tolerate it
                payload = _apply_mask(payload, data[pos + hdr - 4 : pos + hdr])
            pos = end
            opcode = b0 & 0x0F
            if opcode == 2:
                if b0 & 0x80:
                    self.on_message(payload, now)
                else:
                    self._fragments = [payload]
            elif opcode == 0:
                if self._fragments is not None:
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        message = b"".join(self._fragments)
                        self._fragments = None
                        self.on_message(message, now)
            elif opcode == 9:
                self._write(payload, 10)
            elif opcode == 8:
                self._on_close_frame(payload)
                return
            # text (1) and pong (10) frames are ignored
            if self.transport is None or self.transport.is_closing():
                return
        if pos < n:
            self._buf = data[pos:]

    # -- handshake and closing ------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEADER:
                self._refuse(0, "response header too large")
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            self._refuse(status, f"upgrade refused: HTTP {status} {rest[:200]!r}")
            return b""
        accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest())
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != accept:
            self._refuse(status, "bad Sec-WebSocket-Accept")
            return b""
        self.open = True
        self.opened.set_result(None)
        return rest

    def _refuse(self, status: int, message: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(status, message))
        self.close_code = 1006
        self.close_reason = message
        if self.transport is not None:
            self.transport.close()

    def _on_close_frame(self, payload: bytes) -> None:
        self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self.close_reason = payload[2:].decode(errors="replace")
        if not self.close_sent:
            self.close_sent = True
            self._write(payload[:2], 8)
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self.close(code, reason)
        if self.transport is not None:
            self.transport.abort()

    def _write(self, payload: bytes, opcode: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
        mask = _randbytes(4)
        transport.write(header + mask + _apply_mask(payload, mask))

    # -- public ---------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Send one binary message (dropped silently once closing)."""
        if not self.open or self.close_sent:
            return
        n = len(payload)
        if n < 126:  # the hot path: one small update, one write
            mask = _randbytes(4)
            self.transport.write(_SMALL_HEADERS[n] + mask + _apply_mask(payload, mask))  # type: ignore[union-attr]
        else:
            self._write(payload, 2)

    @property
    def write_buffer(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; `done` resolves when the TCP connection is gone."""
        if self.transport is None or self.close_sent:
            return
        self.close_sent = True
        if self.open:
            self._write(code.to_bytes(2, "big") + reason.encode()[:120], 8)
        else:
            self.transport.close()

    async def aclose(self, timeout: float = 2.0) -> None:
        self.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), timeout)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def ws_connect(
    url: str,
    on_message: Callable[[bytes, float], None],
    on_close: Callable[[int, str], None],
    timeout: float = 10.0,
    bind: Callable[[WSClient], None] | None = None,
) -> WSClient:
    """Open a WebSocket to `url` (ws:// only) and complete the handshake within `timeout`.
    `bind` receives the client before any byte arrives (a message may come with the handshake)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs are supported, not {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    netloc = host if parts.port is None else f"{host}:{port}"

    def factory() -> WSClient:
        proto = WSClient(netloc, path, on_message, on_close)
        if bind is not None:
            bind(proto)
        return proto

    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(factory, host, port)
        try:
            await proto.opened
        except BaseException:
            proto.abort()
            raise
    return proto


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


