"""End-to-end tests of the hub with the REAL y-websocket client (npm WebsocketProvider via tests/node).

Every test talks to an in-process server (open mode) through one `node client.mjs` process holding
any number of providers; a few also use the pycrdt YClient or a raw WebSocket to look at the wire.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import websockets
from pycrdt import Map, Text

from collab_server.client import YClient
from collab_server.core.awareness import decode_entries, encode_entries
from collab_server.core.protocol import Kind, decode, encode_awareness, encode_sync_step1
from collab_server.storage.postgres import open_document_id
from tests.waiting import eventually

try:  # tests/ without __init__.py (rootdir-relative "prepend" import mode) ...
    from nodeclient import ClientHandle, NodeClients, ensure_node_modules
except ModuleNotFoundError:  # ... or tests/ as a package
    from tests.nodeclient import ClientHandle, NodeClients, ensure_node_modules




async def node_clients() -> NodeClients:
    await asyncio.to_thread(ensure_node_modules)
    return NodeClients()


def server_room(server: Any, name: str) -> Any:
    return server.ctx.hub.get(open_document_id(name))


def room_text(server: Any, name: str) -> str:
    """The text of `name` as the server's live room holds it."""
    return str(server_room(server, name).doc.get("content", type=Text))


# -- 1. convergence --------------------------------------------------------------------------


async def test_two_node_clients_converge_on_text_and_map(server) -> None:
    async with await node_clients() as nc:
        a = await nc.connect("a", server.ws_base, "converge")
        b = await nc.connect("b", server.ws_base, "converge")

        # a -> b, then b -> a.
        await a.call("insert", index=0, text="hello")
        assert (await b.call("waitText", text="hello", timeoutMs=5000))["text"] == "hello"
        await b.call("insert", index=5, text=" world")
        await a.call("waitText", text="hello world", timeoutMs=5000)
        await b.call("delete", index=0, length=1)
        await a.call("waitText", text="ello world", timeoutMs=5000)

        # Concurrent inserts at both ends and at the same position.
        await asyncio.gather(
            a.call("insert", index=0, text="<A>"), b.call("insert", index=10, text="<B>"),
        )
        await a.call("waitText", text="<A>ello world<B>", timeoutMs=5000)
        await b.call("waitText", text="<A>ello world<B>", timeoutMs=5000)
        await asyncio.gather(a.call("insert", index=3, text="[a]"), b.call("insert", index=3, text="[b]"))
        texts = await eventually(
            lambda: asyncio.gather(a.text(), b.text()),
            lambda v: v[0] == v[1] and "[a]" in v[0] and "[b]" in v[0],
        )
        assert texts[0] in ("<A>[a][b]ello world<B>", "<A>[b][a]ello world<B>")

        # Map: both directions, disjoint keys merge, a concurrent write to one key has one winner.
        await a.call("mapSet", map="meta", key="title", value="Doc")
        await b.call("mapSet", map="meta", key="tags", value=["x", {"y": 2}])
        expected = {"title": "Doc", "tags": ["x", {"y": 2}]}
        await a.call("waitMap", map="meta", value=expected, timeoutMs=5000)
        await b.call("waitMap", map="meta", value=expected, timeoutMs=5000)
        await asyncio.gather(
            a.call("mapSet", map="meta", key="owner", value="a"),
            b.call("mapSet", map="meta", key="owner", value="b"),
        )
        maps = await eventually(
            lambda: asyncio.gather(a.call("map", map="meta"), b.call("map", map="meta")),
            lambda v: v[0]["value"] == v[1]["value"] and "owner" in v[0]["value"],
        )
        assert maps[0]["value"]["owner"] in ("a", "b")
        await b.call("mapDelete", map="meta", key="tags")
        await a.call("waitMap", map="meta", value={"title": "Doc", "owner": maps[0]["value"]["owner"]})

        # The server's copy and a replica's state vector agree with both clients.
        sv_a, sv_b = await asyncio.gather(a.call("stateVector"), b.call("stateVector"))
        assert sv_a["stateVector"] == sv_b["stateVector"]
        assert room_text(server, "converge") == texts[0]


# -- 2. late joiner --------------------------------------------------------------------------


async def test_late_joiner_receives_1000_prior_edits(server) -> None:
    pieces = [f"{i}," for i in range(1000)]
    expected = "".join(pieces)
    async with await node_clients() as nc:
        a = await nc.connect("a", server.ws_base, "late-joiner")
        # 1,000 separate transactions (each its own update frame), issued back to back in order.
        position = 0
        calls = []
        for piece in pieces:
            calls.append(a.call("insert", index=position, text=piece))
            position += len(piece)
        await asyncio.gather(*calls)
        assert await a.text() == expected

        async def on_server() -> str:
            return room_text(server, "late-joiner")

        await eventually(on_server, lambda t: t == expected)
        # They really were 1,000 separate update frames (plus sync step 1/2 and awareness).
        (conn,) = server_room(server, "late-joiner").connections
        assert conn.messages_in >= 1000

        b = await nc.connect("b", server.ws_base, "late-joiner")
        # The initial sync (server step 2) is complete when `connect` returns: no waiting here.
        assert await b.text() == expected
        sv_a, sv_b = await asyncio.gather(a.call("stateVector"), b.call("stateVector"))
        assert sv_a["stateVector"] == sv_b["stateVector"]


# -- 3. offline edits ------------------------------------------------------------------------


async def test_offline_edits_merge_on_reconnect(server) -> None:
    async with await node_clients() as nc:
        a = await nc.connect("a", server.ws_base, "offline")
        b = await nc.connect("b", server.ws_base, "offline")
        await a.call("insert", index=0, text="base")
        await b.call("waitText", text="base", timeoutMs=5000)

        await a.call("disconnect")
        await a.call("waitStatus", status={"wsconnected": False}, timeoutMs=5000)
        # A edits offline (start and a same-position insert), B edits online meanwhile.
        await a.call("insert", index=0, text="[A-offline]")
        await a.call("insert", index=15, text="{A}")
        await b.call("insert", index=4, text="[B-online]")
        await b.call("insert", index=4, text="{B}")
        await a.call("mapSet", map="m", key="a", value=1)
        await b.call("mapSet", map="m", key="b", value=2)
        await eventually(lambda: room_text(server, "offline"), lambda t: t == "base{B}[B-online]", what="B's edits")
        assert await a.text() == "[A-offline]base{A}"
        assert await b.text() == "base{B}[B-online]"

        await a.call("reconnect", timeoutMs=5000)
        texts = await eventually(lambda: asyncio.gather(a.text(), b.text()), lambda v: v[0] == v[1], timeout=5)
        assert texts[0].startswith("[A-offline]base")
        assert len(texts[0]) == len("[A-offline]base{A}{B}[B-online]")
        for part in ("[A-offline]", "{A}", "[B-online]", "{B}", "base"):
            assert texts[0].count(part) == 1, (part, texts[0])
        await a.call("waitMap", map="m", value={"a": 1, "b": 2}, timeoutMs=5000)
        await b.call("waitMap", map="m", value={"a": 1, "b": 2}, timeoutMs=5000)
        assert room_text(server, "offline") == texts[0]

        # A third client joining now sees the merged document.
        c = await nc.connect("c", server.ws_base, "offline")
        assert await c.text() == texts[0]


# -- 4. awareness ----------------------------------------------------------------------------


async def _removal_delay(observer: ClientHandle, gone: ClientHandle, action: str) -> float:
    """Seconds from `action` on `gone` until `observer` no longer has gone's awareness state."""
    assert gone.client_id is not None
    started = time.monotonic()
    await gone.call(action)
    await observer.call("waitAwareness", clientId=gone.client_id, match={}, absent=True, timeoutMs=3000)
    return time.monotonic() - started


async def test_awareness_follows_cursor_and_is_removed_within_1s(server) -> None:
    async with await node_clients() as nc:
        a = await nc.connect("a", server.ws_base, "presence", awareness={"user": "alice"})
        b = await nc.connect("b", server.ws_base, "presence", awareness={"user": "bob"})
        await b.call("waitAwareness", clientId=a.client_id, match={"user": "alice"}, timeoutMs=5000)
        await a.call("waitAwareness", clientId=b.client_id, match={"user": "bob"}, timeoutMs=5000)

        for index in (1, 7, 3, 42):
            await a.call("setAwarenessField", field="cursor", value={"anchor": index, "head": index + 1})
        states = (await b.call("waitAwareness", clientId=a.client_id,
                               match={"cursor": {"anchor": 42, "head": 43}}, timeoutMs=5000))["states"]
        assert states[str(a.client_id)] == {"user": "alice", "cursor": {"anchor": 42, "head": 43}}
        # A round trip after the last move: anything older would have arrived before it.
        await a.call("setAwarenessField", field="marker", value=1)
        await b.call("waitAwareness", clientId=a.client_id, match={"marker": 1}, timeoutMs=5000)
        states = await b.awareness_states()
        assert states[str(a.client_id)]["cursor"] == {"anchor": 42, "head": 43}
        assert set(states) == {str(a.client_id), str(b.client_id)}

        # A late joiner gets everyone's current state from the server.
        c = await nc.connect("c", server.ws_base, "presence", awareness={"user": "carol"})
        alice = {"user": "alice", "cursor": {"anchor": 42, "head": 43}}
        await c.call("waitAwareness", clientId=a.client_id, match=alice, timeoutMs=1000)
        await c.call("waitAwareness", clientId=b.client_id, match={"user": "bob"}, timeoutMs=1000)

        # (a) clean disconnect: the provider sends no goodbye, the server must remove a's state.
        delay = await _removal_delay(b, a, "disconnect")
        assert delay < 1.0, f"awareness of a cleanly disconnected client removed after {delay:.2f}s"
        await c.call("waitAwareness", clientId=a.client_id, match={}, absent=True, timeoutMs=1000)

        # (b) dropped connection, no close frame and no goodbye.
        delay = await _removal_delay(b, c, "drop")
        assert delay < 1.0, f"awareness of a dropped client removed after {delay:.2f}s"
        assert set(await b.awareness_states()) == {str(b.client_id)}

        # The server forgot both: a newcomer sees only b.
        d = await nc.connect("d", server.ws_base, "presence", awareness={"user": "dave"})
        await d.call("waitAwareness", clientId=b.client_id, match={"user": "bob"}, timeoutMs=1000)
        assert set(await d.awareness_states()) == {str(b.client_id), str(d.client_id)}


# -- 5. large text ---------------------------------------------------------------------------


def _mib_text() -> str:
    # 1 MiB of UTF-8 (1,048,576 bytes), mixing ASCII, 2-, 3- and 4-byte characters (astral -> surrogate pairs in JS).
    chunk = "The quick brown fox 0123456789 é ü ß 漢字 かな 😀🎉 \n"
    out = (chunk * (1024 * 1024 // len(chunk.encode()) + 1)).encode()[: 1024 * 1024]
    return out.decode("utf-8", errors="ignore")


async def test_one_mib_text_reaches_live_and_late_clients_byte_for_byte(server) -> None:
    big = _mib_text()
    assert 1024 * 1024 - 4 < len(big.encode()) <= 1024 * 1024
    async with await node_clients() as nc:
        a = await nc.connect("a", server.ws_base, "big")
        b = await nc.connect("b", server.ws_base, "big")
        await a.call("insert", index=0, text=big)
        await b.call("waitText", text=big, timeoutMs=15000)
        assert (await b.text()).encode() == big.encode()

        c = await nc.connect("c", server.ws_base, "big", timeoutMs=15000)
        assert (await c.text()).encode() == big.encode()
        assert room_text(server, "big").encode() == big.encode()


# -- 6. many rooms ---------------------------------------------------------------------------


async def test_fifty_rooms_two_clients_each_no_cross_talk(server) -> None:
    rooms = [f"multi-{i:02d}" for i in range(50)]
    async with await node_clients() as nc:
        pairs = []
        for i, room in enumerate(rooms):
            pairs.append(await asyncio.gather(
                nc.connect(f"a{i}", server.ws_base, room), nc.connect(f"b{i}", server.ws_base, room)
            ))
        await asyncio.gather(*(
            call
            for i, (a, b) in enumerate(pairs)
            for call in (a.call("insert", index=0, text=f"<a{i:02d}>"), b.call("insert", index=0, text=f"<b{i:02d}>"),
                         a.call("mapSet", map="m", key="room", value=rooms[i]))
        ))

        async def converged(i: int, a: ClientHandle, b: ClientHandle) -> str:
            options = (f"<a{i:02d}><b{i:02d}>", f"<b{i:02d}><a{i:02d}>")
            ta, _ = await eventually(lambda: asyncio.gather(a.text(), b.text()),
                                      lambda v: v[0] == v[1] and v[0] in options, timeout=10)
            await b.call("waitMap", map="m", value={"room": rooms[i]}, timeoutMs=5000)
            return str(ta)

        texts = await asyncio.gather(*(converged(i, a, b) for i, (a, b) in enumerate(pairs)))
        # A round trip per room: whatever the server sent before it (misrouted frames included) is in.
        await asyncio.gather(*(a.call("mapSet", map="m", key="done", value=i) for i, (a, _b) in enumerate(pairs)))
        await asyncio.gather(*(b.call("waitMap", map="m", value={"room": rooms[i], "done": i}, timeoutMs=5000)
                               for i, (_a, b) in enumerate(pairs)))
        for i, (a, b) in enumerate(pairs):
            assert await a.text() == await b.text() == texts[i]
            assert room_text(server, rooms[i]) == texts[i]
        assert server.ctx.hub.room_count == 50
        assert server.ctx.hub.connections == 100


# -- 7. lone client keep-alive ---------------------------------------------------------------


async def test_lone_client_hears_its_own_awareness_echo(server) -> None:
    """y-websocket reconnects after 30 s without any incoming message; alone in a room, the only
    thing it can receive is the echo of its own awareness (sent on connect and every 15 s)."""
    async with websockets.connect(server.ws_url("lonely"), max_size=None, compression=None) as ws:
        first = decode(await asyncio.wait_for(ws.recv(), 5))
        assert first.kind is Kind.SYNC_STEP1
        await ws.send(encode_sync_step1(b"\x00"))
        for clock in (1, 2):
            state = orjson.dumps({"user": "lonely", "clock": clock})
            await ws.send(encode_awareness(encode_entries([(4242, clock, state)])))
            deadline = time.monotonic() + 1.0
            while True:
                msg = decode(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
                if msg.kind is Kind.AWARENESS:
                    assert decode_entries(msg.payload) == [(4242, clock, state)]
                    break

    # The real provider alone in a room: its awareness is in the room (echoed and kept), so a
    # newcomer sees it immediately.
    async with await node_clients() as nc:
        a = await nc.connect("a", server.ws_base, "lonely-node", awareness={"user": "alone"})
        status = await a.status()
        assert status["wsconnected"] and status["closeCount"] == 0
        b = await nc.connect("b", server.ws_base, "lonely-node")
        await b.call("waitAwareness", clientId=a.client_id, match={"user": "alone"}, timeoutMs=1000)


# -- 8. mixed clients ------------------------------------------------------------------------


async def test_node_and_python_clients_converge(server) -> None:
    async with await node_clients() as nc:
        node = await nc.connect("node", server.ws_base, "mixed")
        py = await YClient(server.ws_url("mixed")).connect()
        try:
            text = py.doc.get("content", type=Text)
            meta = py.doc.get("meta", type=Map)

            await node.call("insert", index=0, text="from node")
            await py.wait_for(lambda: str(text) == "from node")
            text.insert(0, "python+")
            await node.call("waitText", text="python+from node", timeoutMs=5000)

            # Concurrent edits from both.
            text += "|py-end"
            await node.call("insert", index=0, text="node-start|")
            await py.wait_for(lambda: str(text) == "node-start|python+from node|py-end")
            await node.call("waitText", text="node-start|python+from node|py-end", timeoutMs=5000)

            meta["py"] = "p"
            await node.call("mapSet", map="meta", key="node", value={"n": [1, 2]})
            await node.call("waitMap", map="meta", value={"py": "p", "node": {"n": [1, 2]}}, timeoutMs=5000)
            await py.wait_for(lambda: meta.to_py() == {"py": "p", "node": {"n": [1.0, 2.0]}})

            # A late Python joiner and the server agree with both.
            late = await YClient(server.ws_url("mixed")).connect()
            try:
                assert str(late.doc.get("content", type=Text)) == "node-start|python+from node|py-end"
                assert late.doc.get("meta", type=Map).to_py() == meta.to_py()
            finally:
                await late.close()
            assert room_text(server, "mixed") == str(text)
        finally:
            await py.close()
