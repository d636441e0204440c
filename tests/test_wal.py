"""The group-committed write-ahead (collab_server.storage.wal.WriteAhead) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import orjson
import pytest
from pycrdt import Doc, Text

from collab_server.storage import db as dbmod
from collab_server.storage import postgres as store_module
from collab_server.storage.postgres import DocumentStore
from collab_server.storage.wal import PendingUpdate, WriteAhead
from collab_server.storage.ydoc import state_of
from tests.waiting import eventually


@dataclass
class Env:
    pool: asyncpg.Pool
    store: DocumentStore
    document_id: uuid.UUID


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    pool = await dbmod.create_pool(db_url)
    store = DocumentStore(pool, 600)
    await store.ensure_local_workspace()
    document_id = await store.ensure_open_document("wal")
    try:
        yield Env(pool, store, document_id)
    finally:
        await pool.close()


def keystrokes(n: int) -> tuple[list[bytes], str]:
    """n sequential one-character inserts, each its own Yjs update (each depends on the one before)."""
    doc = Doc()
    text = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text.insert(len(text), "abcdefghijklmnopqrstuvwxyz"[i % 26])
    return updates, str(text)


async def started(wal: WriteAhead) -> WriteAhead:
    wal.start()
    return wal


async def stop(wal: WriteAhead) -> None:
    await wal.stop(5)


async def test_one_group_commit_per_window_and_a_summary(env: Env) -> None:
    batches: list[list[PendingUpdate]] = []
    wal = WriteAhead(env.pool, 0.05, 1 << 20)
    wal.start(lambda batch: batches.append(list(batch)))
    try:
        updates, _ = keystrokes(50)
        commits = wal.counters.get("collab_wal_commits_total")
        for update in updates:  # all within one 50 ms window
            assert wal.append(PendingUpdate(env.document_id, update))
        assert wal.backlog_bytes == sum(map(len, updates))
        assert await wal.flush(5)
        assert wal.backlog_bytes == 0
        assert wal.counters.get("collab_wal_commits_total") - commits == 1
        assert [[u.payload for u in batch] for batch in batches] == [updates]  # one batch, in order
        count = await env.pool.fetchval(
            "SELECT count(*) FROM document_updates WHERE document_id = $1", env.document_id
        )
        assert count == 50
    finally:
        await stop(wal)


async def test_rows_of_one_group_commit_keep_their_order(env: Env) -> None:
    """seq is the order compaction applies rows in, so it must be the order the room applied them."""
    wal = await started(WriteAhead(env.pool, 0.05, 1 << 20))
    try:
        updates, _ = keystrokes(40)
        for update in updates:
            wal.append(PendingUpdate(env.document_id, update))
        assert await wal.flush(5)
        rows = await env.pool.fetch(
            "SELECT payload FROM document_updates WHERE document_id = $1 ORDER BY seq", env.document_id
        )
        stored = [bytes(r["payload"]) for r in rows]
        assert sorted(stored) == sorted(updates)
        positions = [updates.index(p) for p in stored]
        assert positions == list(range(40)), f"rows stored in append positions {positions}"
    finally:
        await stop(wal)


async def test_compaction_of_a_backlog_larger_than_one_chunk_loses_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog (e.g. after an outage) arrives as one big group commit and is merged in chunks of
    COMPACT_CHUNK rows (20,000; 10 here so the test is small). No chunk may drop what it cannot
    integrate yet: pycrdt's encoded state leaves out pending structs."""
    monkeypatch.setattr(store_module, "COMPACT_CHUNK", 10)
    wal = await started(WriteAhead(env.pool, 0.05, 1 << 20))
    try:
        updates, expected = keystrokes(35)
        for update in updates:
            wal.append(PendingUpdate(env.document_id, update))
        assert await wal.flush(5)
    finally:
        await stop(wal)
    await env.store.compact(env.document_id)
    state = await env.pool.fetchval("SELECT yjs_state FROM documents WHERE id = $1", env.document_id)
    rows = await env.pool.fetch("SELECT payload FROM document_updates WHERE document_id = $1", env.document_id)
    assert rows == []
    assert str(state_of(state, []).get("content", type=Text)) == expected


async def test_full_backlog_refuses_and_frees_after_commit(env: Env) -> None:
    wal = await started(WriteAhead(env.pool, 0.2, 100))
    try:
        refused = wal.counters.get("collab_wal_refused_total")
        payload = b"\x00" * 40
        assert wal.has_room_for(40)
        assert wal.append(PendingUpdate(env.document_id, payload))
        assert wal.append(PendingUpdate(env.document_id, payload))
        assert not wal.has_room_for(40)
        assert not wal.append(PendingUpdate(env.document_id, payload))
        assert wal.counters.get("collab_wal_refused_total") - refused == 1
        assert wal.backlog_bytes == 80
        assert await wal.flush(5)
        assert wal.backlog_bytes == 0
        assert wal.append(PendingUpdate(env.document_id, payload))
        assert await wal.flush(5)
        count = await env.pool.fetchval(
            "SELECT count(*) FROM document_updates WHERE document_id = $1", env.document_id
        )
        assert count == 3  # the refused one is not stored, the others are
    finally:
        await stop(wal)


async def test_an_update_for_a_vanished_document_does_not_block_the_batch(env: Env) -> None:
    wal = await started(WriteAhead(env.pool, 0.02, 1 << 20))
    try:
        updates, _ = keystrokes(3)
        wal.append(PendingUpdate(env.document_id, updates[0]))
        wal.append(PendingUpdate(uuid.uuid4(), updates[1]))  # no such document
        wal.append(PendingUpdate(env.document_id, updates[2]))
        assert await asyncio.wait_for(wal.flush(5), 6)
        rows = await env.pool.fetch(
            "SELECT document_id FROM document_updates ORDER BY seq"
        )
        assert [r["document_id"] for r in rows] == [env.document_id, env.document_id]
        assert wal.healthy
    finally:
        await stop(wal)


async def test_stop_flushes_what_is_queued(env: Env) -> None:
    wal = await started(WriteAhead(env.pool, 0.5, 1 << 20))
    updates, expected = keystrokes(20)
    for update in updates:
        wal.append(PendingUpdate(env.document_id, update))
    assert await wal.stop(5)
    rows = await env.pool.fetch("SELECT payload FROM document_updates WHERE document_id = $1", env.document_id)
    assert str(state_of(None, [r["payload"] for r in rows]).get("content", type=Text)) == expected


async def test_stats_say_what_waits_and_for_how_long(env: Env) -> None:
    wal = await started(WriteAhead(env.pool, 0.3, 1 << 20))  # a long window, so something waits
    try:
        assert wal.stats() == {"healthy": True, "last_error": None, "backlog_bytes": 0, "waiting_updates": 0,
                               "lag_ms": 0.0}
        updates, _ = keystrokes(3)
        for update in updates:
            assert wal.append(PendingUpdate(env.document_id, update))
        await asyncio.sleep(0.1)  # inside the 0.3 s window: nothing can have been written yet
        waiting = wal.stats()
        assert waiting["waiting_updates"] == 3 and waiting["backlog_bytes"] == sum(map(len, updates))
        assert float(waiting["lag_ms"]) >= 100  # type: ignore[arg-type]
        assert await wal.flush(5)
        assert wal.stats()["waiting_updates"] == 0 and wal.stats()["lag_ms"] == 0.0
    finally:
        await stop(wal)


async def test_edits_reach_the_changes_feed_at_most_once_an_interval_and_a_last_time(env: Env) -> None:
    """Desktop clients follow the feed: WebSocket edits must appear there within seconds, not at compaction."""

    async def live_entries() -> list[asyncpg.Record]:
        return await env.pool.fetch(
            "SELECT changes FROM sync_log WHERE entity_id = $1 AND (changes->>'live')::boolean ORDER BY cursor",
            env.document_id,
        )

    wal = await started(WriteAhead(env.pool, 0.005, 1 << 20, feed_interval=0.5))
    try:
        updates, _ = keystrokes(30)
        assert wal.append(PendingUpdate(env.document_id, updates[0], device_id="d1"))
        assert await wal.flush(5)
        first = await live_entries()
        assert len(first) == 1  # the first edit: an entry with its commit
        for update in updates[1:20]:  # more edits inside the interval: held back ...
            assert wal.append(PendingUpdate(env.document_id, update))
            assert await wal.flush(5)
        assert len(await live_entries()) == 1
        # ... and written once the interval has passed, though nothing else was appended.
        await eventually(live_entries, lambda rows: len(rows) == 2, timeout=5, what="the trailing entry")
        rows = await live_entries()
        changes = rows[1]["changes"]
        assert (orjson.loads(changes) if isinstance(changes, str) else changes) == {"live": True, "updates": 19}
    finally:
        await stop(wal)


def test_spill_records_round_trip_and_a_torn_tail_ends_the_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from collab_server.storage.spill import Spill, decode, encode, orphans

    updates = [PendingUpdate(uuid.uuid4(), b"\x01\x02" * 50, uuid.uuid4(), "laptop", "1.2.3"),
               PendingUpdate(uuid.uuid4(), b"x", None, None, None)]
    data = b"".join(encode(u) for u in updates)
    assert list(decode(data)) == updates
    assert list(decode(data[:-1])) == updates[:1]  # a crash mid-write: the whole records before it
    corrupt = bytearray(data)
    corrupt[12] ^= 0xFF
    assert list(decode(bytes(corrupt))) == []

    live = Spill(tmp_path, "live")
    live.open()
    live.append(updates)
    dead = tmp_path / "dead.spill"
    dead.write_bytes(data)
    found = {path.name: records for path, records in orphans(tmp_path)}
    assert found == {"dead.spill": updates}  # the live process's file is locked: not an orphan
    live.clear()
    assert live.path.stat().st_size == 0
    live.close()
    assert not live.path.exists()


async def test_a_feed_entry_that_cannot_be_written_costs_no_update(env: Env) -> None:
    """The live entry shares the updates' transaction, in a savepoint: its failure must not fail them."""
    await env.pool.execute("ALTER TABLE sync_log ADD CONSTRAINT no_live_entries "
                           "CHECK (NOT coalesce((changes->>'live')::boolean, false)) NOT VALID")
    wal = await started(WriteAhead(env.pool, 0.005, 1 << 20, feed_interval=0.2))
    try:
        updates, text = keystrokes(40)
        for i, update in enumerate(updates):
            assert wal.append(PendingUpdate(env.document_id, update))
            if i % 10 == 9:
                assert await wal.flush(5)
                await asyncio.sleep(0.25)  # past the interval: every batch carries a (failing) entry
        assert await wal.flush(5)
        rows = await env.pool.fetch("SELECT payload FROM document_updates WHERE document_id = $1 ORDER BY seq",
                                    env.document_id)
        assert str(state_of(None, [r["payload"] for r in rows]).get("content", type=Text)) == text
        assert wal.counters.get("collab_wal_dropped_total") == 0 and wal.healthy
        assert wal.counters.get("collab_wal_retries_total") == 0  # no retry loop either
    finally:
        await stop(wal)


async def test_an_update_whose_author_was_deleted_is_kept_without_an_author(env: Env) -> None:
    wal = await started(WriteAhead(env.pool, 0.005, 1 << 20))
    try:
        updates, text = keystrokes(2)
        assert wal.append(PendingUpdate(env.document_id, updates[0]))
        assert wal.append(PendingUpdate(env.document_id, updates[1], user_id=uuid.uuid4()))  # no such user
        assert await wal.flush(5)
        rows = await env.pool.fetch("SELECT payload, user_id FROM document_updates WHERE document_id = $1 "
                                    "ORDER BY seq", env.document_id)
        assert [r["user_id"] for r in rows] == [None, None]
        assert str(state_of(None, [r["payload"] for r in rows]).get("content", type=Text)) == text
        assert wal.counters.get("collab_wal_dropped_total") == 0
    finally:
        await stop(wal)


async def test_what_an_outage_holds_is_on_disk_and_a_stop_leaves_it_there(env: Env, db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from collab_server.storage.spill import Spill, decode

    pool = await dbmod.create_pool(db_url)
    spill = Spill(tmp_path / "spill", "p1")
    wal = await started(WriteAhead(pool, 0.005, 1 << 20, spill=spill))
    await pool.close()  # as good as PostgreSQL gone: every attempt fails as unavailable
    updates, _ = keystrokes(5)
    for update in updates:
        assert wal.append(PendingUpdate(env.document_id, update))
    await eventually(lambda: asyncio.sleep(0, not wal.healthy), bool, what="the outage noticed")
    assert not await wal.stop(0.3)  # not flushed: PostgreSQL is away
    assert [u.payload for u in decode(spill.path.read_bytes())] == updates  # kept for the next start
