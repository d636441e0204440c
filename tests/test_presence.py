"""Presence in Redis: TTL, heartbeat, removal, dead processes, devices, awareness mapping, outages."""

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis.asyncio as aioredis

from collab_server.client import YClient
from collab_server.cluster.presence import Presence, fields_from_awareness, index_key, record_key
from collab_server.runtime.embedded import EmbeddedRedis
from collab_server.storage.postgres import open_document_id
from tests.conftest import RunningServer, make_settings
from tests.waiting import eventually


async def listing(server, room: str) -> list[dict]:  # type: ignore[no-untyped-def]
    response = await server.get(f"/api/documents/{room}/presence")
    assert response.status_code == 200, response.text
    return response.json()["presence"]  # type: ignore[no-any-return]


async def test_fresh_record_has_a_300_second_ttl_and_clean_disconnect_removes_it(server, redis_url) -> None:
    redis = aioredis.from_url(redis_url)
    client = await YClient(server.ws_url("p1") + "?device_type=desktop&device_name=Laptop").connect()
    people = await eventually(lambda: listing(server, "p1"))
    assert len(people) == 1
    record = people[0]
    assert record["device_type"] == "desktop" and record["device_name"] == "Laptop"
    assert record["document_id"] == str(open_document_id("p1"))
    ttl = await redis.ttl(record_key(record["connection_id"]))
    assert 299 <= ttl <= 300
    await client.close()
    started = time.monotonic()
    await eventually(lambda: _empty(listing(server, "p1")), timeout=1.0, step=0.01)
    assert not await redis.exists(record_key(record["connection_id"]))
    assert time.monotonic() - started < 1.0
    await redis.aclose()


async def _empty(coro) -> bool:  # type: ignore[no-untyped-def]
    return not await coro


async def test_dropped_connection_removes_the_record(server) -> None:
    client = await YClient(server.ws_url("p2")).connect()
    await eventually(lambda: listing(server, "p2"))
    client.abort()
    await eventually(lambda: _empty(listing(server, "p2")), timeout=2.0)


async def test_heartbeat_renews_the_ttl(make_server, redis_url) -> None:
    server = await make_server(presence_ttl_seconds=6, presence_heartbeat_seconds=1, process_heartbeat_seconds=0.5)
    redis = aioredis.from_url(redis_url)
    client = await YClient(server.ws_url("p3")).connect()
    record = (await eventually(lambda: listing(server, "p3")))[0]
    key = record_key(record["connection_id"])
    await asyncio.sleep(2.5)  # without renewal the TTL would be down to ~3 s
    assert await redis.pttl(key) > 4500
    await client.close()
    await redis.aclose()


async def test_two_devices_of_one_user_are_two_entries(server) -> None:
    web = await YClient(server.ws_url("p4") + "?device_type=web").connect()
    desk = await YClient(server.ws_url("p4") + "?device_type=desktop").connect()
    people = await eventually(lambda: _count(listing(server, "p4"), 2))
    assert sorted(p["device_type"] for p in people) == ["desktop", "web"]
    assert len({p["user_id"] for p in people}) == 1
    await web.close()
    await desk.close()


async def _count(coro, n: int):  # type: ignore[no-untyped-def]
    value = await coro
    return value if len(value) == n else None


async def test_awareness_fields_are_mapped_and_coalesced(server) -> None:
    client = await YClient(server.ws_url("p5")).connect()
    for i in range(20):  # a burst of cursor moves: written at most once per second
        client.set_awareness({"user": {"name": "Ada", "color": "#f00"}, "cursor": {"anchor": i, "head": i + 1},
                              "typing": True, "blockId": "b-7"})
        await asyncio.sleep(0.01)
    people = await eventually(lambda: _with_cursor(listing(server, "p5"), 20), timeout=2.5)
    p = people[0]
    assert p["selection_range"] == {"anchor": 19, "head": 20}
    assert p["is_typing"] is True and p["current_block_id"] == "b-7" and p["user"] == {"name": "Ada", "color": "#f00"}
    presence: Presence = server.ctx.presence
    assert presence.commands_sent < 20  # coalesced, not one write per move
    await client.close()


async def _with_cursor(coro, head: int):  # type: ignore[no-untyped-def]
    value = await coro
    return value if value and value[0].get("cursor_position") == head else None


def test_field_mapping_tolerates_anything() -> None:
    assert fields_from_awareness(None) == {}
    assert fields_from_awareness({}) == {}
    assert fields_from_awareness({"cursor": 5}) == {"cursor_position": 5}
    assert fields_from_awareness({"isTyping": 1, "currentBlockId": 9}) == {"is_typing": True, "current_block_id": "9"}


async def test_dead_process_leaves_listing_fast_and_redis_by_ttl(spawn_server, server, redis_url) -> None:
    victim = spawn_server(
        COLLAB_PROCESS_DEAD_AFTER_SECONDS="2", COLLAB_PROCESS_HEARTBEAT_SECONDS="0.5",
        COLLAB_PRESENCE_TTL_SECONDS="5", COLLAB_PRESENCE_HEARTBEAT_SECONDS="1",
    )
    client = await YClient(f"{victim.ws_base}/p6").connect()
    people = await eventually(lambda: listing(server, "p6"))
    key = record_key(people[0]["connection_id"])
    victim.kill()
    killed = time.monotonic()
    await eventually(lambda: _empty(listing(server, "p6")), timeout=5)
    assert time.monotonic() - killed < 4  # well inside the 30 s promise with these settings
    redis = aioredis.from_url(redis_url)
    assert await redis.exists(key)  # still in Redis: only the listing filters it ...
    await eventually(lambda: _gone(redis, key), timeout=8)  # ... until the TTL cleans it up
    await redis.aclose()
    await client.wait_closed(1)


async def _gone(redis, key) -> bool:  # type: ignore[no-untyped-def]
    return not await redis.exists(key)


async def test_redis_outage_does_not_stop_editing(db_url: str, tmp_path: Path) -> None:
    private = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    settings = make_settings(tmp_path, presence_heartbeat_seconds=1, process_heartbeat_seconds=0.5)
    server = await RunningServer(settings, db_url, private.url).start()
    try:
        a = await YClient(server.ws_url("p7")).connect()
        b = await YClient(server.ws_url("p7")).connect()
        await eventually(lambda: _count(listing(server, "p7"), 2))
        private.stop()
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{server.http}/readyz")
        assert ready.status_code == 503 and "redis" in ready.json()["down"]
        from pycrdt import Text

        a.doc.get("content", type=Text).insert(0, "still editing")
        await b.wait_for(lambda: str(b.doc.get("content", type=Text)) == "still editing", timeout=3)
        assert (await server.get("/api/documents/p7/presence")).status_code == 503
        private.restart_same_port()
        people = await eventually(lambda: _count(listing(server, "p7"), 2), timeout=6)
        assert len(people) == 2
        assert not a.closed.is_set() and not b.closed.is_set()
        await a.close()
        await b.close()
    finally:
        await server.stop()
        private.stop()


@pytest.mark.parametrize("document", ["not-a-room"])
async def test_presence_listing_index_is_pruned(server, redis_url, document: str) -> None:
    redis = aioredis.from_url(redis_url)
    key = index_key(open_document_id(document))
    await redis.zadd(key, {"expired-conn": time.time() - 10, "missing-record": time.time() + 100})
    assert await listing(server, document) == []
    assert await redis.zcard(key) == 0
    await redis.aclose()


async def test_presence_is_back_within_a_heartbeat_when_redis_loses_it(db_url: str, tmp_path: Path) -> None:
    """A Redis that restarts without persistence (here: flushed, then really restarted) loses every
    record while no write fails. Each process notices at its next process heartbeat (1 s here) and
    rewrites, long before the 60 s full rewrite; a process lists its own people from memory at once."""
    private = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    settings = make_settings(tmp_path, presence_heartbeat_seconds=60, process_heartbeat_seconds=1)
    one = await RunningServer(settings, db_url, private.url).start()
    two = await RunningServer(settings, db_url, private.url).start()
    redis = aioredis.from_url(private.url)
    clients = []
    try:
        clients = [await YClient(one.ws_url("p8")).connect(), await YClient(two.ws_url("p8")).connect()]
        await eventually(lambda: _count(listing(one, "p8"), 2), what="both listed")
        await redis.flushall()
        own = await listing(one, "p8")  # at once, before any heartbeat: this process's own from memory
        assert one.ctx.process_id in [p["process_id"] for p in own]  # (the other's may be back already)
        lost = time.monotonic()
        await eventually(lambda: _count(listing(one, "p8"), 2), timeout=5, what="the other process's record back")
        assert time.monotonic() - lost < 3
        await redis.aclose()
        private.stop()
        private.restart_same_port()
        redis = aioredis.from_url(private.url)
        await eventually(lambda: _count(listing(one, "p8"), 2), timeout=8, what="both back after a restart")
        await eventually(lambda: _count(listing(two, "p8"), 2), timeout=8, what="seen from the other process too")
    finally:
        for client in clients:
            await client.close()
        await one.stop()
        await two.stop()
        await redis.aclose()
        private.stop()


def _fake_conn(cid: str) -> SimpleNamespace:
    """What Presence reads of a connection."""
    return SimpleNamespace(id=cid, info=SimpleNamespace(user_id=None, device_type="web", device_name=None,
                                                      client_version=None))


async def test_a_connection_gone_within_the_batch_window_never_reaches_redis(redis_url, tmp_path: Path) -> None:
    """A cold room opened and read (join, sync, leave in a few ms) costs Redis nothing; one that stays
    is written within the window and deleted when it leaves."""
    from collab_server.cluster.presence import BATCH_SECONDS

    redis = aioredis.from_url(redis_url)
    settings = make_settings(tmp_path, process_heartbeat_seconds=60.0)  # no beat inside the counted windows
    presence = Presence(redis, settings, f"batch-test-{time.time_ns()}")
    room = SimpleNamespace(id=open_document_id("batched"))

    await presence.on_start(None)  # type: ignore[arg-type]
    try:
        await eventually(lambda: None, lambda _: presence.commands_sent >= 1, what="the first heartbeat")
        stays, passes = _fake_conn(f"stays-{time.time_ns()}"), _fake_conn(f"passes-{time.time_ns()}")
        before = presence.commands_sent
        presence.on_join(room, stays)  # type: ignore[arg-type]
        await eventually(lambda: None, lambda _: presence.commands_sent > before, timeout=5 * BATCH_SECONDS + 1)
        assert presence.commands_sent == before + 1  # the record and its index entry in one EVAL
        assert await redis.exists(record_key(stays.id))
        before = presence.commands_sent
        presence.on_join(room, passes)  # type: ignore[arg-type]
        presence.on_leave(room, passes)  # type: ignore[arg-type]
        presence.on_leave(room, stays)  # type: ignore[arg-type]
        await eventually(lambda: None, lambda _: presence.commands_sent > before, timeout=5 * BATCH_SECONDS + 1)
        assert presence.commands_sent == before + 2  # DEL + ZREM of the one that was written, nothing else
        assert not await redis.exists(record_key(stays.id)) and not await redis.exists(record_key(passes.id))
    finally:
        await presence.on_stop()
        await redis.aclose()


async def test_a_storm_of_joins_is_one_command_with_every_record_and_index_entry(redis_url, tmp_path: Path) -> None:
    """4,500 joins in one room and 3 in another within one batch window: one EVAL writes them all
    (9,000 ZADD arguments: past Lua's unpack limit, so the script adds them 500 pairs at a time)."""
    from collab_server.cluster.presence import BATCH_SECONDS

    redis = aioredis.from_url(redis_url)
    settings = make_settings(tmp_path, process_heartbeat_seconds=60.0)
    presence = Presence(redis, settings, f"storm-test-{time.time_ns()}")
    big, small = (SimpleNamespace(id=open_document_id(f"storm-{n}-{time.time_ns()}")) for n in ("big", "small"))

    await presence.on_start(None)  # type: ignore[arg-type]
    try:
        await eventually(lambda: None, lambda _: presence.commands_sent >= 1, what="the first heartbeat")
        before = presence.commands_sent
        tag = time.time_ns()
        joined = [(big, _fake_conn(f"b{i}-{tag}")) for i in range(4500)]
        joined += [(small, _fake_conn(f"s{i}-{tag}")) for i in range(3)]
        for room, c in joined:
            presence.on_join(room, c)  # type: ignore[arg-type]
        await eventually(lambda: None, lambda _: presence.commands_sent > before, timeout=5 * BATCH_SECONDS + 1)
        assert presence.commands_sent == before + 1
        assert await redis.zcard(index_key(big.id)) == 4500 and await redis.zcard(index_key(small.id)) == 3
        assert await redis.exists(*(record_key(c.id) for _, c in joined)) == len(joined)
        ttl = await redis.ttl(record_key(joined[0][1].id))
        assert 0 < ttl <= settings.presence_ttl_seconds
    finally:
        await presence.on_stop()
        await redis.aclose()
