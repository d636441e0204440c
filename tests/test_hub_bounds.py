"""Hard bounds of the hub: malformed frames, oversized frames, slow readers, limits and liveness.

Each malformed frame must close only the offending connection, with the documented close code,
while the room (its other clients, its document) carries on untouched. Clients are the pycrdt
YClient, raw `websockets` connections, and raw TCP sockets with a hand-made WebSocket upgrade for
peers that misbehave below the WebSocket layer (never read, never answer pings).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import psutil
import pytest
import websockets
from pycrdt import Doc, Text

from collab_server.client import YClient
from collab_server.core.awareness import encode_entries
from collab_server.core.protocol import encode_awareness, encode_sync_step1, encode_sync_step2, encode_update
from collab_server.storage.postgres import open_document_id
from tests.waiting import eventually

INITIAL = "intact text: ünïcødé 漢字 😀"


# -- helpers ---------------------------------------------------------------------------------




def text_of(client: YClient) -> str:
    return str(client.doc.get("content", type=Text))


def server_text(server: Any, name: str) -> str:
    return str(server.ctx.hub.get(open_document_id(name)).doc.get("content", type=Text))


def room_of(server: Any, name: str) -> Any:
    return server.ctx.hub.get(open_document_id(name))


def foreign_update(text: str) -> bytes:
    """A valid update from a client that is not in the room."""
    doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


@dataclass
class Peers:
    """A writer and a reader in one room, the document holding INITIAL."""

    name: str
    writer: YClient
    reader: YClient

    async def close(self) -> None:
        await asyncio.gather(self.writer.close(), self.reader.close())


@contextlib.asynccontextmanager
async def peers(server: Any, name: str) -> AsyncIterator[Peers]:
    writer = await YClient(server.ws_url(name)).connect()
    reader = await YClient(server.ws_url(name)).connect()
    p = Peers(name, writer, reader)
    try:
        writer.doc.get("content", type=Text).insert(0, INITIAL)
        await reader.wait_for(lambda: text_of(reader) == INITIAL)
        await eventually(lambda: server_text(server, name) == INITIAL, what="server has the initial text")
        yield p
    finally:
        await p.close()


async def assert_room_unharmed(server: Any, p: Peers, tag: str) -> None:
    """The document is exactly INITIAL, the peers are still in the room, and edits still flow."""
    assert server_text(server, p.name) == INITIAL, "the bad frame changed the document"
    assert text_of(p.reader) == INITIAL
    room = room_of(server, p.name)
    assert len(room.connections) == 2, "a well-behaved peer was dropped"
    assert not p.writer.closed.is_set() and not p.reader.closed.is_set()
    text = p.writer.doc.get("content", type=Text)
    text += tag
    await p.reader.wait_for(lambda: text_of(p.reader) == INITIAL + tag)
    await eventually(lambda: server_text(server, p.name) == INITIAL + tag, what="server has the edit")
    late = await YClient(server.ws_url(p.name)).connect()
    try:
        assert text_of(late) == INITIAL + tag
    finally:
        late.abort()


async def send_and_wait_close(url: str, frame: bytes | str, timeout: float = 5.0) -> tuple[int | None, str]:
    """Connect raw, send one frame, read until the server closes; return (close code, reason)."""
    async with websockets.connect(url, max_size=None, compression=None, ping_interval=None) as ws:
        await ws.send(frame)
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await ws.recv()
        return ws.close_code, ws.close_reason or ""


def metric_samples(text: str, name: str) -> dict[str, float]:
    """{label value: sample} of a labelled counter in Prometheus text."""
    out = {}
    for m in re.finditer(rf'^{name}{{\w+="((?:[^"\\]|\\.)*)"}} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def metric_value(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# Raw TCP WebSocket peers (for clients that misbehave below the WebSocket layer).


async def raw_upgrade(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    """Open a TCP socket and complete a WebSocket handshake by hand; return the non-blocking socket."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: leave every WebSocket frame unread in the kernel
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One client-to-server WebSocket frame (FIN, masked)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def read_until_close(sock: socket.socket, timeout: float = 5.0) -> tuple[list[bytes], int | None, str]:
    """Read server frames from a raw socket until a close frame or EOF: (binary payloads, close code, reason)."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    payloads: list[bytes] = []

    async def need(n: int) -> bool:
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, 1 << 20)
            if not chunk:
                return False
            buf.extend(chunk)
        return True

    async with asyncio.timeout(timeout):
        while await need(2):
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if length == 126:
                if not await need(4):
                    break
                length, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if not await need(10):
                    break
                length, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if not await need(offset + length):
                break
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return payloads, code, payload[2:].decode(errors="replace")
            if opcode == 0x2:
                payloads.append(payload)
    return payloads, None, "EOF without a close frame"


def server_side_socket_open(server: Any, client: socket.socket) -> bool:
    """Does the server process still hold the TCP socket whose peer is `client`?"""
    peer_port = client.getsockname()[1]
    return any(
        c.laddr and c.raddr and c.laddr.port == server.port and c.raddr.port == peer_port
        for c in psutil.Process().net_connections(kind="tcp")
    )


# -- malformed frames ------------------------------------------------------------------------

_REAL_UPDATE = foreign_update("EVIL " * 40)

MALFORMED: list[tuple[str, bytes | str, int, str]] = [
    ("text-frame", "hello, I am text", 1003, "text frames are not supported"),
    ("empty-frame", b"", 4400, "empty frame"),
    ("unknown-message-type", b"\x07\x00", 4400, "unknown message type 7"),
    ("unknown-sync-type", b"\x00\x05\x00", 4400, "unknown sync message type 5"),
    ("truncated-varint-type", b"\x80", 4400, "truncated varint"),
    ("truncated-varint-length", b"\x00\x02\xff", 4400, "truncated varint"),
    ("length-past-end", b"\x00\x02\x0a\x01\x02", 4400, "length past the end of the frame"),
    ("length-past-end-awareness", b"\x01\x05\x01", 4400, "length past the end of the frame"),
    ("varint-11-bytes", b"\x00\x02" + b"\xff" * 10 + b"\x01", 4400, "varint over 64 bits"),
    ("varint-65-bits", b"\x00\x02" + b"\xff" * 9 + b"\x02", 4400, "varint over 64 bits"),
    ("trailing-bytes", encode_update(_REAL_UPDATE) + b"\x00", 4400, "trailing bytes"),
    ("invalid-yjs-update", encode_update(b"garbage-not-an-update"), 1007, "invalid Yjs update"),
    ("truncated-yjs-update", encode_update(_REAL_UPDATE[: len(_REAL_UPDATE) // 2]), 1007, "invalid Yjs update"),
    ("invalid-step2", b"\x00\x01" + bytes([4]) + b"\xff\xff\xff\xff", 1007, "invalid Yjs update"),
    ("invalid-state-vector", encode_sync_step1(b"\xff\xff"), 1007, "invalid state vector"),
    (  # over COLLAB_MAX_AWARENESS_BYTES (64 KiB), well under the frame limit
        "awareness-too-large",
        encode_awareness(encode_entries([(5, 1, orjson.dumps({"name": "a" * (70 * 1024)}))])),
        1009,
        "awareness update too large",
    ),
]


@pytest.mark.parametrize(("frame", "code", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_malformed_frame_closes_only_the_sender(server, frame: bytes | str, code: int, reason: str) -> None:
    async with peers(server, "malformed") as p:
        got_code, got_reason = await send_and_wait_close(server.ws_url("malformed"), frame)
        assert got_code == code, (got_code, got_reason)
        assert reason in got_reason
        await eventually(lambda: server.ctx.hub.connections == 2, what="bad connection left the hub")
        await assert_room_unharmed(server, p, "+ok")


async def test_oversized_frame_closes_1009_and_room_carries_on(make_server) -> None:
    server = await make_server(max_message_bytes=64 * 1024)
    async with peers(server, "oversized") as p:
        # A perfectly valid update, just too large: 100 KiB of text.
        frame = encode_update(foreign_update("x" * (100 * 1024)))
        assert len(frame) > 100 * 1024
        code, _ = await send_and_wait_close(server.ws_url("oversized"), frame)
        assert code == 1009
        await eventually(lambda: server.ctx.hub.connections == 2, what="oversized connection left the hub")
        await assert_room_unharmed(server, p, "+small")
        # Just under the limit is fine.
        ok = await YClient(server.ws_url("oversized")).connect()
        try:
            ok.doc.get("content", type=Text).insert(0, "y" * (60 * 1024))
            await p.reader.wait_for(lambda: text_of(p.reader).startswith("y" * (60 * 1024)))
        finally:
            ok.abort()


async def test_awareness_entry_with_invalid_json_is_dropped_not_relayed(server) -> None:
    async with peers(server, "aw-json") as p:
        dropped_before = server.ctx.counters.get("collab_awareness_dropped_total")
        good = orjson.dumps({"user": "good", "cursor": 3})
        payload = encode_entries([(1111, 1, good), (2222, 1, b'{"user": "bad", '), (3333, 1, b"\xff\xfe")])
        async with websockets.connect(server.ws_url("aw-json"), max_size=None, compression=None) as ws:
            await ws.send(encode_awareness(payload))
            await p.reader.wait_for(lambda: 1111 in p.reader.remote_awareness)
            assert p.reader.remote_awareness[1111] == {"user": "good", "cursor": 3}
            # The valid entry was relayed in the frame that would have carried the others.
            assert 2222 not in p.reader.remote_awareness and 3333 not in p.reader.remote_awareness
            assert server.ctx.counters.get("collab_awareness_dropped_total") - dropped_before == 2
            # The sender stays connected and can still edit.
            await ws.send(encode_update(foreign_update("[aw-sender]")))
            await p.reader.wait_for(lambda: "[aw-sender]" in text_of(p.reader))
            assert ws.close_code is None
            # A late joiner hears only the valid entry.
            late = await YClient(server.ws_url("aw-json")).connect()
            try:
                await late.wait_for(lambda: 1111 in late.remote_awareness)  # everyone's, in one frame
                assert set(late.remote_awareness) == {1111}
            finally:
                late.abort()
        assert set(room_of(server, "aw-json").awareness.states()) <= {1111}


async def test_too_many_awareness_client_ids_close_the_sender_and_leave_no_trace(make_server) -> None:
    server = await make_server(max_awareness_clients=8)
    async with peers(server, "aw-many") as p:
        async with websockets.connect(server.ws_url("aw-many"), max_size=None, compression=None) as ws:
            await ws.send(encode_awareness(encode_entries([(5000 + i, 1, b'{"u":1}') for i in range(8)])))
            await p.reader.wait_for(lambda: 5007 in p.reader.remote_awareness)
            await ws.send(encode_awareness(encode_entries([(6000 + i, 1, b'{"u":1}') for i in range(200)])))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008 and "more than 8 awareness client IDs" in ws.close_reason
        # Its clients are gone for the others, and the room holds none of them.
        await p.reader.wait_for(lambda: not any(c >= 5000 for c in p.reader.remote_awareness))
        assert not any(c >= 5000 for c in room_of(server, "aw-many").awareness.states())
        await assert_room_unharmed(server, p, "[after-awareness-flood]")


async def test_a_document_at_its_size_limit_refuses_edits_with_4413_and_413(make_server) -> None:
    server = await make_server(max_document_bytes=20_000)
    async with peers(server, "size-cap") as p:
        big = YClient(server.ws_url("size-cap"))
        await big.connect()
        big.doc.get("content", type=Text).insert(0, "z" * 30_000)
        await asyncio.wait_for(big.closed.wait(), 5)
        assert big.close_code == 4413 and "size limit (20000 bytes)" in (big.close_reason or "")
        await assert_room_unharmed(server, p, "[size-cap]")
        async with httpx.AsyncClient(base_url=server.http) as http:
            response = await http.post(
                "/api/documents/size-cap/updates", content=foreign_update("y" * 30_000),
                headers={"Content-Type": "application/octet-stream"},
            )
        assert response.status_code == 413, response.text
        assert "size limit" in response.json()["error"]["message"]
        assert server_text(server, "size-cap").startswith(INITIAL)


def dependent_edit(size: int) -> tuple[bytes, bytes]:
    """An edit and a second one that depends on it (its structs wait where the first is missing)."""
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc.get("content", type=Text).insert(0, "base ")
    doc.get("content", type=Text).insert(5, "w" * size)
    return updates[0], updates[1]


async def test_updates_waiting_for_missing_changes_are_bounded_4409_and_409(make_server, db) -> None:
    server = await make_server(max_pending_bytes=5000)
    async with peers(server, "pending") as p:
        async with websockets.connect(server.ws_url("pending"), max_size=None, compression=None) as ws:
            first, second = dependent_edit(1000)
            await ws.send(encode_sync_step2(second))  # held, and written ahead: nothing observed it
            await eventually(lambda: room_of(server, "pending").missing_bytes, lambda n: n > 0, what="held")
            await ws.send(encode_update(dependent_edit(3000)[1]))
            await ws.send(encode_update(dependent_edit(3000)[1]))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 4409 and "exceed 5000 bytes" in ws.close_reason
        await assert_room_unharmed(server, p, "[pending]")
        assert room_of(server, "pending").missing_bytes == 0  # released
        async with httpx.AsyncClient(base_url=server.http) as http:
            octets = {"Content-Type": "application/octet-stream"}
            for _ in range(2):
                response = await http.post("/api/documents/pending/updates", content=dependent_edit(3000)[1],
                                           headers=octets)
            assert response.status_code == 409 and "exceed 5000 bytes" in response.json()["error"]["message"]
            # The step 2's structs were stored: their dependency, arriving later, completes them.
            assert (await http.post("/api/documents/pending/updates", content=first, headers=octets)).is_success
        assert await server.ctx.wal.flush(10)
        await server.ctx.store.compact(open_document_id("pending"))
        state = await db.fetchval("SELECT yjs_state FROM documents WHERE id = $1", open_document_id("pending"))
        stored = Doc()
        stored.apply_update(state)
        assert "base " + "w" * 1000 in str(stored.get("content", type=Text))


async def test_metrics_count_rejected_frames_by_reason(server) -> None:
    before = (await server.get("/metrics")).text
    async with peers(server, "metrics") as p:
        for _name, frame, code, _reason in MALFORMED:
            got, why = await send_and_wait_close(server.ws_url("metrics"), frame)
            assert got == code, (got, why)
        after = (await server.get("/metrics")).text
        await assert_room_unharmed(server, p, "+m")
    was = metric_samples(before, "collab_rejected_frames_total")
    now = metric_samples(after, "collab_rejected_frames_total")
    expected: dict[str, int] = {}
    for _name, _frame, _code, reason in MALFORMED:
        label = next((k for k in now if reason in k or k in reason), f"<no label for {reason!r}>")
        expected[label] = expected.get(label, 0) + 1
    for label, count in expected.items():
        assert now.get(label, 0) - was.get(label, 0) == count, (label, now, was)
    assert "text frame" in now and "invalid Yjs update" in now and "varint over 64 bits" in now
    assert re.search(r'^collab_rejected_frames_total\{reason="unknown message type 7"\} \d+', after, re.M)
    closed = metric_samples(after, "collab_connections_closed_total")
    assert closed.get("4400", 0) >= 1 and closed.get("1007", 0) >= 1 and closed.get("1003", 0) >= 1


async def test_metrics_count_oversized_frames(make_server) -> None:
    """A frame over COLLAB_MAX_MESSAGE_BYTES is a rejected frame too, visible on /metrics right away."""
    server = await make_server(max_message_bytes=64 * 1024)
    before = (await server.get("/metrics")).text
    async with peers(server, "metrics-big"):
        code, _ = await send_and_wait_close(server.ws_url("metrics-big"), encode_update(b"\x00" * (100 * 1024)))
        assert code == 1009

        def deltas(after: str) -> tuple[float, float]:
            rejected = sum(metric_samples(after, "collab_rejected_frames_total").values()) - sum(
                metric_samples(before, "collab_rejected_frames_total").values()
            )
            closed = metric_samples(after, "collab_connections_closed_total")
            return rejected, closed.get("1009", 0) - metric_samples(before, "collab_connections_closed_total").get(
                "1009", 0)

        async def scrape() -> tuple[float, float]:
            return deltas((await server.get("/metrics")).text)

        # Visible within half a second of the 1009 close, as a rejected frame or a 1009 close.
        await eventually(scrape, lambda d: d[0] == 1 or d[1] == 1, timeout=0.5, what="the oversized frame on /metrics")


# -- slow readers ----------------------------------------------------------------------------


async def _flood_until_cut_off(writer: YClient, room: Any, victims: int) -> int:
    """Push 128 KiB updates until the room lost `victims` connections; return the characters sent."""
    text = writer.doc.get("content", type=Text)
    chunk = "z" * (128 * 1024)
    sent = 0
    start = len(room.connections)
    for _ in range(160):  # at most 20 MiB
        text += chunk
        sent += len(chunk)
        await asyncio.sleep(0.005)
        if len(room.connections) <= start - victims:
            break
    return sent


async def test_non_reading_client_is_cut_off_while_readers_get_everything(make_server) -> None:
    server = await make_server(send_queue_bytes=256 * 1024)
    overflows_before = server.ctx.counters.get("collab_send_queue_overflows_total")
    closed_before = server.ctx.counters.get("collab_connections_closed_total", ("code", "1013"))
    writer = await YClient(server.ws_url("flood")).connect()
    reader = await YClient(server.ws_url("flood")).connect()
    stalled = await raw_upgrade(server.port, "/ws/flood", rcvbuf=4096)
    try:
        room = room_of(server, "flood")
        await eventually(lambda: len(room.connections) == 3, what="non-reader joined")
        victim = next(c for c in room.connections if c.bytes_in == 0)
        started = time.monotonic()
        sent = await _flood_until_cut_off(writer, room, victims=1)
        assert len(room.connections) == 2, "the non-reader was never cut off"
        assert victim not in room.connections
        assert victim.close_code == 1013 and "send queue full" in victim.close_reason
        assert victim.queued_bytes == 0  # its queue was released
        assert time.monotonic() - started < 10
        assert server.ctx.counters.get("collab_send_queue_overflows_total") - overflows_before == 1
        # The reader got every single update, in full.
        await reader.wait_for(lambda: len(text_of(reader)) == sent, timeout=15)
        assert text_of(reader) == "z" * sent
        assert not reader.closed.is_set() and not writer.closed.is_set()
        assert server.ctx.hub.connections == 2
        # Once it reads again, the non-reader gets what was already in flight, then the 1013 close frame.
        frames, code, reason = await read_until_close(stalled)
        assert frames and frames[0][:2] == b"\x00\x00"  # the server's sync step 1 came first
        assert (code, reason) == (1013, "send queue full: the client is not reading")
        await eventually(
            lambda: server.ctx.counters.get("collab_connections_closed_total", ("code", "1013")) > closed_before,
            timeout=2, what="1013 close counted",
        )
    finally:
        stalled.close()
        await server.stop()
        await asyncio.gather(writer.close(), reader.close())


async def test_cut_off_non_reader_socket_is_released(make_server) -> None:
    """After the 1013 cut-off the server must not keep the TCP connection (and the megabytes queued in
    its kernel and transport buffers) for as long as the peer keeps its receive window shut."""
    server = await make_server(send_queue_bytes=256 * 1024, ping_interval=0.5, ping_timeout=1)
    writer = await YClient(server.ws_url("flood2")).connect()
    stalled = await raw_upgrade(server.port, "/ws/flood2", rcvbuf=4096)
    try:
        room = room_of(server, "flood2")
        await eventually(lambda: len(room.connections) == 2, what="non-reader joined")
        await _flood_until_cut_off(writer, room, victims=1)
        assert len(room.connections) == 1, "the non-reader was never cut off"
        cut_at = time.monotonic()
        assert server_side_socket_open(server, stalled)  # sanity: the probe sees it before the release
        # The writer answers pings; the non-reader doesn't either: both the 1013 close (gave up after 5 s)
        # and the keepalive (1.5 s) should end the socket. Allow 8 s.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: not server_side_socket_open(server, stalled), timeout=8)
        held = time.monotonic() - cut_at
        assert not server_side_socket_open(server, stalled), (
            f"the server still holds the cut-off non-reader's TCP socket {held:.1f}s after the cut-off"
        )
    finally:
        stalled.close()
        await server.stop()
        await writer.close()


# -- limits ----------------------------------------------------------------------------------


async def test_max_rooms_refuses_a_third_room(make_server) -> None:
    server = await make_server(max_rooms=2)
    hub = server.ctx.hub
    a = await YClient(server.ws_url("room-a")).connect()
    b = await YClient(server.ws_url("room-b")).connect()
    try:
        assert hub.room_count == 2
        async with websockets.connect(server.ws_url("room-c"), max_size=None, compression=None) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1013
            assert "room limit" in (ws.close_reason or "")
        assert hub.room_count == 2 and hub.connections == 2
        assert hub.get(open_document_id("room-c")) is None
        rows = "SELECT count(*) FROM documents WHERE id = $1"
        assert await server.ctx.pool.fetchval(rows, open_document_id("room-c")) == 0  # no row for a refused room
        # The refused client is not half-registered; an existing room still accepts newcomers.
        a2 = await YClient(server.ws_url("room-a")).connect()
        a2.doc.get("content", type=Text).insert(0, "still open")
        await a.wait_for(lambda: text_of(a) == "still open")
        # Once a room is unloaded (its last client left + 0.5 s grace) the third room opens.
        await b.close()
        await eventually(lambda: hub.room_count == 1, timeout=3, what="room-b unloaded")
        c = await YClient(server.ws_url("room-c")).connect()
        assert hub.room_count == 2
        assert await server.ctx.pool.fetchval(rows, open_document_id("room-c")) == 1
        a2.abort()
        c.abort()
    finally:
        await server.stop()
        await asyncio.gather(a.close(), b.close())


async def test_max_connections_refuses_a_third_connection(make_server) -> None:
    server = await make_server(max_connections=2)
    hub = server.ctx.hub
    a = await YClient(server.ws_url("conn-a")).connect()
    b = await YClient(server.ws_url("conn-b")).connect()
    try:
        for room in ("conn-a", "conn-c"):  # an open room or a new one: both refused
            async with websockets.connect(server.ws_url(room), max_size=None, compression=None) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1013
                assert "connection limit" in (ws.close_reason or "")
        assert hub.connections == 2
        assert hub.get(open_document_id("conn-c")) is None
        a.doc.get("content", type=Text).insert(0, "a works")
        await eventually(lambda: server_text(server, "conn-a") == "a works", what="a still edits")
        # A freed slot is usable again.
        b.abort()
        await eventually(lambda: hub.connections == 1, what="b left")
        c = await YClient(server.ws_url("conn-a")).connect()
        assert text_of(c) == "a works"
        assert hub.connections == 2
        c.abort()
    finally:
        await server.stop()
        await asyncio.gather(a.close(), b.close())


# -- liveness --------------------------------------------------------------------------------


async def test_client_not_answering_pings_is_closed(make_server) -> None:
    server = await make_server(ping_interval=0.5, ping_timeout=1)
    hub = server.ctx.hub
    observer = await YClient(server.ws_url("liveness")).connect()  # websockets answers pings while reading
    silent = await raw_upgrade(server.port, "/ws/liveness")
    try:
        await eventually(lambda: hub.connections == 2, what="silent client joined")
        loop = asyncio.get_running_loop()
        state = orjson.dumps({"user": "ghost"})
        await loop.sock_sendall(silent, masked_frame(encode_awareness(encode_entries([(777, 1, state)]))))
        await observer.wait_for(lambda: 777 in observer.remote_awareness)
        started = time.monotonic()
        # From now on it never reads and never answers a ping.
        await eventually(lambda: hub.connections == 1, timeout=4, what="silent client closed")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"closed after {elapsed:.2f}s"
        await observer.wait_for(lambda: 777 not in observer.remote_awareness, timeout=1)
        # The healthy client, connected before the silent one, lived through the ping rounds
        # that cut the silent one off.
        assert not observer.closed.is_set() and hub.connections == 1
        observer.doc.get("content", type=Text).insert(0, "alive")
        await eventually(lambda: server_text(server, "liveness") == "alive", what="observer still edits")
    finally:
        silent.close()
        await server.stop()
        await observer.close()


async def test_client_not_answering_pings_is_closed_even_with_unsent_data(make_server) -> None:
    """A peer that vanished while the server still had data for it (its TCP window is full: a big
    document load, a large paste) must also be closed by the keepalive, not kept until TCP gives up."""
    server = await make_server(ping_interval=0.5, ping_timeout=1)
    hub = server.ctx.hub
    observer = await YClient(server.ws_url("liveness-big")).connect()
    observer.doc.get("content", type=Text).insert(0, "q" * (6 * 1024 * 1024))
    await eventually(lambda: len(server_text(server, "liveness-big")) == 6 * 1024 * 1024, what="big doc")
    silent = await raw_upgrade(server.port, "/ws/liveness-big", rcvbuf=4096)
    try:
        loop = asyncio.get_running_loop()
        await eventually(lambda: hub.connections == 2, what="silent client joined")
        state = orjson.dumps({"user": "ghost"})
        await loop.sock_sendall(silent, masked_frame(encode_awareness(encode_entries([(888, 1, state)]))))
        await observer.wait_for(lambda: 888 in observer.remote_awareness)
        await loop.sock_sendall(silent, masked_frame(encode_sync_step1(b"\x00")))  # ask for the 6 MiB document
        started = time.monotonic()
        # From now on it never reads and never answers a ping.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: hub.connections == 1 and 888 not in observer.remote_awareness, timeout=5)
        elapsed = time.monotonic() - started
        assert hub.connections == 1 and 888 not in observer.remote_awareness, (
            f"a peer that stopped reading and answering pings is still connected {elapsed:.1f}s later "
            f"(hub.connections={hub.connections}, its awareness still shown to peers: "
            f"{888 in observer.remote_awareness})"
        )
        # ping_interval + ping_timeout = 1.5 s, plus a little to notice that the close cannot complete.
        assert elapsed < 4.0, f"closed after {elapsed:.2f}s"
        assert not observer.closed.is_set()
    finally:
        silent.close()
        await server.stop()
        await observer.close()


# -- lifecycle -------------------------------------------------------------------------------


async def test_client_close_is_finished_promptly(server, caplog: pytest.LogCaptureFixture) -> None:
    """When a client closes, the server's handler ends (close logged and counted) right away, not after
    a 5-second writer timeout; otherwise every clean close holds a task 5 s and delays shutdown."""
    caplog.set_level(logging.INFO, logger="collab.transport")
    document = str(open_document_id("prompt-close"))

    def closed_logged() -> bool:
        return any(
            r.getMessage() == "connection closed" and getattr(r, "document", None) == document for r in caplog.records
        )

    client = await YClient(server.ws_url("prompt-close")).connect()
    started = time.monotonic()
    await client.close()
    assert client.close_code == 1000
    await eventually(lambda: server.ctx.hub.connections == 0, timeout=1, what="the hub was told")
    with contextlib.suppress(AssertionError):
        await eventually(closed_logged, timeout=6)
    elapsed = time.monotonic() - started
    assert closed_logged(), "the close was never logged"
    assert not server.server.server_state.tasks, "the connection handler is still running"
    assert elapsed < 1.0, f"the connection handler finished {elapsed:.2f}s after the client closed"
