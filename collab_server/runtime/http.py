"""uvicorn's httptools protocol with the two bounds it lacks: header size and header time.

uvicorn accepts a protocol class for `http=` (as it does for `ws=`); this one is its own
`HttpToolsProtocol` plus, for every request until its headers are complete (the WebSocket upgrade
included): at most `max_header_bytes` of request line and headers (past it 431, JSON, and the
connection is closed a second later — httptools would otherwise buffer a 100 MB header line), and at most
`header_timeout` seconds (past it 408 and close: a silent socket or a slow-loris holds a
descriptor otherwise, measured for ever). Between requests uvicorn's own keep-alive timeout applies.
And at accept, the socket is counted against its address's cap (`AddressSockets`, found in the
lifespan state uvicorn hands every protocol): past it, 429 and close.
Only the parser callbacks and the public `transport` are used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from collab_server.access.limits import peer_address
from collab_server.transport.websocket import STATE_KEY, Sockets

_REASONS = {408: b"Request Timeout", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


def _response(status: int, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        body,
    ))


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    header_timeout = 10.0

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(config, server_state, app_state, *args, **kwargs)
        sockets = app_state.get(STATE_KEY)
        self._sockets: Sockets | None = sockets if isinstance(sockets, Sockets) else None
        self._header_bytes = 0  # bytes fed while a request's headers are incomplete
        self._in_headers = True  # waiting for (the rest of) a request's headers
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        addresses = self._sockets.addresses if self._sockets is not None else None
        if addresses is not None and not addresses.acquire(transport, peer_address(transport)):
            self._refuse(429, "too_many_connections",
                         f"{addresses.limit} connections already open from this address")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._sockets is not None:
            self._sockets.addresses.release(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            if self._header_bytes > self.max_header_bytes:
                return  # refused already; the connection is closing
            if self._header_timer is None:  # the next request of a keep-alive connection begins
                self._arm()
            self._header_bytes += len(data)  # may overshoot by one read; the check below stops it
        super().data_received(data)
        if self._in_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse(431, "request_header_fields_too_large",
                         f"request line and headers over {self.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._in_headers = True  # the timer starts with the next request's first byte
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(408, "request_timeout", f"request headers not received within {self.header_timeout:g} s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer, then stop: what the client still sends is discarded for a moment (closing
        with unread input would reset the connection and lose the answer), then it is closed."""
        self._header_bytes = self.max_header_bytes + 1
        self._in_headers = True
        self._disarm()
        transport = self.transport
        transport.write(_response(status, code, message))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(1.0, transport.close)


def bounded_http(max_header_bytes: int, header_timeout: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these bounds."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout},
    )
