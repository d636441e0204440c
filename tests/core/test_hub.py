"""The hub with in-memory storage: loading once, unloading safely, compaction policy, limits,
shutdown, and the extension hooks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pycrdt import Doc, Text

from collab_server.core.compaction import CompactionConfig
from collab_server.core.connection import Connection
from collab_server.core.extension import Extension, UpdateBatch
from collab_server.core.hub import Hub, HubConfig, RoomUnavailable
from collab_server.core.protocol import CloseCode
from collab_server.core.room import Room
from collab_server.core.storage import CompactionResult, LoadedDocument, PendingUpdate
from collab_server.storage.memory import MemoryStorage
from tests.core.memory import MemoryClient, turns
from tests.waiting import eventually


class CountingStorage(MemoryStorage):
    """MemoryStorage that counts loads and can hold loads and compactions at a gate."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.loads = 0
        self.compacting = 0
        self.most_at_once = 0
        self.gate: asyncio.Event | None = None
        self.fail_loads = 0

    async def load(self, document_id: uuid.UUID) -> LoadedDocument | None:
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_loads:
            self.fail_loads -= 1
            raise OSError("storage unreachable")
        return await super().load(document_id)

    async def compact(self, document_id: uuid.UUID, *, snapshot: bool = False) -> CompactionResult | None:
        self.compacting += 1
        self.most_at_once = max(self.most_at_once, self.compacting)
        try:
            if self.gate is not None:
                await self.gate.wait()
            return await super().compact(document_id, snapshot=snapshot)
        finally:
            self.compacting -= 1


class Recorder(Extension):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.hub: Hub | None = None
        self.stopped = False

    async def on_start(self, hub: Hub) -> None:
        self.hub = hub

    async def on_stop(self) -> None:
        self.stopped = True

    def on_loading(self, document_id: uuid.UUID) -> None:
        self.events.append(("loading", document_id))

    def on_loaded(self, room: Room) -> None:
        self.events.append(("loaded", room.id))

    def on_load_failed(self, document_id: uuid.UUID) -> None:
        self.events.append(("load_failed", document_id))

    def on_unloaded(self, room: Room) -> None:
        self.events.append(("unloaded", room.id))

    def on_join(self, room: Room, conn: Connection) -> None:
        self.events.append(("join", conn.id))

    def on_leave(self, room: Room, conn: Connection) -> None:
        self.events.append(("leave", conn.id))

    def on_awareness(self, room: Room, origin: object, change: Any) -> None:
        self.events.append(("awareness", getattr(origin, "id", origin)))

    def on_updates(self, room: Room, batch: UpdateBatch) -> None:
        self.events.append(("updates", len(batch.updates)))

    def on_committed(self, updates: Sequence[PendingUpdate]) -> None:
        self.events.append(("committed", len(updates)))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class Broken(Extension):
    def on_updates(self, room: Room, batch: UpdateBatch) -> None:
        raise RuntimeError("an extension bug")

    def on_join(self, room: Room, conn: Connection) -> None:
        raise RuntimeError("another")


def config(**kw: Any) -> HubConfig:
    compaction = kw.pop("compaction", CompactionConfig(max_updates=1000, max_age_seconds=60))
    return HubConfig(room_grace_seconds=kw.pop("grace", 0), shutdown_timeout=2, compaction=compaction, **kw)


@pytest.fixture
async def storage() -> CountingStorage:
    return CountingStorage()


@pytest.fixture
async def hub(storage: CountingStorage) -> AsyncIterator[Hub]:
    h = Hub(storage, config())
    await h.start()
    yield h
    await h.shutdown()


def stored_text(storage: MemoryStorage, document_id: uuid.UUID) -> str:
    doc = Doc()
    doc.apply_update(storage.documents[document_id].state)
    return str(doc.get("content", type=Text))


async def test_concurrent_joins_load_a_document_once(hub: Hub, storage: CountingStorage) -> None:
    document_id = storage.create()
    storage.gate = asyncio.Event()
    joins = [asyncio.ensure_future(MemoryClient().join(hub, document_id)) for _ in range(20)]
    await turns()
    storage.gate.set()
    clients = await asyncio.gather(*joins)
    storage.gate = None
    assert storage.loads == 1 and hub.room_count == 1 and hub.connections == 20
    assert len({id(c.room) for c in clients}) == 1


async def test_a_missing_document_is_4404_and_a_failed_load_leaves_nothing_behind(
    hub: Hub, storage: CountingStorage
) -> None:
    with pytest.raises(RoomUnavailable) as missing:
        await MemoryClient().join(hub, uuid.uuid4())
    assert missing.value.code == CloseCode.NOT_FOUND
    document_id = storage.create()
    storage.fail_loads = 1
    with pytest.raises(RoomUnavailable) as failed:
        await MemoryClient().join(hub, document_id)
    assert failed.value.code == CloseCode.TRY_AGAIN_LATER
    assert hub.get(document_id) is None and not hub.is_loading(document_id) and hub.connections == 0
    client = await MemoryClient().join(hub, document_id)  # nothing cached the failure
    assert client.room is hub.get(document_id)


async def test_unload_flushes_and_compacts_so_the_edit_is_stored(hub: Hub, storage: CountingStorage) -> None:
    document_id = storage.create()
    client = await MemoryClient().join(hub, document_id)
    client.text.insert(0, "kept")
    await eventually(lambda: storage.stored_updates(document_id), what="written ahead")
    hub.leave(client.room, client.conn)  # type: ignore[arg-type]
    await eventually(lambda: hub.get(document_id) is None and not hub.is_unloading(document_id), what="unload")
    assert stored_text(storage, document_id) == "kept"
    assert storage.stored_updates(document_id) == ()
    assert storage.documents[document_id].versions  # edited since the last version: one on unload
    again = await MemoryClient().join(hub, document_id)
    await eventually(lambda: str(again), lambda s: s == "kept", what="reloaded")


async def test_a_room_rejoined_within_the_grace_period_is_not_reloaded(storage: CountingStorage) -> None:
    hub = Hub(storage, config(grace=30))
    await hub.start()
    try:
        document_id = storage.create()
        first = await MemoryClient().join(hub, document_id)
        hub.leave(first.room, first.conn)  # type: ignore[arg-type]
        second = await MemoryClient().join(hub, document_id)
        assert second.room is first.room and storage.loads == 1
    finally:
        await hub.shutdown()


async def test_compaction_runs_at_the_threshold_and_never_twice_at_once(storage: CountingStorage) -> None:
    hub = Hub(storage, config(compaction=CompactionConfig(max_updates=3, max_age_seconds=60)))
    await hub.start()
    try:
        document_id = storage.create()
        client = await MemoryClient().join(hub, document_id)
        storage.gate = asyncio.Event()
        for i in range(12):  # four thresholds' worth while the first compaction is held
            client.text.insert(len(client.text), f"{i},")
            await turns()
        await eventually(lambda: storage.compacting, lambda n: n == 1, what="a compaction running")
        storage.gate.set()
        await eventually(lambda: storage.stored_updates(document_id), lambda u: not u, what="all compacted")
        assert storage.most_at_once == 1
        assert storage.compactions <= 3  # the held one, then one catch-up for everything queued meanwhile
        assert stored_text(storage, document_id) == str(client)
    finally:
        storage.gate = None
        await hub.shutdown()


async def test_limits_refuse_with_1013_and_leave_no_half_registered_connection(storage: CountingStorage) -> None:
    hub = Hub(storage, config(max_connections=2, max_rooms=1))
    await hub.start()
    try:
        a, b = storage.create(), storage.create()
        await MemoryClient().join(hub, a)
        with pytest.raises(RoomUnavailable) as rooms:
            await MemoryClient().join(hub, b)
        assert rooms.value.code == 1013 and "room limit" in rooms.value.reason
        await MemoryClient().join(hub, a)
        with pytest.raises(RoomUnavailable) as conns:
            await MemoryClient().join(hub, a)
        assert conns.value.code == 1013 and "connection limit" in conns.value.reason
        assert hub.connections == 2 and hub.room_count == 1
    finally:
        await hub.shutdown()


async def test_shutdown_closes_with_1001_persists_and_stops_extensions(storage: CountingStorage) -> None:
    recorder = Recorder()
    hub = Hub(storage, config(grace=30), [recorder])
    await hub.start()
    document_id = storage.create()
    client = await MemoryClient().join(hub, document_id)
    client.text.insert(0, "last words")
    await turns()
    closing = asyncio.ensure_future(hub.shutdown())
    await eventually(lambda: client.peer.closed, what="the close frame")
    assert client.peer.closed == (1001, "server shutting down")
    await closing
    assert stored_text(storage, document_id) == "last words" and recorder.stopped
    with pytest.raises(RoomUnavailable) as late:
        await MemoryClient().join(hub, document_id)
    assert late.value.code == 1001


async def test_hooks_fire_once_per_event_and_a_broken_extension_harms_nothing(storage: CountingStorage) -> None:
    recorder = Recorder()
    hub = Hub(storage, config(), [Broken(), recorder])
    await hub.start()
    try:
        assert recorder.hub is hub
        document_id = storage.create()
        a = await MemoryClient().join(hub, document_id)
        b = await MemoryClient().join(hub, document_id)
        assert recorder.names() == ["loading", "loaded", "join", "join"]
        for ch in "abc":  # three updates in one loop turn: one batch, one commit
            a.text.insert(len(a.text), ch)
        await eventually(recorder.names, lambda n: "committed" in n, what="the group commit")
        assert recorder.events.count(("updates", 3)) == 1 and recorder.events.count(("committed", 1)) == 1
        await eventually(lambda: str(b), lambda s: s == "abc", what="b still receives despite the broken hook")
        a.say(1, 1, b'{"x": 1}')
        assert recorder.events[-1] == ("awareness", a.conn.id)
        hub.leave(a.room, a.conn)  # type: ignore[arg-type]
        hub.leave(b.room, b.conn)  # type: ignore[arg-type]
        await eventually(recorder.names, lambda n: "unloaded" in n, what="unload")
        assert recorder.names()[-4:] == ["awareness", "leave", "leave", "unloaded"]  # a's removal, then both leave
    finally:
        await hub.shutdown()


async def test_repair_catches_a_room_up_from_storage(hub: Hub, storage: CountingStorage) -> None:
    document_id = storage.create()
    client = await MemoryClient().join(hub, document_id)
    other = Doc()
    other.get("content", type=Text).insert(0, "written by another process")
    storage.documents[document_id].state = other.get_update()
    hub.repair(client.room)  # type: ignore[arg-type]
    await eventually(lambda: str(client), lambda s: s == "written by another process", what="repaired")
    assert storage.stored_updates(document_id) == ()  # relayed to clients, not written again


async def test_a_crash_leftover_is_compacted_at_start(storage: CountingStorage) -> None:
    document_id = storage.create()
    doc = Doc()
    doc.get("content", type=Text).insert(0, "from before the crash")
    storage.documents[document_id].updates.append(PendingUpdate(document_id, doc.get_update()))
    hub = Hub(storage, config())
    await hub.start()
    try:
        assert stored_text(storage, document_id) == "from before the crash"
        assert storage.stored_updates(document_id) == ()
    finally:
        await hub.shutdown()


async def test_a_room_loaded_for_a_join_that_went_away_is_unloaded(storage: CountingStorage) -> None:
    hub = Hub(storage, config(grace=0.05))
    await hub.start()
    try:
        document_id = storage.create()
        storage.gate = asyncio.Event()
        join = asyncio.ensure_future(MemoryClient().join(hub, document_id))
        await eventually(lambda: storage.loads, lambda n: n == 1, what="the load started")
        join.cancel()  # the client left while its room loaded
        storage.gate.set()
        await eventually(lambda: hub.get(document_id), lambda r: r is not None, what="the room loaded anyway")
        await eventually(lambda: hub.room_count, lambda n: n == 0, timeout=3, what="the unused room unloaded")
        assert hub.connections == 0
    finally:
        storage.gate = None
        await hub.shutdown()
