"""The Hocuspocus route with the REAL `@hocuspocus/provider` (4.8.0, and 3.4.4 where said) under Node.

`tests/node/hocuspocus.mjs` holds shared sockets (HocuspocusProviderWebsocket) and the documents
attached to them; a few tests speak raw frames with `websockets` to look at the wire itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import websockets
from pycrdt import Doc, Text

from collab_server.client import YClient
from collab_server.core import hocuspocus as hp
from collab_server.core.protocol import encode_sync_step1, encode_update, write_var_bytes
from collab_server.runtime.demo import create_demo
from collab_server.storage.postgres import open_document_id
from tests import stateless_hook
from tests.waiting import eventually

try:
    from nodeclient import HocuspocusClients, HocuspocusRefServer, NodeClients, ensure_node_modules
except ModuleNotFoundError:
    from tests.nodeclient import HocuspocusClients, HocuspocusRefServer, NodeClients, ensure_node_modules

SECRET = "test-secret-test-secret-test-secret"


def hp_url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.port}/hocuspocus"


async def hocuspocus() -> HocuspocusClients:
    await asyncio.to_thread(ensure_node_modules)
    return HocuspocusClients()


def room_text(server: Any, document_id: Any) -> str:
    return str(server.ctx.hub.get(document_id).doc.get("content", type=Text))


@pytest.fixture
async def auth_server(make_server):  # type: ignore[no-untyped-def]
    return await make_server(auth="on", jwt_secret=SECRET)


async def test_the_harness_against_the_hocuspocus_reference_server() -> None:
    """What the tests below expect of the provider holds against @hocuspocus/server itself (3.4.4)."""
    async with HocuspocusRefServer() as ref, await hocuspocus() as hpc:
        await hpc.socket("s", f"ws://127.0.0.1:{ref.port}")
        a = await hpc.open("a", "s", "ref-doc", awareness={"user": "a"})
        b = await hpc.open("b", "s", "ref-doc-2")
        await hpc.socket("t", f"ws://127.0.0.1:{ref.port}")
        c = await hpc.open("c", "t", "ref-doc", awareness={"user": "c"})
        await a.call("insert", index=0, text="hello")
        await c.call("waitText", text="hello")
        await a.call("waitStatus", status={"unsyncedChanges": 0, "scope": "read-write"})
        await c.call("waitAwareness", match={"user": "a"})
        assert (await b.call("text"))["text"] == ""


# -- both dialects on the same rooms ----------------------------------------------------------


@pytest.mark.parametrize("version", [4, 3])
async def test_converges_with_a_y_websocket_client_and_shares_awareness(server, version: int) -> None:
    async with await hocuspocus() as hpc, NodeClients() as yws:
        await hpc.socket("s", hp_url(server), version=version)
        a = await hpc.open("a", "s", "shared-doc", awareness={"user": "hocuspocus"})
        b = await yws.connect("b", server.ws_base, "shared-doc", awareness={"user": "y-websocket"})
        await a.call("insert", index=0, text="from hocuspocus")
        await b.call("waitText", text="from hocuspocus")
        await b.call("insert", index=0, text="y-websocket + ")
        await a.call("waitText", text="y-websocket + from hocuspocus")
        # Awareness crosses the dialects both ways.
        await a.call("waitAwareness", match={"user": "y-websocket"})
        await b.call("waitAwareness", match={"user": "hocuspocus"})
        await a.call("waitStatus", status={"unsyncedChanges": 0, "scope": "read-write"})
        assert room_text(server, open_document_id("shared-doc")) == "y-websocket + from hocuspocus"
        # One room for both: the same connection count whichever route a client came by.
        assert len(server.ctx.hub.get(open_document_id("shared-doc")).connections) == 2
        # The provider going away removes its awareness for the y-websocket client at once.
        await a.call("destroy")
        await b.call("waitAwareness", match={"user": "hocuspocus"}, absent=True, timeoutMs=3000)


async def test_twenty_documents_over_one_socket(server) -> None:
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        await hpc.socket("t", hp_url(server))
        names = [f"multi-{i}" for i in range(20)]
        await asyncio.gather(*(hpc.open(f"a{i}", "s", name) for i, name in enumerate(names)))
        await asyncio.gather(*(hpc.open(f"b{i}", "t", name) for i, name in enumerate(names)))
        await asyncio.gather(*(hpc.client(f"a{i}").call("insert", index=0, text=f"doc {i}") for i in range(20)))
        for i in range(20):  # each document got its own text, and only its own
            await hpc.client(f"b{i}").call("waitText", text=f"doc {i}")
        await asyncio.gather(*(hpc.client(f"a{i}").call("waitStatus", status={"unsyncedChanges": 0})
                               for i in range(20)))
        assert server.ctx.hub.stats()["connections"] == 40
        for i, name in enumerate(names):
            assert room_text(server, open_document_id(name)) == f"doc {i}"
        # Closing one document leaves the other 19 on the socket working.
        await hpc.client("a0").call("destroy")
        await eventually(lambda: server.ctx.hub.stats()["connections"], lambda n: n == 39)
        await hpc.client("a1").call("insert", index=0, text="still ")
        await hpc.client("b1").call("waitText", text="still doc 1")


async def test_session_aware_providers_share_a_document_on_one_socket(server) -> None:
    # 4.x `sessionAwareness`: two providers of one document on one socket, told apart by the
    # `name\0session` address; each is a connection of its own in the same room.
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        a = await hpc.open("a", "s", "sessions", sessionAwareness=True, awareness={"user": "a"})
        b = await hpc.open("b", "s", "sessions", sessionAwareness=True, awareness={"user": "b"})
        await a.call("insert", index=0, text="one socket, two sessions")
        await b.call("waitText", text="one socket, two sessions")
        await b.call("waitAwareness", match={"user": "a"})
        await a.call("waitStatus", status={"unsyncedChanges": 0})
        assert len(server.ctx.hub.get(open_document_id("sessions")).connections) == 2
        await b.call("destroy")
        await eventually(lambda: len(server.ctx.hub.get(open_document_id("sessions")).connections),
                         lambda n: n == 1, what="one session left")


async def test_unsynced_changes_reach_zero_only_once_stored(server, db) -> None:
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        a = await hpc.open("a", "s", "acked")
        # The initial sync is acknowledged. Not necessarily by the time `synced` fires: the client's
        # step 2 answers our step 1, which (as Hocuspocus does) follows our step 2.
        await a.call("waitStatus", status={"unsyncedChanges": 0})
        for i in range(30):
            await a.call("insert", index=0, text=f"{i},")
        await a.call("waitStatus", status={"unsyncedChanges": 0})
        # Zero means written ahead to PostgreSQL, not merely received.
        document_id = open_document_id("acked")
        stored = await server.ctx.hub.storage.load(document_id)
        doc: Doc[Any] = Doc()
        doc.apply_update(stored.state)
        assert str(doc.get("content", type=Text)) == "".join(f"{i}," for i in reversed(range(30)))


async def test_presence_per_document_on_a_shared_socket(server) -> None:
    async def listing(name: str) -> list[dict[str, Any]]:
        response = await server.get(f"/api/documents/{name}/presence")
        assert response.status_code == 200, response.text
        return response.json()["presence"]  # type: ignore[no-any-return]

    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server) + "?device_type=desktop&device_name=Laptop")
        a = await hpc.open("a", "s", "present-a", awareness={"user": {"name": "Ada"}})
        await hpc.open("b", "s", "present-b", awareness={"user": {"name": "Ada"}})
        for name in ("present-a", "present-b"):
            people = await eventually(lambda n=name: listing(n), lambda p: len(p) == 1, what=f"{name} listed")
            assert people[0]["device_type"] == "desktop" and people[0]["device_name"] == "Laptop"
        await a.call("destroy")  # one document leaves; the other stays present
        await eventually(lambda: listing("present-a"), lambda p: p == [], what="present-a empty")
        assert len(await listing("present-b")) == 1
        await hpc.call("closeSocket", socket="s")
        await eventually(lambda: listing("present-b"), lambda p: p == [], what="present-b empty")


# -- per-document auth ------------------------------------------------------------------------


async def test_per_document_auth_on_one_socket(auth_server, db) -> None:
    demo = await create_demo(db, auth_server.ctx.tokens)
    editor = demo.tokens["editor"]
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(auth_server))
        a = await hpc.open("a", "s", str(demo.documents[0]), token=editor)
        assert (await a.call("status"))["scope"] == "read-write"
        # Refused documents on the same socket: each gets its reason, the socket stays.
        refused = {
            "outsider": (str(demo.documents[1]), demo.tokens["outsider"], "no access to this document"),
            "bad-token": (str(demo.documents[1]), "not-a-jwt", "invalid token"),
            "no-token": (str(demo.documents[1]), None, "missing token"),
            "unknown": ("not-a-document", editor, "unknown document"),
        }
        for client, (name, token, reason) in refused.items():
            reply = await hpc.open(client, "s", name, token=token, wait="denied")
            status = await reply.call("status")
            assert reason in status["denied"], status
            assert status["synced"] is False
        await a.call("insert", index=0, text="A still works")
        await a.call("waitStatus", status={"unsyncedChanges": 0})
        assert room_text(auth_server, demo.documents[0]) == "A still works"
        assert (await hpc.call("socketStatus", socket="s"))["closes"] == []
        # A token may come in the upgrade request instead (desktop clients): an empty Auth token
        # falls back to it.
        await hpc.socket("q", f"{hp_url(auth_server)}?token={editor}")
        await hpc.open("q1", "q", str(demo.documents[2]), token="")


async def test_readonly_viewer(auth_server, db) -> None:
    demo = await create_demo(db, auth_server.ctx.tokens)
    name = str(demo.documents[0])
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(auth_server))
        editor = await hpc.open("e", "s", name, token=demo.tokens["editor"])
        await editor.call("insert", index=0, text="written by the editor")
        await editor.call("waitStatus", status={"unsyncedChanges": 0})
        await hpc.socket("v", hp_url(auth_server))
        viewer = await hpc.open("v", "v", name, token=demo.tokens["viewer"])
        await viewer.call("waitText", text="written by the editor")
        status = await viewer.call("status")
        assert status["scope"] == "readonly"
        assert status["unsyncedChanges"] == 0  # a viewer that edited nothing has nothing pending
        await viewer.call("insert", index=0, text="VIEWER ")
        await viewer.call("waitStatus", status={"unsyncedChanges": 1})  # refused, so never acknowledged
        await editor.call("insert", index=21, text="!")
        await viewer.call("waitText", text="VIEWER written by the editor!")  # its own edit stays local
        await editor.call("waitText", text="written by the editor!")
        assert room_text(auth_server, demo.documents[0]) == "written by the editor!"
        assert (await viewer.call("status"))["unsyncedChanges"] == 1


async def test_revocation_closes_only_the_affected_document(auth_server, db) -> None:
    demo = await create_demo(db, auth_server.ctx.tokens)
    await asyncio.wait_for(auth_server.ctx.revocation.listening.wait(), 5)
    # Two users' documents on one socket: removing the viewer from the workspace closes the
    # viewer's document only.
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(auth_server))
        a = await hpc.open("a", "s", str(demo.documents[0]), token=demo.tokens["viewer"])
        b = await hpc.open("b", "s", str(demo.documents[1]), token=demo.tokens["editor"])
        await db.execute("DELETE FROM workspace_members WHERE user_id = $1", demo.users["viewer"])
        closed = await a.call("waitClosed", timeoutMs=5000)
        assert "revoked" in closed["closes"][0]["reason"]
        await b.call("insert", index=0, text="unaffected")
        await b.call("waitStatus", status={"unsyncedChanges": 0})
        assert room_text(auth_server, demo.documents[1]) == "unaffected"
        assert (await hpc.call("socketStatus", socket="s"))["closes"] == []


async def test_documents_per_socket_and_sockets_per_user_caps(make_server, db) -> None:
    server = await make_server(auth="on", jwt_secret=SECRET, hocuspocus_max_documents=3, max_sockets_per_user=1)
    demo = await create_demo(db, server.ctx.tokens)
    token = demo.tokens["editor"]
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        for i in range(3):
            await hpc.open(f"d{i}", "s", str(demo.documents[i]), token=token)
        fourth = await hpc.open("d3", "s", str(demo.documents[3]), token=token, wait="denied")
        assert "too many documents on this connection (limit 3)" in (await fourth.call("status"))["denied"]
        await hpc.socket("t", hp_url(server))
        other = await hpc.open("t0", "t", str(demo.documents[4]), token=token, wait="denied")
        assert "too many connections for this user (limit 1)" in (await other.call("status"))["denied"]
        # Another user is not affected by the editor's cap.
        await hpc.open("t1", "t", str(demo.documents[0]), token=demo.tokens["viewer"])
        await hpc.client("d0").call("insert", index=0, text="fine")
        await hpc.client("d0").call("waitStatus", status={"unsyncedChanges": 0})


async def test_open_mode_has_no_per_user_socket_cap(make_server) -> None:
    # Everyone is the one local user in open mode: a per-user cap would cap the whole server.
    server = await make_server(max_sockets_per_user=1)
    async with await hocuspocus() as hpc:
        for i in range(3):
            await hpc.socket(f"s{i}", hp_url(server))
            await hpc.open(f"c{i}", f"s{i}", "open-doc")


async def test_a_document_at_its_size_limit_closes_only_that_document(make_server) -> None:
    server = await make_server(max_document_bytes=20_000)
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        big = await hpc.open("big", "s", "size-capped")
        small = await hpc.open("small", "s", "size-fine")
        await big.call("insert", index=0, text="z" * 30_000)
        closed = await big.call("waitClosed")
        assert "size limit (20000 bytes)" in closed["closes"][0]["reason"]
        await small.call("insert", index=0, text="still fine")
        await small.call("waitStatus", status={"unsyncedChanges": 0})
        assert (await hpc.call("socketStatus", socket="s"))["closes"] == []
        assert room_text(server, open_document_id("size-capped")) == ""


# -- stateless --------------------------------------------------------------------------------


async def test_stateless_round_trip_and_hook(make_server) -> None:
    stateless_hook.received.clear()
    server = await make_server(stateless_hook="tests.stateless_hook:record")
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        await hpc.socket("t", hp_url(server))
        a = await hpc.open("a", "s", "chat")
        b = await hpc.open("b", "t", "chat")
        c = await hpc.open("c", "t", "elsewhere")
        await a.call("sendStateless", payload='{"type":"ping","n":1}')
        await b.call("waitStateless", payload='{"type":"ping","n":1}')
        await b.call("sendStateless", payload="pong")
        await a.call("waitStateless", payload="pong")
        await eventually(lambda: [e.payload for e in stateless_hook.received],
                         lambda got: got == ['{"type":"ping","n":1}', "pong"])
        assert stateless_hook.received[0].document_id == open_document_id("chat")
        # Not echoed to the sender, not delivered to another document.
        assert (await a.call("stateless"))["received"] == ["pong"]
        assert (await c.call("stateless"))["received"] == []


async def test_a_hook_that_returns_false_keeps_a_message_from_being_relayed(make_server) -> None:
    stateless_hook.received.clear()
    server = await make_server(stateless_hook="tests.stateless_hook:keep_secrets")
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        a = await hpc.open("a", "s", "vetoed")
        await hpc.socket("t", hp_url(server))
        b = await hpc.open("b", "t", "vetoed")
        await a.call("sendStateless", payload="secret: for the server only")
        await a.call("sendStateless", payload="public")
        await b.call("waitStateless", payload="public")
        assert (await b.call("stateless"))["received"] == ["public"]  # in order: the secret never came
        assert [e.payload for e in stateless_hook.received] == ["secret: for the server only", "public"]


async def test_force_sync_settles(server) -> None:
    # forceSyncInterval sets unsyncedChanges to 1 and sends a step 1; our step 2 and step 1 in reply
    # (as Hocuspocus answers) bring the provider's step 2, whose acknowledgement settles it again.
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))
        a = await hpc.open("a", "s", "forced", forceSyncInterval=100)
        await a.call("waitStatus", status={"resets": 4})  # the initial sync and three forced ones
        await a.call("waitStatus", status={"unsyncedChanges": 0})


async def test_a_quick_reattach_while_authorising_ends_open(server) -> None:
    async with NodeClients() as yws:
        watcher = await yws.connect("w", server.ws_base, "reattach")
        async with websockets.connect(hp_url(server)) as ws:
            # Attach, detach, attach again: all before the first answer (open mode creates the
            # document row first, so these arrive while it is being authorised).
            for frame in (_auth("reattach"), _frame("reattach", encode_sync_step1(b"\x00")),
                          _frame("reattach", hp.encode_close("detached")),
                          _auth("reattach"), _frame("reattach", encode_sync_step1(b"\x00"))):
                await ws.send(frame)
            edit: Doc[Any] = Doc()
            edit.get("content", type=Text).insert(0, "after re-attach")
            await ws.send(_frame("reattach", encode_update(edit.get_update())))
            await watcher.call("waitText", text="after re-attach")
            assert await _recv_until(ws, "reattach", hp.MSG_SYNC_STATUS) == b"\x01"


async def test_documents_opened_are_charged_to_the_address(make_server) -> None:
    server = await make_server(rate_connections_per_minute=1, rate_connections_burst=3)
    async with await hocuspocus() as hpc:
        await hpc.socket("s", hp_url(server))  # the socket costs one
        await hpc.open("a", "s", "charged-1")
        await hpc.open("b", "s", "charged-2")
        third = await hpc.open("c", "s", "charged-3", wait="denied")
        assert "too many documents opened from this address" in (await third.call("status"))["denied"]
        await hpc.client("a").call("insert", index=0, text="others fine")
        await hpc.client("a").call("waitStatus", status={"unsyncedChanges": 0})


async def test_stateless_bounds(make_server) -> None:
    server = await make_server(max_stateless_bytes=100, rate_stateless_per_second=5)
    async with websockets.connect(hp_url(server)) as ws:
        await ws.send(_auth("bounded"))
        await _recv_until(ws, "bounded", hp.MSG_AUTH)
        await ws.send(_stateless("bounded", "x" * 101))
        await ws.wait_closed()
        assert ws.close_code == 1009 and "stateless message too large" in ws.close_reason
    async with websockets.connect(hp_url(server)) as ws:
        await ws.send(_auth("bounded"))
        await _recv_until(ws, "bounded", hp.MSG_AUTH)
        for _ in range(20):
            await ws.send(_stateless("bounded", "spam"))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4429 and "stateless" in ws.close_reason


# -- processes: two of them, and a kill -9 ----------------------------------------------------


async def test_two_processes_share_documents_and_stateless(make_server) -> None:
    first = await make_server()
    second = await make_server()
    async with await hocuspocus() as hpc:
        await hpc.socket("s1", hp_url(first))
        await hpc.socket("s2", hp_url(second))
        a = await hpc.open("a", "s1", "spread", awareness={"user": "on-first"})
        b = await hpc.open("b", "s2", "spread", awareness={"user": "on-second"})
        await a.call("insert", index=0, text="across processes")
        await b.call("waitText", text="across processes")
        await b.call("waitAwareness", match={"user": "on-first"})
        await a.call("waitAwareness", match={"user": "on-second"})
        await a.call("sendStateless", payload="over the bus")
        await b.call("waitStateless", payload="over the bus")


async def test_reconnect_after_kill_9_loses_nothing(spawn_server) -> None:
    victim = spawn_server()
    url = f"ws://127.0.0.1:{victim.port}/hocuspocus"
    async with await hocuspocus() as hpc:
        await hpc.socket("s", url)
        a = await hpc.open("a", "s", "crashy")
        b = await hpc.open("b", "s", "crashy-2")
        for i in range(40):
            await a.call("insert", index=0, text=f"{i};")
        await b.call("insert", index=0, text="other doc")
        for client in (a, b):
            await client.call("waitStatus", status={"unsyncedChanges": 0})
        victim.kill()  # SIGKILL: nothing is flushed on the way out
        await hpc.call("waitSocketOpens", socket="s", opens=1)
        await a.call("insert", index=0, text="offline;")  # made while the server is down
        spawn_server(port=victim.port)
        await hpc.call("waitSocketOpens", socket="s", opens=2, timeoutMs=20000)
        await a.call("waitStatus", status={"unsyncedChanges": 0, "synced": True}, timeoutMs=10000)
        expected = "offline;" + "".join(f"{i};" for i in reversed(range(40)))
        checker = await YClient(f"ws://127.0.0.1:{victim.port}/ws/crashy").connect()
        await checker.wait_for(lambda: str(checker.doc.get("content", type=Text)) == expected, timeout=5)
        await checker.close()
        other = await YClient(f"ws://127.0.0.1:{victim.port}/ws/crashy-2").connect()
        assert str(other.doc.get("content", type=Text)) == "other doc"
        await other.close()


# -- the wire: errors and bounds --------------------------------------------------------------


def _frame(address: str, body: bytes) -> bytes:
    return hp.address_prefix(address) + body


def _auth(address: str, token: str = "") -> bytes:
    return _frame(address, bytes((hp.MSG_AUTH, hp.AUTH_TOKEN)) + write_var_bytes(token.encode()))


def _stateless(address: str, payload: str) -> bytes:
    return _frame(address, hp.encode_stateless(payload))


async def _recv_until(ws: Any, address: str, msg_type: int, timeout: float = 5) -> bytes:
    """The next message for `address` of `msg_type` (its body after the type byte)."""
    prefix = hp.address_prefix(address)
    deadline = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        if frame.startswith(prefix) and frame[len(prefix)] == msg_type:
            return bytes(frame[len(prefix) + 1:])


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"\x05ab", 4400, "length past the end"),  # address longer than the frame
        (_frame("doc", b"\x63"), 4400, "unknown message type 99"),
        (_frame("doc", bytes((hp.MSG_BROADCAST_STATELESS,)) + write_var_bytes(b"x")), 4400, "server-internal"),
        (_frame("doc", bytes((hp.MSG_AUTH, hp.AUTH_AUTHENTICATED)) + write_var_bytes(b"x")), 4400, "auth tokens"),
        (b"\x02\xff\xfe\x00", 4400, "not valid UTF-8"),
        (write_var_bytes(b"x" * 600) + b"\x00", 4400, "longer than 512 bytes"),
    ],
)
async def test_malformed_frames_close_with_the_y_websocket_codes(server, frame: bytes, code: int, reason: str) -> None:
    async with websockets.connect(hp_url(server)) as ws:
        await ws.send(frame)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == code and reason in ws.close_reason, (ws.close_code, ws.close_reason)


async def test_a_bad_document_never_hurts_the_others(server) -> None:
    async with NodeClients() as yws:
        watcher = await yws.connect("w", server.ws_base, "good")
        async with websockets.connect(hp_url(server)) as ws:
            for name in ("good", "bad"):
                await ws.send(_auth(name))
                await ws.send(_frame(name, encode_sync_step1(b"\x00")))
            for name in ("good", "bad"):
                assert await _recv_until(ws, name, hp.MSG_AUTH) == b"\x02" + write_var_bytes(b"read-write")
            edit: Doc[Any] = Doc()
            edit.get("content", type=Text).insert(0, "good edit")
            await ws.send(_frame("good", encode_update(edit.get_update())))
            await watcher.call("waitText", text="good edit")
            await ws.send(_frame("bad", encode_update(b"\x07garbage")))
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1007
        await watcher.call("insert", index=0, text="still ")
        assert room_text(server, open_document_id("good")) == "still good edit"
        assert room_text(server, open_document_id("bad")) == ""


async def test_unknown_names_are_denied_and_pings_answered(auth_server) -> None:
    async with websockets.connect(hp_url(auth_server)) as ws:
        await ws.send(_auth("00000000-0000-0000-0000-000000000001", "not-a-jwt"))
        assert b"invalid token" in await _recv_until(ws, "00000000-0000-0000-0000-000000000001", hp.MSG_AUTH)
        # An unknown name in auth mode: PermissionDenied, the socket stays open.
        await ws.send(_auth("no-such-document", "x"))
        denied = await _recv_until(ws, "no-such-document", hp.MSG_AUTH)
        assert denied[0] == hp.AUTH_PERMISSION_DENIED
        await ws.send(hp.PONG)  # a bare Pong is fine
        await ws.send(bytes((hp.MSG_PING,)))
        assert await asyncio.wait_for(ws.recv(), 5) == hp.PONG


def _client_frame(payload: bytes) -> bytes:
    """A masked binary WebSocket frame (mask key zero: valid, and the payload stays readable)."""
    assert len(payload) < 126
    return bytes((0x82, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def test_what_waits_for_authentication_is_bounded(auth_server, db) -> None:
    demo = await create_demo(db, auth_server.ctx.tokens)
    name = str(demo.documents[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", auth_server.port)
    writer.write(
        b"GET /hocuspocus HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    # The Auth and 1001 more frames for the same document in one write: all of them arrive while
    # the token is being checked, and the socket is cut off at the bound (1000 frames).
    query = _client_frame(_frame(name, bytes((hp.MSG_QUERY_AWARENESS,))))
    writer.write(_long_client_frame(_auth(name, demo.tokens["editor"])))
    writer.write(query * 1001)
    data = await asyncio.wait_for(reader.read(1 << 20), 5)
    while b"\x88" not in data:
        more = await asyncio.wait_for(reader.read(1 << 20), 5)
        if not more:
            break
        data += more
    close = data[data.index(b"\x88"):]
    assert int.from_bytes(close[2:4], "big") == 1008
    assert b"not yet authorised" in close
    writer.close()


def _long_client_frame(payload: bytes) -> bytes:
    assert 126 <= len(payload) < 65536
    return bytes((0x82, 0x80 | 126)) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload


async def test_too_many_waiting_bytes_close_only_that_document(make_server) -> None:
    server = await make_server(max_pending_bytes=3000)
    async with websockets.connect(hp_url(server), max_size=None) as ws:
        for name in ("waits", "fine"):
            await ws.send(_auth(name))
            await _recv_until(ws, name, hp.MSG_AUTH)
        for _ in range(2):  # each depends on an edit the room never got
            author: Doc[Any] = Doc()
            updates: list[bytes] = []
            author.observe(lambda event, into=updates: into.append(event.update))
            author.get("content", type=Text).insert(0, "base ")
            author.get("content", type=Text).insert(5, "w" * 2000)
            await ws.send(_frame("waits", encode_update(updates[1])))
        reason = await _recv_until(ws, "waits", hp.MSG_CLOSE)
        assert b"exceed 3000 bytes" in reason
        edit: Doc[Any] = Doc()
        edit.get("content", type=Text).insert(0, "socket still open")
        await ws.send(_frame("fine", encode_update(edit.get_update())))
        assert await _recv_until(ws, "fine", hp.MSG_SYNC_STATUS) == b"\x01"
        assert room_text(server, open_document_id("fine")) == "socket still open"
