"""Live presence in Redis: one record per connection, a 5-minute TTL, ghosts filtered fast.

Redis is the live store (the seed's `presence` table would cost a PostgreSQL write per
cursor move and outlive crashed processes); PostgreSQL keeps the table for history and
tooling only. Writes are coalesced per connection (at most one per `min_interval`) and
sent in one pipeline per tick, so cursor storms cost a bounded number of commands.
Records name their process; a process refreshes a short-lived heartbeat key, and listings
leave out records whose process key has expired long before the 300 s TTL cleans them up.
Every call fails soft: Redis down never stops editing, and the next heartbeat rewrites.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collab_server.config import Settings
from collab_server.core.awareness import AwarenessChange
from collab_server.core.connection import Connection
from collab_server.core.extension import Extension
from collab_server.core.hub import Hub
from collab_server.core.room import Room

from .stopping import bounded, cancel_and_reap

log = logging.getLogger("collab.presence")

PREFIX = "collab:"
# How long the flusher gathers changes before one pipeline: a connect storm's joins share it, and
# a connection that joins and leaves inside it (a cold room opened and read) never reaches Redis.
BATCH_SECONDS = 0.02

# A flush's records and their index entries in one command: a connect storm's flush would otherwise
# be a SET per connection and a ZADD per document (each a reply for redis-py to parse, under its own
# timeout). KEYS: the n record keys, then the index keys; ARGV: ttl, n, the n records, then for
# each index key its member count and (score, member) pairs, added 500 pairs at a time (Lua's
# unpack has a limit). EVAL rather than EVALSHA, so a Redis that restarted and lost its script
# cache needs no second attempt.
_WRITE_SCRIPT = """
local ttl, n = ARGV[1], tonumber(ARGV[2])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 + i], 'EX', ttl)
end
local at = 3 + n
for j = n + 1, #KEYS do
  local stop = at + 1 + 2 * tonumber(ARGV[at])
  at = at + 1
  while at < stop do
    local last = math.min(at + 999, stop - 1)
    redis.call('ZADD', KEYS[j], unpack(ARGV, at, last))
    at = last + 1
  end
end
return n
"""

# One round trip: prune expired index members, read the live records, drop dead processes.
_LIST_SCRIPT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local out = {}
for _, id in ipairs(ids) do
  local record = redis.call('GET', ARGV[2] .. id)
  if record then
    local proc = cjson.decode(record)['process_id']
    if redis.call('EXISTS', ARGV[3] .. proc) == 1 then
      table.insert(out, record)
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


def record_key(connection_id: str) -> str:
    return f"{PREFIX}presence:{connection_id}"


def index_key(document_id: UUID | str) -> str:
    return f"{PREFIX}presence:doc:{document_id}"


def process_key(process_id: str) -> str:
    return f"{PREFIX}process:{process_id}"


def _first(state: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in state and state[name] is not None:
            return state[name]
    return None


def fields_from_awareness(state: Any) -> dict[str, Any]:
    """Map an awareness state to presence fields (README: "Presence field mapping")."""
    if not isinstance(state, dict):
        return {}
    out: dict[str, Any] = {}
    cursor = _first(state, "cursor", "cursor_position", "cursorPosition")
    if isinstance(cursor, dict) and ("anchor" in cursor or "head" in cursor):
        out["cursor_position"] = cursor.get("head", cursor.get("anchor"))
        out["selection_range"] = {"anchor": cursor.get("anchor"), "head": cursor.get("head")}
    elif cursor is not None:
        out["cursor_position"] = cursor
    selection = _first(state, "selection", "selection_range", "selectionRange")
    if selection is not None:
        out["selection_range"] = selection
    typing = _first(state, "typing", "is_typing", "isTyping")
    if typing is not None:
        out["is_typing"] = bool(typing)
    active = _first(state, "active", "is_active", "isActive")
    if active is not None:
        out["is_active"] = bool(active)
    block = _first(state, "blockId", "current_block_id", "currentBlockId")
    if block is not None:
        out["current_block_id"] = str(block)[:255]
    user = state.get("user")
    if isinstance(user, dict):
        out["user"] = {k: user[k] for k in ("name", "color") if k in user}
    return out


@dataclass(slots=True)
class Record:
    connection_id: str
    document_id: str
    process_id: str
    user_id: str | None
    device_type: str
    device_name: str | None
    client_version: str | None
    connected_at: float
    last_activity_at: float
    fields: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(self.entry())

    def entry(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "document_id": self.document_id,
            "process_id": self.process_id,
            "user_id": self.user_id,
            "device_type": self.device_type,
            "device_name": self.device_name,
            "client_version": self.client_version,
            "cursor_position": None,
            "selection_range": None,
            "is_active": True,
            "is_typing": False,
            "current_block_id": None,
            **self.fields,
            "connected_at": _iso(self.connected_at),
            "last_activity_at": _iso(self.last_activity_at),
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class Presence(Extension):
    """A hub extension: a record per connection from join to leave, fed by awareness."""

    def __init__(self, client: aioredis.Redis, settings: Settings, process_id: str) -> None:
        self.redis = client
        self.settings = settings
        self.process_id = process_id
        self.records: dict[str, Record] = {}
        self._dirty: set[str] = set()
        self._removed: dict[str, str] = {}  # connection id -> document id
        self._last_write: dict[str, float] = {}
        self._sent: set[str] = set()  # connections whose record may be in Redis: their leave deletes it
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._list_script = client.register_script(_LIST_SCRIPT)
        self._hub: Hub | None = None
        self._beaten = False  # our heartbeat key has been written once: its absence means Redis lost it
        self.healthy = True
        self.commands_sent = 0

    async def on_start(self, hub: Hub) -> None:
        self._hub = hub
        self._tasks = [
            asyncio.create_task(self._flusher(), name="presence-flusher"),
            asyncio.create_task(self._heartbeat(), name="presence-heartbeat"),
        ]

    async def on_stop(self) -> None:
        await cancel_and_reap(self._tasks)
        # A clean shutdown removes this process's records and heartbeat at once.
        self._removed.update({cid: r.document_id for cid, r in self.records.items() if cid in self._sent})
        self.records.clear()
        await bounded(self._write(set(), final=True))

    # -- hub hooks ---------------------------------------------------------------------------

    def on_join(self, room: Room, conn: Connection) -> None:
        now = time.time()
        info = conn.info
        self.records[conn.id] = Record(
            conn.id, str(room.id), self.process_id, str(info.user_id) if info.user_id else None,
            info.device_type, info.device_name, info.client_version, now, now,
        )
        self._dirty.add(conn.id)
        self._wake.set()

    def on_awareness(self, room: Room, origin: object, change: AwarenessChange) -> None:
        if not change.states or not isinstance(origin, Connection):
            return
        record = self.records.get(origin.id)
        if record is None:
            return
        for state in change.states.values():
            if state is not None:
                record.fields = fields_from_awareness(state)
        record.last_activity_at = time.time()
        self._dirty.add(origin.id)
        self._wake.set()

    def on_leave(self, room: Room, conn: Connection) -> None:
        record = self.records.pop(conn.id, None)
        self._dirty.discard(conn.id)
        self._last_write.pop(conn.id, None)
        if record is not None and conn.id in self._sent:
            self._sent.discard(conn.id)
            self._removed[conn.id] = record.document_id
            self._wake.set()

    # -- writing -----------------------------------------------------------------------------

    async def _flusher(self) -> None:
        """Send removals and coalesced updates `BATCH_SECONDS` after the first change, updates at
        most once per interval per connection."""
        interval = self.settings.presence_min_interval
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_SECONDS)
            self._wake.clear()
            now = time.monotonic()
            due = {cid for cid in self._dirty if now - self._last_write.get(cid, 0.0) >= interval}
            await self._write(due)
            if self._dirty:  # some were written too recently: come back when they are due
                wait = min(interval - (now - self._last_write.get(cid, 0.0)) for cid in self._dirty)
                await asyncio.sleep(max(0.01, wait))
                self._wake.set()

    async def _heartbeat(self) -> None:
        beat = min(self.settings.process_heartbeat_seconds, self.settings.presence_heartbeat_seconds)
        last_full = 0.0
        while True:
            full = time.monotonic() - last_full >= self.settings.presence_heartbeat_seconds or not self.healthy
            ok = await self._write(set(self.records) if full else set(), beat=True, full=full)
            if ok and full:
                last_full = time.monotonic()
            await asyncio.sleep(beat)

    async def _write(self, ids: set[str], beat: bool = False, full: bool = False, final: bool = False) -> bool:
        ttl = self.settings.presence_ttl_seconds
        now = time.time()
        removed, self._removed = self._removed, {}
        try:
            # Raw commands: redis-py's typed helpers cost several times the command itself here
            # (argument filtering per call), and a connect storm sends two per connection.
            pipe = self.redis.pipeline(transaction=False)
            command = pipe.execute_command
            count = 0
            if removed:
                command("DEL", *map(record_key, removed))
                count += 1
                leaving: dict[str, list[str]] = {}
                for cid, document_id in removed.items():
                    leaving.setdefault(document_id, []).append(cid)
                for document_id, members in leaving.items():
                    command("ZREM", index_key(document_id), *members)
                    count += 1
            keys: list[str] = []
            values: list[bytes] = []
            indexed: dict[str, list[Any]] = {}  # one ZADD per document: a connect storm joins in few rooms
            for cid in ids:
                record = self.records.get(cid)
                if record is None:
                    continue
                keys.append(record_key(cid))
                values.append(record.encode())
                self._sent.add(cid)  # before the reply: a leave meanwhile must delete it
                if full or cid not in self._last_write:
                    indexed.setdefault(record.document_id, []).extend((now + ttl, cid))
            if keys:
                index_keys = [index_key(document_id) for document_id in indexed]
                entries = [x for members in indexed.values() for x in (len(members) // 2, *members)]
                command("EVAL", _WRITE_SCRIPT, len(keys) + len(index_keys), *keys, *index_keys,
                        ttl, len(keys), *values, *entries)
                count += 1
            beat_at = count
            if beat:  # GET: the previous value, None when Redis restarted (or flushed) since the last beat
                ex = max(1, int(self.settings.process_dead_after_seconds))
                command("SET", process_key(self.process_id), b"1", "EX", ex, "GET")
                count += 1
            if final:
                pipe.delete(process_key(self.process_id))
                count += 1
            replies: list[Any] = []
            if count:
                replies = await pipe.execute()
                self.commands_sent += count
        except (RedisError, OSError) as exc:
            if self.healthy:
                log.warning("presence unavailable (Redis): %s; editing continues", exc)
            self.healthy = False
            for cid, document_id in removed.items():  # retry the removals next time
                self._removed.setdefault(cid, document_id)
            return False
        lost = beat and self._beaten and replies[beat_at] is None
        self._beaten = self._beaten or beat
        if not self.healthy or lost:
            log.info("presence back: rewriting every record" if not self.healthy
                     else "Redis lost this process's presence (restarted?): rewriting every record")
            self.healthy = True
            self._dirty.update(self.records)
            self._last_write.clear()
            self._wake.set()
        stamp = time.monotonic()
        for cid in ids:
            self._dirty.discard(cid)
            self._last_write[cid] = stamp
        return True

    # -- reading -----------------------------------------------------------------------------

    async def list(self, document_id: UUID) -> list[dict[str, Any]]:
        """Other processes' records from Redis, this process's own from memory: they are the truth,
        and are listed even while Redis has not yet got them back after a restart."""
        records = await self._list_script(
            keys=[index_key(document_id)], args=[time.time(), f"{PREFIX}presence:", f"{PREFIX}process:"]
        )
        people = [entry for entry in map(orjson.loads, records) if entry.get("process_id") != self.process_id]
        room = self._hub.get(document_id) if self._hub is not None else None
        for conn in room.connections if room is not None else ():
            record = self.records.get(conn.id)
            if record is not None:
                people.append(record.entry())
        return sorted(people, key=lambda r: r["connected_at"])
