"""The Hocuspocus dialect in the core: strict decoding, acknowledgements after storage, stateless."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc, Text

from collab_server.core import hocuspocus as hp
from collab_server.core.connection import ClientInfo, Connection, SendBudget
from collab_server.core.hub import Hub, HubConfig
from collab_server.core.protocol import (
    CloseCode,
    Kind,
    Message,
    ProtocolError,
    encode_awareness,
    encode_sync_step1,
    encode_update,
    write_var_bytes,
)
from collab_server.core.room import Room
from collab_server.core.storage import PendingUpdate
from collab_server.storage.memory import MemoryStorage
from tests.core.memory import MemoryPeer, turns
from tests.waiting import eventually


def edit(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


def addressed(address: str, body: bytes) -> bytes:
    return hp.address_prefix(address) + body


# -- decoding ---------------------------------------------------------------------------------


def test_room_messages_decode_as_y_websocket_frames() -> None:
    update = edit("x")
    frame = hp.decode_frame(addressed("doc", encode_update(update)))
    assert frame.kind is hp.Kind.ROOM and frame.address == "doc"
    assert frame.message == Message(Kind.SYNC_UPDATE, update)
    assert hp.decode_frame(addressed("d", encode_sync_step1(b"\x00"))).message == Message(Kind.SYNC_STEP1, b"\x00")
    assert hp.decode_frame(addressed("d", encode_awareness(b"\x00"))).message == Message(Kind.AWARENESS, b"\x00")
    # SyncReply (4) is Sync by another name.
    reply = hp.decode_frame(addressed("d", b"\x04" + encode_update(update)[1:]))
    assert reply.message == Message(Kind.SYNC_UPDATE, update)


def test_session_aware_addresses_keep_their_session_but_name_the_document() -> None:
    frame = hp.decode_frame(addressed("notes\0abc123", bytes((hp.MSG_QUERY_AWARENESS,))))
    assert frame.address == "notes\0abc123" and frame.document_name == "notes"


def test_auth_stateless_close_and_keepalive() -> None:
    auth = addressed("d", bytes((hp.MSG_AUTH, hp.AUTH_TOKEN)) + write_var_bytes(b"jwt"))
    assert hp.decode_frame(auth) == hp.Frame(hp.Kind.AUTH, "d", text="jwt")
    # Newer providers append their version after the token.
    assert hp.decode_frame(auth + write_var_bytes(b"4.8.0")).text == "jwt"
    assert hp.decode_frame(addressed("d", hp.encode_stateless("hi 🙂"))).text == "hi 🙂"
    assert hp.decode_frame(addressed("d", hp.encode_close("bye"))).kind is hp.Kind.CLOSE
    assert hp.decode_frame(addressed("d", bytes((hp.MSG_CLOSE,)))).kind is hp.Kind.CLOSE
    assert hp.decode_frame(bytes((hp.MSG_PING,))).kind is hp.Kind.PING
    assert hp.decode_frame(hp.PONG).kind is hp.Kind.PONG
    assert hp.decode_frame(addressed("d", hp.encode_sync_status(True))).kind is hp.Kind.IGNORED


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty frame"),
        (b"\x00\x00", "empty document name"),
        (b"\x03do", "length past the end"),
        (addressed("d", b""), "truncated varint"),
        (addressed("d", b"\x0b"), "unknown message type 11"),
        (addressed("d", b"\x06\x01x"), "server-internal"),
        (addressed("d", b"\x02\x01\x01x"), "auth tokens"),
        (addressed("d", b"\x05\x01x\x00"), "trailing bytes"),
        (addressed("d", encode_update(b"\x00\x00") + b"\x00"), "trailing bytes"),
        (write_var_bytes(b"\xc3\x28") + b"\x00", "not valid UTF-8"),
        (write_var_bytes(b"a" * 513) + b"\x03", "longer than 512 bytes"),
    ],
)
def test_malformed_frames_raise_the_y_websocket_close_codes(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        hp.decode_frame(frame)
    assert err.value.code == CloseCode.BAD_REQUEST and reason in err.value.reason


@given(st.binary(max_size=64))
def test_no_input_raises_anything_but_a_protocol_error(data: bytes) -> None:
    try:
        hp.decode_frame(data)
    except ProtocolError:
        pass


@given(st.text(min_size=1, max_size=40), st.text(max_size=200))
def test_stateless_round_trips(address: str, payload: str) -> None:
    if len(address.encode()) > hp.MAX_ADDRESS_BYTES:
        return
    frame = hp.decode_frame(addressed(address, hp.encode_stateless(payload)))
    assert (frame.address, frame.text) == (address, payload)


# -- acknowledgements -------------------------------------------------------------------------


class GatedStorage(MemoryStorage):
    """Commits only once the test opens the gate: stands for a slow group commit."""

    def __init__(self) -> None:
        super().__init__()
        self.open = False

    def _commit(self) -> None:
        if self.open:
            super()._commit()
        else:
            self._scheduled = False

    def release(self) -> None:
        self.open = True
        super()._commit()


def statuses(peer: MemoryPeer) -> list[bytes]:
    return [f for f in peer.frames if f[:1] == bytes((hp.MSG_SYNC_STATUS,))]


def channel(info: ClientInfo | None = None) -> tuple[hp.HocuspocusConnection, MemoryPeer]:
    peer = MemoryPeer()
    return hp.HocuspocusConnection(uuid.uuid4().hex, info or ClientInfo(), peer, 1 << 20), peer


async def test_edits_are_acknowledged_once_committed_one_status_each() -> None:
    storage = GatedStorage()
    hub = Hub(storage, HubConfig(room_grace_seconds=0))
    await hub.start()
    document_id = storage.create()
    conn, peer = channel()
    room = await hub.join(document_id, conn)
    for word in ("a", "b", "c"):
        room.handle(conn, Message(Kind.SYNC_UPDATE, edit(word)))
        await turns()  # three flushes, three rows
    await turns(10)
    assert statuses(peer) == []  # applied and relayed, but not committed yet
    room.handle(conn, Message(Kind.SYNC_STEP2, b"\x00\x00"))  # nothing to store: acknowledged at once
    await eventually(lambda: statuses(peer), lambda s: len(s) == 1, what="the empty step 2 acknowledged")
    storage.release()
    await eventually(lambda: statuses(peer), lambda s: len(s) == 4, what="four acknowledgements")
    assert set(statuses(peer)) == {hp.encode_sync_status(True)}
    assert len(storage.stored_updates(document_id)) == 3
    assert room.awaiting_commit == []
    hub.leave(room, conn)
    await hub.shutdown()


async def test_a_viewer_is_refused_per_edit_and_its_empty_sync_accepted() -> None:
    room = Room(uuid.uuid4())
    editor, _ = channel()
    room.add(editor)
    room.handle(editor, Message(Kind.SYNC_UPDATE, edit("content")))
    await turns()
    viewer, peer = channel(ClientInfo(role="viewer"))
    room.add(viewer)
    room.handle(viewer, Message(Kind.SYNC_STEP2, room.doc.get_update()))  # what the room has already
    room.handle(viewer, Message(Kind.SYNC_STEP2, b"\x00\x00"))  # a fresh viewer's step 2
    room.handle(viewer, Message(Kind.SYNC_STEP2, edit("new")))  # something new: refused
    room.handle(viewer, Message(Kind.SYNC_UPDATE, edit("x")))
    # The thorough check (a copy of the document) runs once per connection, not at a client's rate.
    room.handle(viewer, Message(Kind.SYNC_STEP2, room.doc.get_update()))
    assert statuses(peer) == [hp.encode_sync_status(v) for v in (True, True, False, False, False)]
    assert not [f for f in peer.frames if f[:1] == b"\x02"]  # no y-websocket permission-denied
    assert str(room.doc.get("content", type=Text)) == "content"


async def test_y_websocket_connections_get_no_acknowledgements() -> None:
    room = Room(uuid.uuid4())
    peer = MemoryPeer()
    conn = Connection("y", ClientInfo(), peer, 1 << 20)
    room.add(conn)
    room.handle(conn, Message(Kind.SYNC_UPDATE, edit("x")))
    await turns(5)
    assert statuses(peer) == []


# -- stateless --------------------------------------------------------------------------------


async def test_stateless_reaches_the_other_hocuspocus_connections_only() -> None:
    room = Room(uuid.uuid4())
    sender, sent = channel()
    other, received = channel()
    plain_peer = MemoryPeer()
    plain = Connection("y", ClientInfo(), plain_peer, 1 << 20)
    for conn in (sender, other, plain):
        room.add(conn)
    before = len(plain_peer.frames)
    room.stateless(sender, "hello")
    assert received.frames[-1] == hp.encode_stateless("hello")
    assert hp.encode_stateless("hello") not in sent.frames
    assert len(plain_peer.frames) == before  # y-websocket has no stateless message


class RefusingStorage(GatedStorage):
    """Says there is room, then refuses the row (the race `has_room_for` cannot rule out)."""

    def append(self, update: PendingUpdate) -> bool:
        return False


async def test_an_edit_the_write_ahead_refused_is_never_acknowledged() -> None:
    storage = RefusingStorage()
    storage.open = True
    hub = Hub(storage, HubConfig(room_grace_seconds=0))
    await hub.start()
    conn, peer = channel()
    room = await hub.join(storage.create(), conn)
    room.handle(conn, Message(Kind.SYNC_UPDATE, edit("held in memory only")))
    room.handle(conn, Message(Kind.SYNC_STEP2, b"\x00\x00"))  # same turn: not acknowledged either
    await turns(10)
    assert room.write_refused
    assert statuses(peer) == [] and room.awaiting_commit == []
    hub.leave(room, conn)
    await hub.shutdown()


async def test_documents_of_one_socket_share_one_send_budget() -> None:
    budget = SendBudget(100)
    peers = [MemoryPeer(writable=False) for _ in range(3)]
    conns = [Connection(f"d{i}", ClientInfo(), p, 1 << 20, budget=budget) for i, p in enumerate(peers)]
    conns[0].send(b"x" * 40)
    conns[1].send(b"x" * 40)
    assert budget.queued == 80 and not any(c.closing for c in conns)
    conns[2].send(b"x" * 40)  # each queue is far below its own limit; together they are over
    assert conns[2].closing and conns[2].close_code == CloseCode.TRY_AGAIN_LATER
    assert budget.queued == 80
    conns[0].close(CloseCode.NORMAL, "")
    assert budget.queued == 40
    peers[1].set_writable(True)
    await eventually(lambda: budget.queued, lambda q: q == 0, what="the backlog drained")
