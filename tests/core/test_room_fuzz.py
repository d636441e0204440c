"""Property tests of a Room driven as the transport drives it, with random valid and invalid frames.

Honest clients edit their documents while attackers send any frame at all, real updates with bytes
flipped, cut short or without their dependencies, awareness and state vectors. The room either
takes a frame or refuses it with a ProtocolError (the transport then closes that client alone, and it
reconnects); it never raises anything else, the honest clients are never refused and converge with the
room, and what storage holds always decodes to what the room holds (written ahead, and after compaction).
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from collab_server.core.awareness import encode_entries
from collab_server.core.protocol import (
    CloseCode,
    Kind,
    ProtocolError,
    decode,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
)
from collab_server.core.room import Room
from collab_server.storage.memory import MemoryStorage
from tests.core.memory import MemoryClient, turns

CLIENTS = 3

_ascii = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)  # indexes are per character
_edit = st.tuples(st.just("edit"), st.integers(0, 1000), _ascii)
_delete = st.tuples(st.just("delete"), st.integers(0, 1000), st.integers(1, 8))
_raw = st.tuples(st.just("raw"), st.binary(max_size=48))  # any frame at all
# A real update with bytes flipped, cut short, or without its dependencies.
_mangled = st.tuples(st.just("mangled"), st.text(min_size=1, max_size=12), st.integers(0, 63), st.integers(0, 255))
_truncated = st.tuples(st.just("truncated"), st.text(min_size=1, max_size=12), st.integers(0, 40))
_orphan = st.tuples(st.just("orphan"), st.text(min_size=1, max_size=12))
_awareness = st.tuples(st.just("awareness"), st.integers(0, 2**53), st.integers(0, 2**32), st.binary(max_size=24))
_step1 = st.tuples(st.just("step1"), st.binary(max_size=16))
ACTIONS = st.lists(
    st.tuples(st.integers(0, CLIENTS - 1),
              st.one_of(_edit, _delete, _raw, _mangled, _truncated, _orphan, _awareness, _step1)),
    max_size=25,
)


def _update(text: str) -> bytes:
    doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc.get_update()


def _orphan_update(text: str) -> bytes:
    """An update whose item depends on another never sent (a pending struct)."""
    doc = Doc()
    content = doc.get("content", type=Text)
    content.insert(0, "never sent ")
    before = doc.get_state()
    content.insert(len(str(content)), text)
    return doc.get_update(before)


def _frame(action: tuple[object, ...]) -> bytes | None:
    """The bytes a misbehaving client sends for an action, or None for an honest local edit."""
    match action:
        case ("raw", data):
            return data  # type: ignore[return-value]
        case ("mangled", text, at, xor):
            update = bytearray(_update(text))  # type: ignore[arg-type]
            update[at % len(update)] ^= xor  # type: ignore[operator]
            return encode_update(bytes(update))
        case ("truncated", text, cut):
            update = _update(text)  # type: ignore[arg-type]
            return encode_update(update[: max(0, len(update) - 1 - cut)])  # type: ignore[operator]
        case ("orphan", text):
            return encode_update(_orphan_update(text))  # type: ignore[arg-type]
        case ("awareness", client_id, clock, state):
            return encode_awareness(encode_entries([(client_id, clock, state)]))  # type: ignore[list-item]
        case ("step1", vector):
            return encode_sync_step1(vector)  # type: ignore[arg-type]
    return None


def _text(doc: Doc) -> str:
    return str(doc.get("content", type=Text))


async def _scenario(actions: list[tuple[int, tuple[object, ...]]]) -> None:
    storage = MemoryStorage()
    document_id = storage.create()
    room = Room(document_id, storage=storage, max_missing_bytes=4096)
    honest = [MemoryClient().attach(room) for _ in range(CLIENTS)]
    attackers = [MemoryClient().attach(room) for _ in range(CLIENTS)]
    for who, action in actions:
        frame = _frame(action)
        if frame is None:  # an honest edit of a client's own document
            client = honest[who]
            current = str(client.text)
            # pycrdt's offsets are not str's past ASCII (an index inside a character makes an update
            # no peer can integrate): an honest editor edits at 0 then, as a real one never splits one.
            length = len(current) if current.isascii() else 0
            if action[0] == "edit":
                client.text.insert(min(int(action[1]), length), str(action[2]))  # type: ignore[call-overload]
            elif length:
                at = min(int(action[1]), length - 1)  # type: ignore[call-overload]
                del client.text[at: min(length, at + int(action[2]))]  # type: ignore[call-overload]
        else:
            attacker = attackers[who]
            try:  # what the transport does with a frame: decode once, hand it over, close on refusal
                room.handle(attacker.conn, decode(frame))
            except ProtocolError as refused:
                attacker.conn.close(refused.code, refused.reason)
                room.remove(attacker.conn)
                attackers[who] = MemoryClient().attach(room)  # and it reconnects
        await turns()
    await turns(5)
    await storage.flush()
    held = _text(room.doc)
    for client in honest:
        assert not client.conn.closing, client.conn.close_reason  # an honest client is never refused
        assert str(client) == held, "an honest client diverged from the room"
    written = Doc()
    for row in storage.stored_updates(document_id):
        written.apply_update(row.payload)  # every row decodes (structs still waiting stay pending)
    await storage.compact(document_id)
    loaded = await storage.load(document_id)
    assert loaded is not None
    compacted = Doc()
    if loaded.state:
        compacted.apply_update(loaded.state)
    # The stored text is what the room has applied (waiting structs are stored but, like in the
    # room, not yet part of the text).
    assert _text(compacted) == held == _text(written)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: the profile's
@given(ACTIONS)
def test_random_frames_never_break_the_room_its_storage_or_the_honest_clients(actions) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(_scenario(actions))


@given(st.binary(max_size=64))
def test_the_frame_decoder_takes_or_refuses_any_bytes(frame: bytes) -> None:
    try:
        decode(frame)
    except ProtocolError as refused:
        assert refused.code == CloseCode.BAD_REQUEST and refused.reason


@given(st.sampled_from([(encode_update, Kind.SYNC_UPDATE), (encode_sync_step1, Kind.SYNC_STEP1),
                        (encode_sync_step2, Kind.SYNC_STEP2), (encode_awareness, Kind.AWARENESS)]),
       st.binary(max_size=300))
def test_what_the_server_encodes_decodes_to_itself(codec, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    encode, kind = codec
    message = decode(encode(payload))
    assert (message.kind, message.payload) == (kind, payload)


def test_garbage_and_an_orphan_update_between_honest_edits() -> None:
    """A fixed case the property must cover: garbage and an orphan update between honest edits."""
    actions = [(0, ("edit", 0, "hello ")), (1, ("raw", b"\x00\x02\xff")), (2, ("edit", 99, "world")),
               (1, ("edit", 0, "after the garbage")), (0, ("orphan", "later"))]
    asyncio.run(_scenario(actions))  # type: ignore[arg-type]
