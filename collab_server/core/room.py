"""One open document: its pycrdt Doc, its awareness, its connections, and fan-out.

Messages of a room are handled synchronously in arrival order (the event loop is the room's
lock): apply to the Doc, then queue the resulting frame for every other connection. The
updates applied in one loop turn leave as one frame, encoded once and shared by every
receiver, and are handed once to the write-ahead and once to the extensions. What is relayed and
stored is the update as the client sent it (as y-websocket's server relays it): re-encoding it from
a Doc observer would more than double the cost of applying it (5.3 → 12.6 µs measured).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from uuid import UUID

from pycrdt import Doc, get_update, merge_updates

from .awareness import AwarenessChange, RoomAwareness
from .connection import ClientInfo, Connection
from .counters import Counters
from .extension import AppliedUpdate, Extensions, UpdateBatch
from .protocol import (
    CloseCode,
    Kind,
    Message,
    ProtocolError,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
)
from .storage import PendingUpdate, Storage

log = logging.getLogger("collab.room")

_NO_EXTENSIONS = Extensions()
_EMPTY_UPDATE = b"\x00\x00"  # no structs, no deletions
_EMPTY_VECTOR = b"\x00"  # a state vector that knows nothing: a fresh client's sync step 1
# The largest whole-document update a room keeps for joiners. Kept until the next change, it costs at most
# about a fifth of what the Doc itself holds (measured: a 35 KiB encoding, 173 KiB of Doc).
WHOLE_CACHE_BYTES = 256 * 1024
SIZE_RECHECK = 5.0  # seconds between exact measurements of a document at its size limit


def _has_structs(update: bytes) -> bool:
    """Whether a v1 update carries structs (its first varint counts the clients that have some)."""
    return update[:1] != b"\x00"


class Room:
    def __init__(
        self,
        document_id: UUID,
        workspace_id: UUID | None = None,
        doc_type: str = "markdown",
        storage: Storage | None = None,
        extensions: Extensions | None = None,
        counters: Counters | None = None,
        max_awareness_clients: int = 32,
        max_bytes: int = 0,
        max_missing_bytes: int = 1 << 20,
    ) -> None:
        self.id = document_id
        self.workspace_id = workspace_id
        self.type = doc_type
        self.doc: Doc[Any] = Doc()
        self.awareness = RoomAwareness(max_per_owner=max_awareness_clients)
        self.connections: set[Connection] = set()
        self._storage = storage
        self._extensions = extensions if extensions is not None else _NO_EXTENSIONS
        self.counters = counters if counters is not None else Counters()
        self._pending: list[AppliedUpdate] = []
        self._acks: dict[Connection, int] = {}  # edits to acknowledge at this turn's flush
        # Acknowledgements waiting for a write-ahead row to commit (the last row of their flush).
        self.awaiting_commit: list[tuple[PendingUpdate, dict[Connection, int]]] = []
        self._markers: set[int] = set()  # ids of the rows in awaiting_commit (one check per committed row)
        self.write_refused = False
        # The document's size: estimated (stored state + every update applied since), measured
        # exactly only near `max_bytes` (0: no limit), and at most every SIZE_RECHECK seconds.
        self.max_bytes = max_bytes
        self.size = 0
        self._measured_at = -SIZE_RECHECK
        # Structs waiting in the Doc for changes it does not have (Yjs "pending"): what of each
        # update could not integrate, re-checked as others arrive. Bounded by `max_missing_bytes`.
        self.max_missing_bytes = max_missing_bytes
        self._missing: list[bytes] = []
        self.missing_bytes = 0
        # The Doc's state vector and its whole state as one update, encoded once and kept until it
        # changes: every joiner is sent the first and a fresh client asks for the second.
        self._vector: bytes | None = None
        self._whole: bytes | None = None

    # -- the document's encodings, cached until it changes ------------------------------------

    def state_vector(self) -> bytes:
        vector = self._vector
        if vector is None:
            vector = self._vector = self.doc.get_state()
        return vector

    def whole_update(self) -> bytes:
        """The whole document as one update (what a client that has nothing is sent)."""
        whole = self._whole
        if whole is None:
            whole = self.doc.get_update()
            if len(whole) <= WHOLE_CACHE_BYTES:
                self._whole = whole
        return whole

    def _changed(self) -> None:
        self._vector = self._whole = None

    # -- loading -------------------------------------------------------------------------

    def load_state(self, state: bytes) -> None:
        """Apply the stored state without relaying or re-storing it."""
        if state:
            self._changed()
            self.doc.apply_update(state)
            self._hold_missing(state)
        self.size = len(state)

    # -- connections ---------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        # What a y-websocket server sends on connect: its step 1, then everyone's awareness. (A
        # Hocuspocus client gets the step 1 in answer to its own, after the step 2.)
        if not conn.acknowledges:
            conn.send(encode_sync_step1(self.state_vector()))
        states = self.awareness.encode_all()
        if states is not None:
            conn.send(encode_awareness(states))

    def remove(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._acks.pop(conn, None)
        self.drop_owner(conn)

    def drop_owner(self, owner: object) -> None:
        """Remove every awareness state `owner` (a connection or a dead process) announced."""
        removal = self.awareness.remove_owner(owner)
        if removal is None:
            return
        self.broadcast(encode_awareness(removal), exclude=owner if isinstance(owner, Connection) else None)
        self._extensions.on_awareness(self, owner, AwarenessChange(removal, {}, 0))

    # -- messages ------------------------------------------------------------------------

    def handle(self, conn: Connection, msg: Message) -> None:
        kind = msg.kind
        if kind is Kind.SYNC_UPDATE:
            self._handle_update(conn, msg.payload, as_sent=True)
        elif kind is Kind.SYNC_STEP2:
            self._handle_update(conn, msg.payload, as_sent=False)
        elif kind is Kind.AWARENESS:
            self._handle_awareness(conn, msg.payload)
        elif kind is Kind.SYNC_STEP1:
            try:
                diff = self.whole_update() if msg.payload == _EMPTY_VECTOR else self.doc.get_update(msg.payload)
            except BaseException as exc:  # ValueError, or a Rust panic (PanicException is a BaseException)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise ProtocolError(CloseCode.INVALID_PAYLOAD, "invalid state vector") from None
            conn.send(encode_sync_step2(diff))
            if conn.acknowledges:
                # As Hocuspocus answers: its step 1 follows, and the client's step 2 in reply is
                # acknowledged, which is what settles the provider's sync (and `forceSync`).
                conn.send(encode_sync_step1(self.state_vector()))
        elif kind is Kind.QUERY_AWARENESS:
            states = self.awareness.encode_all()
            if states is not None:
                conn.send(encode_awareness(states))
        # Kind.AUTH from a client carries nothing we act on.

    def _handle_update(self, conn: Connection, update: bytes, as_sent: bool) -> None:
        if not conn.info.can_write:
            conn.edit_refused(None if as_sent else lambda thorough: self.knows(update, thorough))
            return
        if self._storage is not None and not self._storage.has_room_for(len(update)):
            raise ProtocolError(CloseCode.TRY_AGAIN_LATER, "storage backlog full: edits are paused, reconnect later")
        self.apply_update(update, conn, as_sent=as_sent)
        if conn.acknowledges:
            self._owe_acknowledgement(conn)

    def knows(self, update: bytes, thorough: bool = True) -> bool:
        """Whether applying `update` would change nothing: an empty update at once, anything else
        tried on a copy of the document when `thorough` (for read-only clients' sync step 2; the
        connection allows it once), else assumed new."""
        if update == _EMPTY_UPDATE:
            return True
        if not thorough:
            return False
        copy: Doc[Any] = Doc()
        copy.apply_update(self.whole_update())
        try:
            return not self._apply_observed(update, copy)
        except BaseException as exc:  # invalid update, or a Rust panic
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return False

    # -- acknowledgements (clients that count unsynced edits) -------------------------------

    def _owe_acknowledgement(self, conn: Connection) -> None:
        """Acknowledged at this turn's flush: with what it writes ahead, once that is committed."""
        if not self._acks and not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._acks[conn] = self._acks.get(conn, 0) + 1

    def _acknowledge(self, acks: dict[Connection, int]) -> None:
        for conn, count in acks.items():
            if conn in self.connections:
                conn.edits_durable(count)

    def committed(self, update: PendingUpdate) -> None:
        """The hub saw `update` of this room committed: acknowledge what waited for it (and
        anything queued before it: commits come in append order)."""
        if id(update) not in self._markers:
            return
        queue = self.awaiting_commit
        while queue:
            marker, acks = queue.pop(0)
            self._markers.discard(id(marker))
            self._acknowledge(acks)
            if marker is update:
                return

    def apply_update(
        self, update: bytes, origin: Connection | None, actor: ClientInfo | None = None, *, as_sent: bool = True
    ) -> None:
        """Apply an update (from a client or the HTTP API); raise ProtocolError if invalid.
        `actor` names who made it when there is no connection (HTTP), for the write-ahead.

        An edit (`as_sent`) is relayed and stored as it came. A sync step 2 is not: a reconnecting
        client's step 2 carries its whole delete set and mostly what the room has, so only what it
        changed here is kept (what a Doc observer reports), once per connection."""
        if update == _EMPTY_UPDATE:
            return
        if self.max_bytes:
            self._admit(len(update))
        self._changed()
        try:
            if as_sent:
                self.doc.apply_update(update)
                changes = [update]
            else:
                changes = self._apply_observed(update)
        except ValueError:
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, "invalid Yjs update") from None
        except BaseException as exc:  # a Rust panic surfaces as PanicException (a BaseException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            log.error("pycrdt failed on an update in room %s: %r", self.id, exc)
            raise ProtocolError(CloseCode.INVALID_PAYLOAD, "invalid Yjs update") from None
        if not as_sent or origin is None:
            # A step 2's waiting structs are stored too (no observer saw them); an HTTP write is
            # refused here, while it can still be told. Clients' edits are checked at the flush.
            left = get_update(update, self.state_vector())
            if _has_structs(left):
                limit = self.max_missing_bytes
                if origin is None and limit and self.missing_bytes + len(left) > limit:
                    self._release_missing()  # noted at the flush otherwise, as a client's edit is
                    raise ProtocolError(CloseCode.MISSING_DEPENDENCIES, self._refuse_one())
                if not as_sent:
                    changes.append(left)
        who = actor if actor is not None else (origin.info if origin is not None else None)
        for change in changes:
            self._collect(AppliedUpdate(change, origin, who, False))

    def _admit(self, size: int) -> None:
        """Refuse an edit that would take the document past its size limit (4413 / HTTP 413)."""
        if self.size + size > self.max_bytes:
            now = time.monotonic()
            if now - self._measured_at >= SIZE_RECHECK:  # deletions, merges: the estimate runs high
                self._measured_at = now
                self.size = len(self.whole_update())
            if self.size + size > self.max_bytes:
                raise ProtocolError(
                    CloseCode.DOCUMENT_TOO_LARGE,
                    f"the document is at its size limit ({self.max_bytes} bytes): edits are refused",
                )
        self.size += size

    def _hold_missing(self, update: bytes, state: bytes | None = None) -> bool:
        """Note what of `update` waits for changes the room does not have, re-check what waited
        before; past `max_missing_bytes`, rebuild the Doc without any waiting structs (those that
        were accepted are in storage: a compaction merges them, never drops them) and say so."""
        state = self.state_vector() if state is None else state
        left = get_update(update, state)
        if not self._missing and not _has_structs(left):
            return False
        self._missing = [m for m in self._missing if _has_structs(get_update(m, state))]
        if _has_structs(left):
            self._missing.append(left)
        self.missing_bytes = sum(len(m) for m in self._missing)
        if not self.max_missing_bytes or self.missing_bytes <= self.max_missing_bytes:
            return False
        log.warning("room %s: %d bytes of updates wait for missing changes; released", self.id, self.missing_bytes)
        self._release_missing()
        return True

    def _refuse_one(self) -> str:
        """Count a refused update; the reason to send with it."""
        self.counters.inc("collab_missing_refused_total")
        return f"updates depending on changes this document does not have exceed {self.max_missing_bytes} bytes"

    def _refuse_missing(self, pending: list[AppliedUpdate], merged: bytes) -> list[AppliedUpdate]:
        """Once per turn, for the whole batch (an encode of the state vector and a diff): past the
        limit, the edits that left structs waiting are neither relayed nor stored, and their
        connections are closed (4409)."""
        state = self.state_vector()
        if not self._hold_missing(merged, state):
            return pending
        offenders = {p.origin for p in pending if p.origin is not None and _has_structs(get_update(p.update, state))}
        for conn in offenders:
            conn.close(CloseCode.MISSING_DEPENDENCIES, self._refuse_one())
        return [p for p in pending if p.origin not in offenders]

    def _release_missing(self) -> None:
        """A Doc without the waiting structs (its encoding leaves them out). Nothing holds on to
        the old one: every reader asks the room for `doc` when it needs it."""
        fresh: Doc[Any] = Doc()
        fresh.apply_update(self.doc.get_update())
        self.doc = fresh
        self._changed()
        self._missing = []
        self.missing_bytes = 0

    def _apply_observed(self, update: bytes, doc: Doc[Any] | None = None) -> list[bytes]:
        doc = self.doc if doc is None else doc
        changes: list[bytes] = []
        subscription = doc.observe(lambda event: changes.append(event.update))
        try:
            doc.apply_update(update)
        finally:
            doc.unobserve(subscription)
        return changes

    def apply_remote(self, update: bytes) -> None:
        """Apply what another process (or the store, in a repair) already wrote ahead: relay
        the part that is new here to local clients, but do not store it again. Only the new part:
        a repair applies a whole stored state, which local clients mostly have."""
        self._changed()
        for change in self._apply_observed(update):
            self.size += len(change)  # stored elsewhere already: counted, never refused
            self._collect(AppliedUpdate(change, None, None, True))

    def apply_remote_awareness(self, payload: bytes, owner: object) -> None:
        """Awareness relayed by another process, recorded under `owner` (which stands for it)."""
        change = self.awareness.apply(payload, owner, may_take_over=lambda _other: True, limited=False)
        if change.relay is not None:
            self.broadcast(encode_awareness(change.relay))
            self._extensions.on_awareness(self, owner, change)

    def _collect(self, applied: AppliedUpdate) -> None:
        # Collected, not sent: everything applied in this loop turn leaves as one message.
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(applied)

    def _flush(self) -> None:
        """Send this turn's updates: merged once into one frame shared by every receiver, and
        one write-ahead row per author. The sender is excluded when it is the only origin;
        otherwise everyone gets the merged frame (Yjs ignores what it already has). Edits of
        clients that count acknowledgements are acknowledged once their rows are committed."""
        pending, self._pending = self._pending, []
        acks, self._acks = self._acks, {}
        last: PendingUpdate | None = None
        refused = False
        if pending:
            merged = pending[0].update if len(pending) == 1 else merge_updates(*(p.update for p in pending))
            kept = self._refuse_missing(pending, merged) if self.max_missing_bytes else pending
            if len(kept) < len(pending):
                pending = kept
                merged = merge_updates(*(p.update for p in pending)) if pending else b""
                acks = {conn: n for conn, n in acks.items() if not conn.closing}
        if pending:
            first = pending[0]
            only = first.origin if all(p.origin is first.origin for p in pending) else None
            self.broadcast(encode_update(merged), exclude=only)
            batch = UpdateBatch(merged, pending, any(not p.remote for p in pending))
            if self._storage is not None and batch.local:
                last, refused = self._write_ahead(pending)
            self._extensions.on_updates(self, batch)
        if acks and not refused:  # a row the backlog refused is not stored: nobody hears "saved"
            if last is None:  # nothing of theirs to store (an empty step 2, no storage)
                self._acknowledge(acks)
            else:
                self.awaiting_commit.append((last, acks))
                self._markers.add(id(last))

    def _write_ahead(self, pending: list[AppliedUpdate]) -> tuple[PendingUpdate | None, bool]:
        """One row per author; returns the last row appended, and whether the backlog refused one."""
        by_actor: dict[int, list[AppliedUpdate]] = {}
        for p in pending:
            if not p.remote:
                by_actor.setdefault(id(p.actor), []).append(p)
        assert self._storage is not None
        last: PendingUpdate | None = None
        refused = False
        for group in by_actor.values():
            info = group[0].actor
            payload = group[0].update if len(group) == 1 else merge_updates(*(p.update for p in group))
            row = PendingUpdate(
                self.id,
                payload,
                info.user_id if info else None,
                info.device_name if info else None,
                info.client_version if info else None,
            )
            if self._storage.append(row):
                last = row
            else:  # checked before applying; only a race with a huge update lands here
                refused = self.write_refused = True
                log.error("write-ahead backlog full: an update of room %s is held in memory only", self.id)
        return last, refused

    def _handle_awareness(self, conn: Connection, payload: bytes) -> None:
        change = self.awareness.apply(
            payload,
            conn,
            # A reconnecting client may reclaim its client ID from its own dead connection, or
            # from another process it was connected to a moment ago (an owner that is not ours).
            may_take_over=lambda other: not isinstance(other, Connection) or other.info.user_id == conn.info.user_id,
        )
        if change.dropped:
            self.counters.inc("collab_awareness_dropped_total", change.dropped)
        if change.relay is not None:
            # Echoed to the sender too: y-websocket clients reconnect after 30 s without
            # receiving anything, and a client alone in a room only hears its own echo.
            self.broadcast(encode_awareness(change.relay))
        if change.relay is not None or change.states:
            self._extensions.on_awareness(self, conn, change)

    def stateless(self, conn: Connection, payload: str) -> None:
        """An application message from a client: to the extensions (the application's hook, then
        the bus), then, unless a hook refused it, to the document's other connections."""
        if self._extensions.on_stateless(self, conn, payload):
            self.relay_stateless(payload, exclude=conn)

    def relay_stateless(self, payload: str, exclude: Connection | None = None) -> None:
        """Deliver a stateless message here (from a client, or another process through the bus)."""
        for other in self.connections:
            if other is not exclude:
                other.send_stateless(payload)

    def broadcast(self, frame: bytes, exclude: Connection | None = None) -> None:
        for conn in self.connections:
            if conn is not exclude:
                conn.send(frame)
        self.counters.values["collab_messages_out_total"] += len(self.connections) - (exclude in self.connections)

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.connections):
            conn.close(code, reason)
