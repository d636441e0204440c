"""Cross-process relay over Redis Streams, one stream per open document.

Why streams and not pub/sub: a stream keeps entries, so a reader whose connection
dropped resumes from the last ID it saw instead of silently missing what was published
meanwhile (pub/sub drops it, Hocuspocus #800). What Redis itself loses (a restart
without persistence, an XADD that failed while it was down) is repaired from PostgreSQL:
every process writes every update ahead there, so after any bus disruption each room
reloads its document from the store and applies it (CRDT updates are idempotent).

Loading race: a room subscribes from a point a little in the past (`replay_ms`) before
it loads from PostgreSQL, so an update published just before the load but not yet
committed by its writer is still delivered through the stream.

Awareness states learned from another process are owned by a `RemotePeer`; each process
refreshes its heartbeat in a shared sorted set, and when a peer's heartbeat is older than
`alive_ms` its clients' states are removed from every local room (a killed process cannot
say goodbye).

A process that sees no live peer neither publishes nor reads: a lone process pays nothing
for the bus. When a peer appears, both sides read their streams from `replay_ms` back and
repair their rooms from PostgreSQL, which covers whatever was written while they were
not relaying to each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collab_server.core.awareness import AwarenessChange
from collab_server.core.connection import ClientInfo, Connection
from collab_server.core.counters import Counters
from collab_server.core.extension import Extension
from collab_server.core.hub import Hub
from collab_server.core.room import Room
from collab_server.core.storage import PendingUpdate

from .stopping import bounded, cancel_and_reap

log = logging.getLogger("collab.bus")

PREFIX = "collab:bus:"
KIND_UPDATE = b"u"
KIND_AWARENESS = b"a"
KIND_STATELESS = b"s"


def stream_key(document_id: UUID) -> str:
    return f"{PREFIX}doc:{document_id}"


# What XREAD answers: per stream key, its entries as (entry id, fields).
Replies = list[tuple[bytes | str, list[tuple[bytes, dict[bytes, bytes]]]]] | None

PROCESSES = f"{PREFIX}processes"  # sorted set: process id -> last heartbeat (ms)


@dataclass(eq=False)
class RemotePeer:
    """Stands for another process as the owner of the awareness states it relayed to us."""

    process_id: str
    info: ClientInfo = field(default_factory=ClientInfo)


class Bus(Extension):
    """A hub extension: subscribes while a room loads, publishes committed updates and local
    awareness, delivers what other processes published to the rooms open here."""

    def __init__(
        self,
        redis_url: str,
        process_id: str,
        replay_ms: int = 2000,
        retention_ms: int = 60_000,
        alive_ms: int = 3000,
        counters: Counters | None = None,
    ) -> None:
        self.process_id = process_id
        self._pid = process_id.encode()
        self._hub: Hub | None = None
        self.counters = counters if counters is not None else Counters()
        self.replay_ms = replay_ms
        self.retention_ms = retention_ms
        self.alive_ms = alive_ms
        # The reader blocks in XREAD: it gets a connection of its own.
        self._reader_redis = aioredis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=None)
        self._writer_redis = aioredis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._positions: dict[UUID, bytes | str] = {}
        self._outbox: list[tuple[UUID, bytes, bytes]] = []
        self._wake = asyncio.Event()
        self._peers: dict[str, RemotePeer] = {}
        self._live: set[str] = set()
        self.alone = False  # until the first heartbeat shows otherwise, assume company
        self._tasks: list[asyncio.Task[None]] = []
        self._republishing: asyncio.Task[None] | None = None
        self.healthy = True

    # -- hub hooks ---------------------------------------------------------------------------

    async def on_start(self, hub: Hub) -> None:
        self._hub = hub
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="bus-reader"),
            asyncio.create_task(self._write_loop(), name="bus-writer"),
            asyncio.create_task(self._liveness_loop(), name="bus-liveness"),
        ]

    async def on_stop(self) -> None:
        if self._republishing is not None:
            self._republishing.cancel()
        await cancel_and_reap(self._tasks)
        await bounded(self._flush())
        await bounded(self._writer_redis.zrem(PROCESSES, self.process_id))
        for client in (self._reader_redis, self._writer_redis):
            await bounded(client.aclose())

    def on_loading(self, document_id: UUID) -> None:
        """Subscribe before the room reads the store (see the module docstring)."""
        start = int(time.time() * 1000) - self.replay_ms
        self._positions[document_id] = f"{max(start, 0)}-0"

    def on_load_failed(self, document_id: UUID) -> None:
        self._positions.pop(document_id, None)

    def on_unloaded(self, room: Room) -> None:
        self._positions.pop(room.id, None)

    def on_committed(self, updates: Sequence[PendingUpdate]) -> None:
        for u in updates:
            self.publish(u.document_id, KIND_UPDATE, u.payload)

    def on_awareness(self, room: Room, origin: object, change: AwarenessChange) -> None:
        if change.relay is not None and isinstance(origin, Connection):
            self.publish(room.id, KIND_AWARENESS, change.relay)

    def on_stateless(self, room: Room, origin: Connection, payload: str) -> bool | None:
        self.publish(room.id, KIND_STATELESS, payload.encode())
        return None

    def _rooms(self) -> list[Room]:
        return self._hub.rooms() if self._hub is not None else []

    def _repair(self, room: Room) -> None:
        if self._hub is not None:
            self._hub.repair(room)

    # -- publishing --------------------------------------------------------------------------

    def publish(self, document_id: UUID, kind: bytes, payload: bytes) -> None:
        if self.alone:
            return
        self._outbox.append((document_id, kind, payload))
        if len(self._outbox) == 1:
            self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let the rest of this loop turn add to the batch
            try:
                await self._flush()
            except (RedisError, OSError) as exc:
                self._outbox.clear()  # PostgreSQL has them; the repair after reconnect delivers them
                self._set_unhealthy(exc)
                await asyncio.sleep(0.2)

    async def _flush(self) -> None:
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        minid = int(time.time() * 1000) - self.retention_ms
        pipe = self._writer_redis.pipeline(transaction=False)
        for document_id, kind, payload in batch:
            pipe.xadd(stream_key(document_id), {"p": self._pid, "k": kind, "d": payload},
                      minid=minid, approximate=True)
        await pipe.execute()
        self.counters.inc("collab_bus_published_total", len(batch))

    # -- reading -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = 0.1
        while True:
            if not self._positions or self.alone:
                await asyncio.sleep(0.05)
                continue
            streams: dict[Any, Any] = {stream_key(doc): pos for doc, pos in self._positions.items()}
            try:
                replies = cast(Replies, await self._reader_redis.xread(streams, count=1000, block=100))
            except (RedisError, OSError) as exc:
                self._set_unhealthy(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            if not self.healthy:
                self._recovered()
            for key, entries in replies or ():
                name = key.decode() if isinstance(key, bytes) else key
                document_id = UUID(name.rsplit(":", 1)[1])
                if document_id not in self._positions:
                    continue
                self._positions[document_id] = entries[-1][0]
                room = self._hub.get(document_id) if self._hub is not None else None
                if room is None:
                    continue
                for _entry_id, data in entries:
                    self._deliver(room, data)

    def _deliver(self, room: Room, data: dict[bytes, bytes]) -> None:
        sender = data.get(b"p")
        if sender == self._pid or sender is None:
            return
        self.counters.inc("collab_bus_received_total")
        kind, payload = data.get(b"k"), data.get(b"d", b"")
        try:
            if kind == KIND_UPDATE:
                room.apply_remote(payload)
            elif kind == KIND_AWARENESS:
                room.apply_remote_awareness(payload, self.peer(sender.decode()))
            elif kind == KIND_STATELESS:
                room.relay_stateless(payload.decode())
        except Exception as exc:  # never let one bad entry stop the relay
            log.warning("dropping a bus entry for %s: %s", room.id, exc)

    def peer(self, process_id: str) -> RemotePeer:
        peer = self._peers.get(process_id)
        if peer is None:
            peer = self._peers[process_id] = RemotePeer(process_id)
        return peer

    # -- health ------------------------------------------------------------------------------

    def _set_unhealthy(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("cross-process bus unavailable (Redis): %s; rooms will be repaired", exc)
        self.healthy = False

    def _recovered(self) -> None:
        rooms = self._rooms()
        log.info("cross-process bus back: repairing %d rooms from PostgreSQL", len(rooms))
        self.healthy = True
        for room in rooms:
            self._repair(room)

    async def _liveness_loop(self) -> None:
        """Heartbeat; learn who else is alive; drop the awareness of peers that died."""
        interval = self.alive_ms / 3000
        while True:
            try:
                now = int(time.time() * 1000)
                pipe = self._writer_redis.pipeline(transaction=False)
                pipe.zadd(PROCESSES, {self.process_id: now})
                pipe.zremrangebyscore(PROCESSES, "-inf", now - self.alive_ms)
                pipe.zrange(PROCESSES, 0, -1)
                members = (await pipe.execute())[2]
                self._update_peers({m.decode() for m in members} - {self.process_id})
            except (RedisError, OSError) as exc:
                self._set_unhealthy(exc)
            await asyncio.sleep(interval)

    def _update_peers(self, live: set[str]) -> None:
        for process_id, peer in list(self._peers.items()):
            if process_id not in live:
                self._forget(peer)
        newcomers = live - self._live
        self._live = live
        self.alone = not live
        if newcomers:
            log.info("peer processes joined: %s; replaying streams and repairing rooms", sorted(newcomers))
            start = f"{max(int(time.time() * 1000) - self.replay_ms, 0)}-0"
            for document_id in self._positions:
                self._positions[document_id] = start
            for room in self._rooms():
                self._repair(room)
                # The newcomer has not heard our clients' awareness (we published nothing while alone).
                local = room.awareness.encode_all(owned=lambda owner: isinstance(owner, Connection))
                if local is not None:
                    self.publish(room.id, KIND_AWARENESS, local)
            if self._republishing is None or self._republishing.done():  # nor our edits
                self._republishing = asyncio.get_running_loop().create_task(self._republish(), name="bus-republish")

    async def _republish(self) -> None:
        """Once our write-ahead is committed (the bus only carries what is durable), publish
        every room's state for the newcomer."""
        if self._hub is None:
            return
        await self._hub.flush(5.0)
        for room in self._hub.rooms():
            self.publish(room.id, KIND_UPDATE, room.whole_update())

    def _forget(self, peer: RemotePeer) -> None:
        log.info("process %s is gone: removing its clients' awareness", peer.process_id)
        self._peers.pop(peer.process_id, None)
        for room in self._rooms():
            room.drop_owner(peer)
