"""A Room on its own (no hub, no storage): sync, fan-out, permissions, awareness, errors."""

from __future__ import annotations

import uuid

import pytest
from pycrdt import Doc, Text, merge_updates

from collab_server.core.connection import ClientInfo
from collab_server.core.protocol import CloseCode, Kind, Message, ProtocolError
from collab_server.core.room import Room
from collab_server.storage.memory import MemoryStorage
from tests.core.memory import MemoryClient, turns
from tests.waiting import eventually


def edit(text: str) -> bytes:
    doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


async def test_a_joiner_gets_step1_and_a_late_joiner_the_whole_document() -> None:
    room = Room(uuid.uuid4())
    a = MemoryClient().attach(room)
    assert a.peer.kinds()[0] is Kind.SYNC_STEP1  # the server's step 1 first, as y-websocket sends it
    a.text.insert(0, "hello")
    await turns()
    b = MemoryClient().attach(room)
    await eventually(lambda: str(b), lambda s: s == "hello", what="b synced")
    assert str(room.doc.get("content", type=Text)) == "hello"


async def test_an_update_reaches_everyone_but_its_sender_as_one_shared_frame() -> None:
    room = Room(uuid.uuid4())
    a, b, c = (MemoryClient().attach(room) for _ in range(3))
    await turns()
    before = [len(x.peer.frames) for x in (a, b, c)]
    a.text.insert(0, "x")
    await eventually(lambda: (str(b), str(c)), lambda s: s == ("x", "x"), what="fan-out")
    assert len(a.peer.frames) == before[0]  # b and c got it, so a would have by now
    assert b.peer.frames[-1] is c.peer.frames[-1]  # encoded once, the same bytes object


async def test_updates_of_one_loop_turn_leave_as_one_merged_frame() -> None:
    room = Room(uuid.uuid4())
    a, b = MemoryClient().attach(room), MemoryClient().attach(room)
    await turns()
    received = b.updates_received
    for word in ("one ", "two ", "three"):
        a.text.insert(len(a.text), word)  # three transactions, three updates, one turn
    await eventually(lambda: str(b), lambda s: s == "one two three", what="b has all three")
    assert b.updates_received - received == 1
    assert room.counters.get("collab_messages_out_total") > 0


async def test_a_viewer_is_told_once_and_its_edits_are_not_applied() -> None:
    room = Room(uuid.uuid4())
    viewer = MemoryClient(ClientInfo(role="viewer")).attach(room)
    editor = MemoryClient().attach(room)
    viewer.send(Message(Kind.SYNC_UPDATE, edit("nope")))
    viewer.send(Message(Kind.SYNC_UPDATE, edit("nope again")))
    denied = [m for m in viewer.peer.messages() if m.kind is Kind.AUTH]
    assert len(denied) == 1 and b"read-only" in denied[0].payload
    editor.text.insert(0, "yes")
    await eventually(lambda: str(viewer), lambda s: s == "yes", what="the viewer still reads")
    assert str(room.doc.get("content", type=Text)) == "yes"


async def test_an_invalid_update_or_state_vector_is_refused_and_the_room_is_unharmed() -> None:
    room = Room(uuid.uuid4())
    bad = MemoryClient().attach(room)
    good = MemoryClient().attach(room)
    with pytest.raises(ProtocolError) as refused:
        bad.send(Message(Kind.SYNC_UPDATE, b"\xff\xff\xff"))
    assert refused.value.code == CloseCode.INVALID_PAYLOAD
    with pytest.raises(ProtocolError):
        bad.send(Message(Kind.SYNC_STEP1, b"\xff\xff"))
    good.text.insert(0, "still fine")
    await eventually(lambda: str(room.doc.get("content", type=Text)), lambda s: s == "still fine", what="room")


async def test_edits_are_written_ahead_once_per_author_and_remote_ones_not_at_all() -> None:
    storage = MemoryStorage()
    document_id = storage.create()
    room = Room(document_id, storage=storage)
    alice = MemoryClient(ClientInfo(user_id=uuid.uuid4(), device_name="laptop")).attach(room)
    bob = MemoryClient(ClientInfo(user_id=uuid.uuid4())).attach(room)
    alice.text.insert(0, "a1 ")
    alice.text.insert(3, "a2 ")
    bob.text.insert(0, "b ")
    await eventually(lambda: storage.stored_updates(document_id), lambda u: len(u) == 2, what="two rows")
    rows = storage.stored_updates(document_id)
    assert {r.user_id for r in rows} == {alice.conn.info.user_id, bob.conn.info.user_id}
    assert next(r for r in rows if r.user_id == alice.conn.info.user_id).device_id == "laptop"
    room.apply_remote(edit("from another process"))
    await eventually(lambda: "another" in str(alice), what="the remote edit relayed")
    assert len(storage.stored_updates(document_id)) == 2  # relayed, not stored again


async def test_a_full_write_ahead_refuses_the_edit_before_applying_it() -> None:
    storage = MemoryStorage(backlog_limit_bytes=8)
    document_id = storage.create()
    room = Room(document_id, storage=storage)
    client = MemoryClient().attach(room)
    with pytest.raises(ProtocolError) as refused:
        client.send(Message(Kind.SYNC_UPDATE, edit("far more than eight bytes")))
    assert refused.value.code == CloseCode.TRY_AGAIN_LATER
    assert str(room.doc.get("content", type=Text)) == ""


async def test_awareness_is_relayed_echoed_and_removed_when_its_connection_leaves() -> None:
    room = Room(uuid.uuid4())
    user = uuid.uuid4()
    a, b = MemoryClient(ClientInfo(user_id=user)).attach(room), MemoryClient().attach(room)
    a.say(7, 1, b'{"cursor": 3}')
    await eventually(lambda: b.awareness, lambda s: 7 in s, what="b hears a's cursor")
    assert 7 in a.awareness  # echoed to the sender
    late = MemoryClient().attach(room)
    await eventually(lambda: late.awareness, lambda s: 7 in s, what="a late joiner hears it")
    # Someone else may not claim client 7 while a holds it; a's own reconnect may.
    b.say(7, 2, b'{"cursor": 99}')
    assert room.awareness.states()[7] == {"cursor": 3}
    again = MemoryClient(ClientInfo(user_id=user)).attach(room)
    again.say(7, 3, b'{"cursor": 4}')
    assert room.awareness.states()[7] == {"cursor": 4}
    room.remove(again.conn)
    await eventually(lambda: b.awareness, lambda s: 7 not in s, what="removal broadcast")


async def test_a_document_at_its_size_limit_refuses_edits_and_stays_whole() -> None:
    room = Room(uuid.uuid4(), max_bytes=2000)
    writer = MemoryClient().attach(room)
    writer.send(Message(Kind.SYNC_UPDATE, edit("a" * 900)))
    with pytest.raises(ProtocolError) as refused:
        writer.send(Message(Kind.SYNC_UPDATE, edit("b" * 1500)))
    assert refused.value.code == CloseCode.DOCUMENT_TOO_LARGE and "size limit (2000 bytes)" in refused.value.reason
    assert str(room.doc.get("content", type=Text)) == "a" * 900


async def test_the_size_estimate_is_corrected_by_measuring_near_the_limit() -> None:
    room = Room(uuid.uuid4(), max_bytes=3000)
    client = MemoryClient().attach(room)
    # Typing and deleting the same 400 characters again and again: the sum of the updates grows
    # past the limit, the document does not (Yjs keeps no deleted content).
    for _ in range(12):
        client.text.insert(0, "x" * 400)
        del client.text[0:400]
        await turns()
    assert str(room.doc.get("content", type=Text)) == ""
    assert room.size < 3000


def dependent_edits(size: int) -> tuple[bytes, bytes]:
    """Two edits of one client: the second cannot integrate without the first (its structs
    wait, "pending", in any Doc that lacks the first)."""
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text = doc.get("content", type=Text)
    text.insert(0, "first ")
    text.insert(6, "x" * size)
    return updates[0], updates[1]


async def test_a_step2_with_missing_dependencies_is_written_ahead_not_held_in_memory_only() -> None:
    storage = MemoryStorage()
    document_id = storage.create()
    room = Room(document_id, storage=storage)
    first, second = dependent_edits(100)
    MemoryClient().attach(room).send(Message(Kind.SYNC_STEP2, second))
    await eventually(lambda: storage.stored_updates(document_id), lambda rows: len(rows) == 1,
                     what="the waiting structs written ahead")
    assert room.missing_bytes > 0
    MemoryClient().attach(room).send(Message(Kind.SYNC_UPDATE, first))
    await turns()
    assert str(room.doc.get("content", type=Text)) == "first " + "x" * 100 and room.missing_bytes == 0
    stored = Doc()
    for row in storage.stored_updates(document_id):
        stored.apply_update(row.payload)
    assert str(stored.get("content", type=Text)) == "first " + "x" * 100


async def test_updates_waiting_for_dependencies_are_bounded_per_room() -> None:
    storage = MemoryStorage()
    document_id = storage.create()
    room = Room(document_id, storage=storage, max_missing_bytes=5000)
    good = MemoryClient().attach(room)
    good.text.insert(0, "kept ")
    await turns()
    attacker, watcher = MemoryClient().attach(room), MemoryClient().attach(room)
    for _ in range(2):
        attacker.send(Message(Kind.SYNC_UPDATE, dependent_edits(2000)[1]))
        await turns()
    assert not attacker.conn.closing and 4000 < room.missing_bytes <= 5000  # durable, relayed, held
    relayed = len(watcher.peer.frames)
    attacker.send(Message(Kind.SYNC_UPDATE, dependent_edits(2000)[1]))
    await turns()
    assert attacker.conn.close_code == CloseCode.MISSING_DEPENDENCIES and "5000 bytes" in attacker.conn.close_reason
    assert len(watcher.peer.frames) == relayed  # the refused one went nowhere
    assert room.missing_bytes == 0  # released: the Doc holds no waiting structs any more
    assert len(storage.stored_updates(document_id)) == 3  # "kept " and the two accepted
    good.text.insert(5, "and working")
    await turns()
    assert str(room.doc.get("content", type=Text)) == "kept and working"
    assert room.counters.values["collab_missing_refused_total"] == 1


def _step2_payloads(client: MemoryClient) -> list[bytes]:
    return [m.payload for m in client.peer.messages() if m.kind is Kind.SYNC_STEP2]


async def test_joiners_share_one_encoding_of_the_document_until_it_changes() -> None:
    """A fresh client's step 2 is the whole document, encoded once per change, not per joiner: the
    Doc's own encoding, never the stored bytes (which keep what the Doc has garbage-collected)."""
    doc, updates = Doc(), []
    doc.observe(lambda event: updates.append(event.update))
    text = doc.get("content", type=Text)
    text.insert(0, "x" * 10_000 + "stored")
    del text[0:10_000]
    stored = merge_updates(*updates)  # as a compaction stores them: the deleted text kept
    room = Room(uuid.uuid4())
    room.load_state(stored)
    first, second = MemoryClient().attach(room), MemoryClient().attach(room)
    await turns()
    whole = room.whole_update()
    assert whole == room.doc.get_update() and len(whole) < len(stored) // 10
    assert _step2_payloads(first) == _step2_payloads(second) == [whole] and room.whole_update() is whole
    assert room.state_vector() is room.state_vector() == room.doc.get_state()
    first.text.insert(0, "new ")
    await turns()
    third = MemoryClient().attach(room)
    await eventually(lambda: str(third), lambda s: s == "new stored", what="the joiner after an edit")
    assert room.whole_update() is not whole and room.whole_update() == room.doc.get_update()


async def test_a_loaded_state_past_the_missing_bound_is_not_served_to_joiners() -> None:
    """Structs released at load (waiting for changes the room never had) reach no joiner."""
    room = Room(uuid.uuid4(), max_missing_bytes=10)
    room.load_state(dependent_edits(100)[1])
    assert room.missing_bytes == 0 and room.whole_update() == room.doc.get_update() == b"\x00\x00"


async def test_every_change_to_the_document_reaches_the_next_joiner() -> None:
    """Each way the Doc changes (load, edit, step 2, another process's update, a release of
    waiting structs) refreshes the cached state vector and whole update."""
    room = Room(uuid.uuid4(), max_missing_bytes=1000)
    expected = ""

    async def joiner_sees_it() -> None:
        assert room.state_vector() == room.doc.get_state()
        fresh = MemoryClient().attach(room)
        await eventually(lambda: str(fresh), lambda s: s == expected, what=f"a joiner sees {expected!r}")
        fresh.conn.close(1000, "done")
        room.remove(fresh.conn)

    room.load_state(edit("a"))
    expected = "a"
    await joiner_sees_it()
    editor = MemoryClient().attach(room)
    await turns()
    editor.text.insert(len(editor.text), "b")
    expected = "ab"
    await turns()
    await joiner_sees_it()
    other = Doc()
    other.apply_update(room.doc.get_update())
    other.get("content", type=Text).insert(2, "c")
    MemoryClient().attach(room).send(Message(Kind.SYNC_STEP2, other.get_update()))
    expected = "abc"
    await turns()
    await joiner_sees_it()
    other.get("content", type=Text).insert(3, "d")
    room.apply_remote(other.get_update())
    expected = "abcd"
    await turns()
    await joiner_sees_it()
    editor.send(Message(Kind.SYNC_UPDATE, dependent_edits(2000)[1]))  # past the bound: released
    await turns()
    assert room.missing_bytes == 0
    await joiner_sees_it()
