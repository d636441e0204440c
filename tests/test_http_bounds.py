"""HTTP bounds below Starlette: request line + headers size (431) and time (408), on every request
(the WebSocket upgrade included), with the server serving everyone else meanwhile."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson

from collab_server.client import YClient
from tests.waiting import eventually


async def _read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


def _status_and_body(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


async def test_oversized_headers_get_431_and_memory_stays_bounded(make_server) -> None:
    server = await make_server(max_header_bytes=16 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent, response = 0, b""
    for _ in range(400):  # 400 x 64 KiB = 25 MiB of one header line, unless answered first
        writer.write(b"a" * 65536)
        await writer.drain()
        sent += 65536
        try:
            response = await asyncio.wait_for(reader.read(65536), 0.01)
            break
        except TimeoutError:
            continue
    response += await _read_all(reader, 5)
    assert sent < 4 * 1024 * 1024, f"answered only after {sent} bytes"
    status, body = _status_and_body(response)
    assert status == 431 and body["error"]["code"] == "request_header_fields_too_large"  # type: ignore[index]
    writer.close()
    assert (await server.get("/healthz")).status_code == 200
    # A large but allowed header is fine.
    assert (await server.get("/healthz", headers={"X-Fine": "b" * 8000})).status_code == 200


async def test_silent_and_slow_sockets_are_closed_after_the_header_timeout(make_server) -> None:
    server = await make_server(header_timeout_seconds=1.0)
    silent_r, silent_w = await asyncio.open_connection("127.0.0.1", server.port)
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", server.port)
    slow_w.write(b"GET /ws/doc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never finished
    started = time.monotonic()
    assert _status_and_body(await _read_all(silent_r, 5))[0] == 408  # nothing sent at all
    status, body = _status_and_body(await _read_all(slow_r, 5))
    assert status == 408 and body["error"]["code"] == "request_timeout"  # type: ignore[index]
    assert time.monotonic() - started < 3
    # A client that keeps talking normally is not cut: requests on one keep-alive connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        await reader.readexactly(length)
        await asyncio.sleep(0.6)  # 1.8 s in all: longer than the header timeout, idle between requests
    writer.close()
    for w in (silent_w, slow_w):
        w.close()
    await eventually(lambda: server.get("/healthz"), lambda r: r.status_code == 200)


async def test_one_address_holds_at_most_its_cap_of_sockets_and_trusted_proxies_are_exempt(make_server) -> None:
    server = await make_server(max_connections_per_address=3, trusted_proxies=())
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    client = await YClient(server.ws_url(str(uuid.uuid4()))).connect()  # the third: an upgraded socket
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    status, body = _status_and_body(await _read_all(reader, 5))  # answered at accept, without a request
    assert status == 429 and body["error"]["code"] == "too_many_connections"  # type: ignore[index]
    writer.close()
    # A socket given back (an idle one, then the WebSocket) makes room for exactly one more.
    idle.pop()[1].close()
    await eventually(lambda: server.get("/healthz"), lambda r: r.status_code == 200, what="room after a close")
    idle.append(await asyncio.open_connection("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert _status_and_body(await _read_all(reader, 5))[0] == 429
    writer.close()
    await client.close()
    await eventually(lambda: server.get("/healthz"), lambda r: r.status_code == 200, what="room after a WebSocket")
    for _, w in idle:
        w.close()

    # Behind a trusted proxy every user shares its address: no cap there.
    proxied = await make_server(max_connections_per_address=3)  # loopback is trusted by default
    held = [await asyncio.open_connection("127.0.0.1", proxied.port) for _ in range(6)]
    assert (await proxied.get("/healthz")).status_code == 200
    for _, w in held:
        w.close()
