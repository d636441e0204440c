"""What the simulated editors send: hand-encoded Yjs inserts, cursor moves, and the tags receivers look for."""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from typing import TYPE_CHECKING

from collab_server.core.awareness import encode_entries
from collab_server.core.hocuspocus import AUTH_PERMISSION_DENIED, address_prefix
from collab_server.core.protocol import (
    encode_awareness,
    encode_update,
    write_var_bytes,
    write_varuint,
)

if TYPE_CHECKING:
    from .runner import Runner

from .client import WSClient, ws_connect

ROOT_KEY = b"content"  # the Y.Text every client types into (what the demo editor uses)

# A tag is inserted as text; it cannot be produced by the varint framing around it.
_TAG = re.compile(rb"\x02(\d+)\.(\d+)\x03")
_CURSOR_TAG = re.compile(rb'"k":"(\d+)\.(\d+)"')
STEP1_EMPTY = b"\x00\x00\x01\x00"  # sync step 1 with an empty state vector
STEP2_EMPTY = b"\x00\x01\x02\x00\x00"  # sync step 2 with an empty update


# -- hand-encoded Yjs updates --------------------------------------------------------------


def encode_text_insert(
    client_id: int,
    clock: int,
    text: bytes,
    origin: tuple[int, int] | None = None,
    right_origin: tuple[int, int] | None = None,
    root: bytes = ROOT_KEY,
) -> bytes:
    """One Yjs v1 update inserting ASCII `text` as item (client_id, clock) into Y.Text `root`,
    after `origin` and before `right_origin` (item IDs); without either, into the root directly.
    Byte for byte what Yjs and pycrdt emit for the same insert."""
    info = 4 | (0x80 if origin else 0) | (0x40 if right_origin else 0)  # 4: ContentString
    parts = [b"\x01\x01", write_varuint(client_id), write_varuint(clock), bytes((info,))]
    if origin:
        parts += (write_varuint(origin[0]), write_varuint(origin[1]))
    if right_origin:
        parts += (write_varuint(right_origin[0]), write_varuint(right_origin[1]))
    if not origin and not right_origin:
        parts.append(b"\x01" + write_var_bytes(root))  # parent is a root type named `root`
    parts += (write_var_bytes(text), b"\x00")  # content, then an empty delete set
    return b"".join(parts)


def tags_in(data: bytes) -> list[tuple[int, int]]:
    """The (sender, seq) tags inserted by the load generator found in a frame or update."""
    return [(int(m[1]), int(m[2])) for m in _TAG.finditer(data)]




# -- the simulated clients -----------------------------------------------------------------


class RoomSlot:
    __slots__ = ("clients", "idents", "index", "name", "url")

    def __init__(self, index: int, name: str, url: str) -> None:
        self.index = index
        self.name = name
        self.url = url
        self.clients: list[LoadClient] = []  # connected (or connecting) right now
        self.idents: list[int] = []  # every sender identity that ever joined this room


class LoadClient:
    """One simulated editor: its own Yjs client id, text clock and the tags it has seen."""

    __slots__ = (
        "aw_clock", "cid", "cid_enc", "clock", "closing", "connect_started", "gone", "ident", "join_ms",
        "keep", "own", "prefix", "reconnects", "role", "room", "run", "seen", "seq", "step1_at", "step2_bytes",
        "sync_ms", "synced", "synced_at", "ws",
    )

    def __init__(self, run: Runner, room: RoomSlot, role: str, keep: bool) -> None:
        self.run = run
        self.room = room
        self.role = role
        self.ident = run.new_ident(room)
        self.cid = random.getrandbits(31) + 1  # Yjs client ids are 32-bit
        self.cid_enc = write_varuint(self.cid)
        self.clock = 0
        self.seq = 0
        self.aw_clock = 0
        self.seen: dict[int, bytearray] = {}
        self.keep: list[bytes] | None = [] if keep else None
        self.own: list[bytes] | None = [] if keep else None
        self.ws: WSClient | None = None
        self.synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.synced_at = math.inf
        self.connect_started = 0.0
        self.step1_at = 0.0
        self.join_ms = 0.0
        self.sync_ms = 0.0
        self.step2_bytes = 0
        self.closing = False
        self.gone = False
        self.reconnects = 0
        # The Hocuspocus dialect: the document's address before every message, both ways.
        self.prefix = address_prefix(room.name) if run.config.dialect == "hocuspocus" else b""

    # -- connecting -----------------------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        self.connect_started = time.perf_counter()
        await ws_connect(self.room.url, self._on_message, self._on_close, timeout, bind=self._bind)
        self.step1_at = time.perf_counter()
        assert self.ws is not None  # set by _bind during the handshake
        if self.prefix:
            token = self.run.config.params.get("token", "").encode()
            self.ws.send(self.prefix + b"\x02\x00" + write_var_bytes(token))
        self.ws.send(self.prefix + STEP1_EMPTY)
        async with asyncio.timeout(timeout):
            await asyncio.shield(self.synced)

    def _bind(self, ws: WSClient) -> None:
        self.ws = ws

    @property
    def live(self) -> bool:
        return self.ws is not None and self.ws.open and self.synced_at != math.inf and not self.closing

    def _on_close(self, code: int, reason: str) -> None:
        self.gone = True
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(f"closed before sync: {code} {reason}".strip()))
            self.synced.exception()  # retrieved: the awaiting side reports it
        self.run.client_closed(self, code, reason)

    # -- receiving (the hot path) ---------------------------------------------------------

    def _on_message(self, data: bytes, now: float) -> None:
        prefix = self.prefix
        if prefix:
            if not data.startswith(prefix):
                return
            data = data[len(prefix):]
        if len(data) < 2:
            return
        kind = data[0]
        if kind == 0:
            sub = data[1]
            if sub == 2:
                self._on_update(data, now)
            elif sub == 1:
                self._on_step2(data, now)
            elif sub == 0:
                self.ws.send(prefix + STEP2_EMPTY)  # type: ignore[union-attr]  # a fresh client has nothing
        elif kind == 1:
            self._on_awareness(data, now)
        elif kind == 2 and (not prefix or data[1] == AUTH_PERMISSION_DENIED):  # (else: Authenticated)
            self.run.error(f"permission denied: {data[2:][:120]!r}")

    def _on_update(self, data: bytes, now: float) -> None:
        run = self.run
        seen = self.seen
        sent_at = run.sent_at
        lat = run.lat
        new = 0
        own = self.ident
        for m in _TAG.finditer(data):
            ident = int(m[1])
            if ident == own:
                continue  # the reference server echoes updates to their sender too
            seq = int(m[2])
            arr = seen_bits(seen, ident, seq)
            if not arr[seq]:
                arr[seq] = 1
                try:
                    lat.append(now - sent_at[ident][seq])
                except IndexError:
                    run.unknown_tags += 1
                    continue
                new += 1
        run.delivered += new
        if self.keep is not None:
            self.keep.append(data)

    def _on_step2(self, data: bytes, now: float) -> None:
        seen = self.seen
        for m in _TAG.finditer(data):
            ident = int(m[1])
            seq = int(m[2])
            seen_bits(seen, ident, seq)[seq] = 1
        if self.keep is not None:
            self.keep.append(data)
        if not self.synced.done():
            self.synced_at = now
            self.sync_ms = (now - self.step1_at) * 1000
            self.join_ms = (now - self.connect_started) * 1000
            self.step2_bytes = len(data)
            self.synced.set_result(None)

    def _on_awareness(self, data: bytes, now: float) -> None:
        run = self.run
        synced_at = self.synced_at
        for m in _CURSOR_TAG.finditer(data):
            ident = int(m[1])
            if ident == self.ident:
                continue
            try:
                sent = run.cursor_sent_at[ident][int(m[2])]
            except IndexError:
                run.unknown_tags += 1
                continue
            if sent >= synced_at:
                run.cursor_lat.append(now - sent)

    # -- sending --------------------------------------------------------------------------

    def type_one(self) -> None:
        """Append one tagged string to this client's run of text and send it."""
        ws = self.ws
        if ws is None or not ws.open:
            return
        seq = self.seq
        self.seq = seq + 1
        text = b"\x02%d.%d\x03" % (self.ident, seq)
        clock = self.clock
        if clock == 0:
            body = b"\x04\x01\x07content" + bytes((len(text),)) + text
        else:
            body = b"\x84" + self.cid_enc + write_varuint(clock - 1) + bytes((len(text),)) + text
        update = b"\x01\x01" + self.cid_enc + write_varuint(clock) + body + b"\x00"
        self.clock = clock + len(text)
        frame = encode_update(update)
        self.run.sent_at[self.ident].append(time.perf_counter())
        ws.send(self.prefix + frame)
        if self.own is not None:
            self.own.append(frame)

    def move_cursor(self) -> None:
        ws = self.ws
        if ws is None or not ws.open:
            return
        seqs = self.run.cursor_sent_at[self.ident]
        self.aw_clock += 1
        state = b'{"user":{"name":"lt-%d"},"cursor":{"anchor":%d,"head":%d},"k":"%d.%d"}' % (
            self.ident, self.clock, self.clock, self.ident, len(seqs))
        seqs.append(time.perf_counter())
        ws.send(self.prefix + encode_awareness(encode_entries([(self.cid, self.aw_clock, state)])))

    def leave(self) -> None:
        self.closing = True
        if self.ws is not None:
            self.ws.close(1000, "")




def seen_bits(seen: dict[int, bytearray], ident: int, seq: int) -> bytearray:
    """The delivered-flags of one sender, grown to hold `seq`."""
    arr = seen.get(ident)
    if arr is None:
        arr = seen[ident] = bytearray(max(256, seq + 256))
    elif seq >= len(arr):
        arr.extend(bytes(max(seq + 256, 2 * len(arr)) - len(arr)))
    return arr
