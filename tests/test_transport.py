"""Our WebSocket transport under uvicorn: what the handshake refuses, fragmented messages, pings,
and the loop-lag histogram it is measured by."""

from __future__ import annotations

import asyncio

import orjson
import websockets
from pycrdt import Doc, Text

from collab_server.client import YClient
from collab_server.core.protocol import encode_update
from collab_server.storage.postgres import open_document_id
from tests.waiting import eventually


async def _raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


async def test_an_upgrade_outside_ws_is_refused_with_a_json_404(server) -> None:  # type: ignore[no-untyped-def]
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/elsewhere"):
            raise AssertionError("should have been refused")
    except websockets.InvalidStatus as exc:
        assert exc.response.status_code == 404
        assert orjson.loads(exc.response.body)["error"]["code"] == "not_found"


async def test_a_bad_handshake_gets_websockets_own_400_and_http_still_works(server) -> None:  # type: ignore[no-untyped-def]
    answer = await _raw_request(server.port, b"GET /ws/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert (await server.get("/healthz")).status_code == 200  # HTTP on the same port, on Starlette


_UPGRADE = (b"GET /ws/%s HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def _opened(reader: asyncio.StreamReader) -> bytes:
    """The 101's headers, once the room's first frame (our sync step 1: 0x82, length, 0, 0) follows them."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    frame = await asyncio.wait_for(reader.readexactly(4), 5)
    assert frame[0] == 0x82 and frame[2:4] == b"\x00\x00", frame
    return head


async def test_an_upgrade_whole_in_pieces_or_after_a_keep_alive_request_opens_the_room(server) -> None:  # type: ignore[no-untyped-def]
    """uvicorn parses the request and hands the socket to our protocol, whichever way it arrived."""
    for name, parts in (("whole", [_UPGRADE % b"whole"]),
                        ("pieces", [(_UPGRADE % b"pieces")[:30], (_UPGRADE % b"pieces")[30:]]),
                        ("after-http", [b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", _UPGRADE % b"after-http"])):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for part in parts:
                if part.startswith(b"GET /ws/") and name == "after-http":
                    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    assert status.startswith(b"HTTP/1.1 200"), status
                    length = int(status.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)  # a separate read on the server
            head = await _opened(reader)
            assert head.startswith(b"HTTP/1.1 101"), (name, head)
            assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head.lower(), (name, head)
        finally:
            writer.close()


async def test_a_cold_room_answers_101_before_its_load_and_a_live_one_with_its_first_frames(server, db) -> None:  # type: ignore[no-untyped-def]
    """While PostgreSQL is slow to load a room the client already has its 101 (its first message
    travels meanwhile); once the room is live, the 101 is followed by our sync step 1 in the first
    read (that it is one write is counted with strace, not here: TCP may merge two)."""
    from collab_server.storage.postgres import open_document_id

    name = b"slow-to-load"
    async with db.transaction():
        await db.execute("LOCK TABLE documents IN ACCESS EXCLUSIVE MODE")  # the load waits for it
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_UPGRADE % name)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert server.ctx.hub.get(open_document_id(name.decode())) is None  # still loading
    frame = await asyncio.wait_for(reader.readexactly(4), 5)  # the lock is gone: the room's step 1
    assert frame[0] == 0x82 and frame[2:4] == b"\x00\x00", frame
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer2.write(_UPGRADE % name)
        both = await asyncio.wait_for(reader2.read(65536), 5)
        head, _, rest = both.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and rest[:1] == b"\x82" and rest[2:4] == b"\x00\x00", both
    finally:
        writer.close()
        writer2.close()


async def test_a_fragmented_update_is_reassembled_and_pings_are_answered(server) -> None:  # type: ignore[no-untyped-def]
    reader = await YClient(server.ws_url("fragments")).connect()
    doc = Doc()
    doc.get("content", type=Text).insert(0, "in three pieces")
    frame = encode_update(doc.get_update())
    async with websockets.connect(server.ws_url("fragments"), compression=None) as ws:
        pong = await ws.ping()
        await asyncio.wait_for(pong, 5)  # the server answers a client's ping
        third = len(frame) // 3
        await ws.send([frame[:third], frame[third:2 * third], frame[2 * third:]])  # one message, three frames
        await reader.wait_for(lambda: str(reader.doc.get("content", type=Text)) == "in three pieces")
    await reader.close()


async def test_loop_lag_is_a_histogram_on_metrics(server) -> None:  # type: ignore[no-untyped-def]
    def count(text: str) -> int:
        line = next(x for x in text.splitlines() if x.startswith("collab_loop_lag_seconds_count"))
        return int(line.split()[1])

    first = count((await server.get("/metrics")).text)
    text = await eventually(lambda: _metrics(server), lambda t: count(t) > first, what="the lag probe ticking")
    assert '# TYPE collab_loop_lag_seconds histogram' in text
    assert 'collab_loop_lag_seconds_bucket{le="+Inf"}' in text


async def _metrics(server) -> str:  # type: ignore[no-untyped-def]
    return (await server.get("/metrics")).text


async def test_a_client_reconnects_and_its_offline_edits_reach_the_others(server) -> None:  # type: ignore[no-untyped-def]
    """Our Python client reconnects like the npm provider: edits made while closed travel in the sync exchange."""
    watcher = await YClient(server.ws_url("reconnect")).connect()
    typist = await YClient(server.ws_url("reconnect")).connect()
    text = typist.doc.get("content", type=Text)
    text.insert(0, "online ")
    await watcher.wait_for(lambda: str(watcher.doc.get("content", type=Text)) == "online ")
    typist.abort()
    await typist.wait_closed()
    text.insert(len(text), "offline")  # nothing to send it on: it waits in the Doc
    await typist.connect()
    assert typist.close_code is None and typist.synced.is_set()
    await watcher.wait_for(lambda: str(watcher.doc.get("content", type=Text)) == "online offline")
    with_other = await YClient(server.ws_url("reconnect")).connect()
    assert str(with_other.doc.get("content", type=Text)) == "online offline"
    for client in (watcher, typist, with_other):
        await client.close()


async def test_an_open_socket_keeps_nothing_of_its_handshake(server) -> None:  # type: ignore[no-untyped-def]
    """websockets' handshake parser would keep each request (≈2 KiB of headers) for the socket's life;
    the transport continues on a protocol object born open, and drops its finished handshake task."""
    import gc

    from websockets.http11 import Request

    from collab_server.transport.websocket import WebSocketProtocol

    clients = [await YClient(server.ws_url(f"lean-{i % 2}")).connect() for i in range(10)]
    try:
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, WebSocketProtocol) and o.conn is not None]
        assert len(alive) >= 10
        requests = [o for o in gc.get_objects() if isinstance(o, Request)]  # our clients keep theirs
        held = [r for r in requests for ref in gc.get_referrers(r)
                if getattr(getattr(ref, "gi_code", None), "co_qualname", "") == "ServerProtocol.parse"]
        assert held == []
        assert not any(hasattr(o, "__dict__") for o in alive)  # slots: no per-socket dict
    finally:
        for client in clients:
            await client.close()


async def test_the_serving_process_freezes_its_startup_objects_out_of_the_collector(spawn_server) -> None:  # type: ignore[no-untyped-def]
    import httpx

    proc = spawn_server()
    async with httpx.AsyncClient(base_url=proc.http, timeout=10) as client:
        text = (await client.get("/metrics")).text
    gauges = {k: float(v) for k, v in (line.split() for line in text.splitlines() if line.startswith("collab_gc_"))}
    assert gauges["collab_gc_frozen_objects"] > 10_000, gauges  # modules, the app: never scanned again
    assert set(gauges) >= {f"collab_gc_collections_gen{g}" for g in range(3)}


def test_a_broadcast_frame_is_serialised_once_as_websockets_would() -> None:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from collab_server.transport.websocket import WireFrames

    frames = WireFrames()
    for payload in (b"", b"\x00\x02" + b"u" * 100, b"x" * 70_000):  # the three length encodings
        reference = ServerProtocol(state=State.OPEN)
        reference.send_binary(payload)
        assert frames.wire(payload) == b"".join(reference.data_to_send())
        assert frames.wire(payload) is frames.wire(payload)  # once per frame, however many receivers
    assert frames.wire(b"other") == WireFrames.serialize(b"other")


async def test_every_receiver_of_a_broadcast_reads_it_whole(server) -> None:  # type: ignore[no-untyped-def]
    """Several sockets written the same serialised frames, and a joiner in the middle of it."""
    url = server.ws_url("shared-frame")
    writer, a, b = [await YClient(url).connect() for _ in range(3)]
    text = writer.doc.get("content", type=Text)
    for i in range(10):
        text.insert(len(text), f"{i},")
        await asyncio.sleep(0)
    late = await YClient(url).connect()
    for i in range(10, 20):
        text.insert(len(text), f"{i},")
    expected = "".join(f"{i}," for i in range(20))
    for client in (a, b, late):
        await client.wait_for(lambda c=client: str(c.doc.get("content", type=Text)) == expected)
        assert client.close_code is None
    for client in (writer, a, b, late):
        await client.close()


async def test_a_client_close_is_answered_before_the_room_is_left(server) -> None:  # type: ignore[no-untyped-def]
    """The close answer and our end of TCP go first; the room's bookkeeping after (off the client's path)."""
    hub = server.ctx.hub
    seen: list[bool] = []
    leave = hub.leave

    def recording_leave(room, conn) -> None:  # type: ignore[no-untyped-def]
        seen.append(conn.peer._transport.is_closing())  # our own transport: already closing?
        leave(room, conn)

    hub.leave = recording_leave
    client = await YClient(server.ws_url("close-order")).connect()
    await client.close()
    await eventually(lambda: seen, lambda s: len(s) == 1, what="the room was left")
    assert seen == [True]
    room = hub.get(open_document_id("close-order"))
    assert room is None or not room.connections
