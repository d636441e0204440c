"""A room's awareness: who is here and their cursor, scoped to one document.

Unlike y-protocols' Awareness (built for a client with one local state), this keeps, for
every remote client ID, the connection that owns it, so that when a socket dies we can
broadcast the removal of exactly its clients at once instead of letting peers show a ghost
until their 30-second timeout. States are JSON-validated: an entry with invalid JSON is
dropped and never relayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .protocol import CloseCode, ProtocolError, read_var_bytes, read_varuint, write_varuint

_NULL = b"null"


@dataclass(slots=True)
class Entry:
    clock: int
    state: bytes  # the JSON text as received (re-sent verbatim to late joiners)
    owner: object | None  # the connection that sent it; None once removed
    parsed: Any


@dataclass(slots=True)
class AwarenessChange:
    """The result of applying one awareness update from a connection."""

    relay: bytes | None  # awareness update to forward to the room (None: nothing to forward)
    states: dict[int, Any]  # client id -> parsed state (None when removed), for presence
    dropped: int  # entries dropped as invalid or not owned by the sender


def decode_entries(update: bytes) -> list[tuple[int, int, bytes]]:
    count, pos = read_varuint(update, 0)
    entries = []
    for _ in range(count):
        client_id, pos = read_varuint(update, pos)
        clock, pos = read_varuint(update, pos)
        state, pos = read_var_bytes(update, pos)
        entries.append((client_id, clock, state))
    if pos != len(update):
        raise ProtocolError(CloseCode.BAD_REQUEST, "trailing bytes after the awareness update")
    return entries


def encode_entries(entries: list[tuple[int, int, bytes]]) -> bytes:
    parts = [write_varuint(len(entries))]
    for client_id, clock, state in entries:
        parts += (write_varuint(client_id), write_varuint(clock), write_varuint(len(state)), state)
    return b"".join(parts)


class RoomAwareness:
    """Entries of clients that left stay as tombstones (their clock orders late updates, as in
    y-protocols), at most `max_tombstones` of them: the oldest go first. A connection may announce
    at most `max_per_owner` client IDs (a provider has one per document); more closes it (1008)."""

    def __init__(self, max_per_owner: int = 32, max_tombstones: int = 10_000) -> None:
        self._entries: dict[int, Entry] = {}
        self._counts: dict[int, int] = {}  # id(owner) -> live entries it owns
        self._tombstones = 0
        self.max_per_owner = max_per_owner
        self.max_tombstones = max_tombstones

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.owner is not None)

    def _own(self, owner: object | None, delta: int) -> None:
        if owner is None:
            self._tombstones += delta
            return
        key = id(owner)
        count = self._counts.get(key, 0) + delta
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def apply(
        self, update: bytes, owner: object, may_take_over: Callable[[object], bool], limited: bool = True
    ) -> AwarenessChange:
        """Apply an update sent by `owner`. `may_take_over(current_owner)` lets a reconnecting
        client claim its client ID from a connection not yet known to be dead (same user).
        `limited`: hold `owner` to `max_per_owner` (not another process, which speaks for many)."""
        entries = decode_entries(update)
        accepted: list[tuple[int, int, bytes]] = []
        states: dict[int, Any] = {}
        dropped = 0
        for client_id, clock, state in entries:
            current = self._entries.get(client_id)
            if current is not None and current.owner not in (None, owner) and not may_take_over(current.owner):
                dropped += 1
                continue
            is_null = state == _NULL
            if current is not None and not (
                current.clock < clock or (current.clock == clock and is_null and current.owner is not None)
            ):
                continue  # stale: y-protocols ignores it too
            if is_null:
                parsed = None
            else:
                try:
                    parsed = orjson.loads(state)
                except orjson.JSONDecodeError:
                    dropped += 1
                    continue
            new_owner = None if is_null else owner
            if (
                limited and new_owner is not None and (current is None or current.owner is not owner)
                and self._counts.get(id(owner), 0) >= self.max_per_owner
            ):
                raise ProtocolError(
                    CloseCode.POLICY_VIOLATION,
                    f"more than {self.max_per_owner} awareness client IDs on one connection",
                )
            if current is not None:
                self._own(current.owner, -1)
            self._own(new_owner, 1)
            self._entries[client_id] = Entry(clock, state, new_owner, parsed)
            accepted.append((client_id, clock, state))
            states[client_id] = parsed
        self._prune()
        if not accepted:
            return AwarenessChange(None, states, dropped)
        relay = update if len(accepted) == len(entries) else encode_entries(accepted)
        return AwarenessChange(relay, states, dropped)

    def _prune(self) -> None:
        """Forget the oldest tombstones past the bound (a dict keeps insertion order)."""
        excess = self._tombstones - self.max_tombstones
        if excess <= 0:
            return
        for client_id in [cid for cid, e in self._entries.items() if e.owner is None][:excess]:
            del self._entries[client_id]
        self._tombstones -= excess

    def encode_all(self, owned: Callable[[object], bool] | None = None) -> bytes | None:
        """Everyone's current state (or those whose owner passes `owned`), for a late joiner,
        a query-awareness, or a process that just joined the bus."""
        live = [
            (cid, e.clock, e.state)
            for cid, e in self._entries.items()
            if e.owner is not None and (owned is None or owned(e.owner))
        ]
        return encode_entries(live) if live else None

    def remove_owner(self, owner: object) -> bytes | None:
        """Forget every client `owner` announced; return the removal update to broadcast."""
        removed = []
        for client_id, e in self._entries.items():
            if e.owner is owner:
                e.clock += 1
                e.owner = None
                e.state = _NULL
                e.parsed = None
                removed.append((client_id, e.clock, _NULL))
        self._counts.pop(id(owner), None)
        self._tombstones += len(removed)
        self._prune()
        return encode_entries(removed) if removed else None

    def owned_by(self, owner: object) -> dict[int, Any]:
        return {cid: e.parsed for cid, e in self._entries.items() if e.owner is owner}

    def states(self) -> dict[int, Any]:
        return {cid: e.parsed for cid, e in self._entries.items() if e.owner is not None}
