"""The changes feed: entries, tombstones, members only, long-poll, and no entry ever skipped or
repeated, even while transactions that allocated lower cursors are still in flight."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg

from collab_server.storage import db as dbmod

from .conftest import World, error_of, eventually


async def feed(world: World, since: str = "0", role: str = "editor", **params: object) -> dict:  # type: ignore[type-arg]
    response = await world.api(role).get(f"/api/workspaces/{world.ws}/changes", params={"since": since, **params})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def drain(world: World, since: str, limit: int = 100) -> tuple[list[dict], str]:  # type: ignore[type-arg]
    entries = []
    while True:
        page = await feed(world, since, limit=limit)
        entries += page["changes"]
        since = page["next_cursor"]
        if not page["has_more"]:
            return entries, since


async def drain_if_any(world: World, since: str) -> tuple[list[dict], str] | None:  # type: ignore[type-arg]
    entries, end = await drain(world, since)
    return (entries, end) if entries else None


async def test_entries_tombstones_and_members_only(world: World) -> None:
    first = await feed(world, limit=2)
    assert [e["operation"] for e in first["changes"]] == ["create", "create"] and first["has_more"]
    entry = first["changes"][0]
    assert set(entry) >= {"cursor", "sequence", "entity_type", "entity_id", "operation", "content_hash",
                          "changed_by", "device_id", "client_version", "timestamp"}
    assert entry["changed_by"] == str(world.demo.users["editor"])
    everything, end = await drain(world, "0")
    assert len(everything) == 5 and end == everything[-1]["cursor"]
    assert (await feed(world, end))["changes"] == [] and (await feed(world, end))["next_cursor"] == end

    headers = {"X-Device-Name": "Laptop", "X-Client-Version": "desk/2.1"}
    rename = await world.api().patch(f"/api/documents/{world.doc(1)}", json={"title": "Renamed"}, headers=headers)
    assert rename.status_code == 200, rename.text
    assert (await world.api().delete(f"/api/documents/{world.doc(2)}", headers=headers)).status_code == 200
    later = (await feed(world, end, role="viewer"))["changes"]  # viewers read the feed too
    assert [(e["entity_id"], e["operation"]) for e in later] == [(world.doc(1), "update"), (world.doc(2), "delete")]
    assert later[0]["changes"]["columns"] == ["title", "updated_by"]
    assert later[1]["changes"]["soft"] is True
    assert {(e["device_id"], e["client_version"]) for e in later} == {("Laptop", "desk/2.1")}

    outsider = await world.api("outsider").get(f"/api/workspaces/{world.ws}/changes")
    missing = await world.api("outsider").get("/api/workspaces/00000000-0000-4000-8000-000000000000/changes")
    assert outsider.status_code == missing.status_code == 404 and outsider.json() == missing.json()


async def test_never_hands_out_a_position_past_an_entry_in_flight(world: World) -> None:
    _, start = await drain(world, "0")
    a, b = await dbmod.connect(world.server.db_url), await dbmod.connect(world.server.db_url)
    rename = "UPDATE documents SET title = $2 WHERE id = $1"
    try:
        # 1. A logs first (lower cursor) and stays open; B logs later and commits.
        tx_a = a.transaction()
        await tx_a.start()
        await a.execute(rename, world.demo.documents[0], "A1")
        async with b.transaction():
            await b.execute(rename, world.demo.documents[1], "B1")
        held = await feed(world, start)
        assert held["changes"] == [] and held["next_cursor"] == start  # B's entry waits for A's
        await tx_a.commit()
        both, end = await drain(world, start)
        assert [e["changes"]["columns"] for e in both] == [["title"], ["title"]]
        assert [e["entity_id"] for e in both] == [world.doc(0), world.doc(1)]

        # 2. The inversion: B takes its transaction id first (as compaction does when it locks
        #    the row), A logs a lower cursor, B logs a higher one and commits while A is open.
        tx_b = b.transaction()
        await tx_b.start()
        await b.execute("SELECT pg_current_xact_id()")
        tx_a = a.transaction()
        await tx_a.start()
        await a.execute(rename, world.demo.documents[0], "A2")
        await b.execute(rename, world.demo.documents[1], "B2")
        cursor_a = await a.fetchval("SELECT max(cursor) FROM sync_log")
        await tx_b.commit()
        cursor_b = await world.server.ctx.pool.fetchval("SELECT max(cursor) FROM sync_log")
        assert cursor_a < cursor_b  # a feed keyed on the cursor would hand out b, then skip a
        # (polled: an unrelated transaction older than B would briefly hold b back too)
        seen, middle = await eventually(lambda: drain_if_any(world, end))
        await tx_a.commit()
        rest, _ = await drain(world, middle)
        # b was handed out while a was in flight, and a still arrives after it: ordered by txid.
        assert [e["sequence"] for e in seen] == [cursor_b] and [e["sequence"] for e in rest] == [cursor_a]
        assert sorted(e["sequence"] for e in seen + rest) == [cursor_a, cursor_b]
    finally:
        await a.close()
        await b.close()


async def test_pagination_under_concurrent_writes_skips_and_repeats_nothing(world: World) -> None:
    _, start = await drain(world, "0")
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        conn = await dbmod.connect(world.server.db_url)
        try:
            for i in range(12):
                async with conn.transaction():
                    await conn.execute("UPDATE documents SET title = $2 WHERE id = $1",
                                       world.demo.documents[n], f"w{n}-{i}")
                    await asyncio.sleep(random.uniform(0, 0.01))  # stay in flight while others commit
        finally:
            await conn.close()

    seen: list[int] = []

    async def reader() -> None:
        since = start
        while True:
            done = stop.is_set()
            page = await feed(world, since, limit=3)
            seen.extend(e["sequence"] for e in page["changes"])
            since = page["next_cursor"]
            if done and not page["has_more"] and not page["changes"]:
                return

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(4)))
    stop.set()
    await asyncio.wait_for(reading, 20)
    expected = [r["cursor"] for r in await world.server.ctx.pool.fetch(
        "SELECT cursor FROM sync_log WHERE workspace_id = $1 AND cursor > $2 ORDER BY cursor",
        world.demo.workspace, int(start.split(".")[1]))]
    assert len(expected) == 48
    assert len(seen) == len(set(seen)) and sorted(seen) == expected


async def test_long_poll_wakes_on_a_change_and_is_bounded(world: World) -> None:
    _, start = await drain(world, "0")
    started = time.monotonic()
    assert (await feed(world, start, wait=0.4))["changes"] == []
    assert 0.35 < time.monotonic() - started < 2

    async def rename_soon() -> None:
        await asyncio.sleep(0.3)
        await world.api().patch(f"/api/documents/{world.doc(3)}", json={"title": "Woken"})

    started = time.monotonic()
    page, _ = await asyncio.gather(feed(world, start, wait=10), rename_soon())
    assert [e["entity_id"] for e in page["changes"]] == [world.doc(3)]
    assert time.monotonic() - started < 2.5

    # A user cannot pin the server with long-polls: at most 8 at a time.
    polls = [asyncio.create_task(world.api().get(f"/api/workspaces/{world.ws}/changes",
                                                 params={"since": page["next_cursor"], "wait": 1.5}))
             for _ in range(8)]
    await asyncio.sleep(0.3)
    refused = await world.api().get(f"/api/workspaces/{world.ws}/changes",
                                    params={"since": page["next_cursor"], "wait": 1})
    assert refused.status_code == 429 and error_of(refused)["code"] == "too_many_requests"
    assert all(r.status_code == 200 for r in await asyncio.gather(*polls))


async def test_feed_reads_run_under_row_level_security(world: World, db: asyncpg.Connection) -> None:
    """Even without the membership check, collab_user sees no other workspace's feed."""
    async with db.transaction():
        await db.execute("SELECT set_config('role', 'collab_user', true), set_config('app.current_user_id', $1, true)",
                         str(world.demo.users["outsider"]))
        assert await db.fetchval("SELECT count(*) FROM sync_log") == 0
        assert await db.fetchval("SELECT count(*) FROM document_versions") == 0
