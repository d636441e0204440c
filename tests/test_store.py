"""Durability: restarts and crashes, PostgreSQL outages, compaction, loading, versions, shutdown.

Everything here runs against real PostgreSQL, real sockets and, where a crash or a signal is the
point, a real `collab-server serve` child process. Edits are tagged ("a17;") so that a test can
tell exactly which ones arrived, were stored, were lost or were stored twice.

pycrdt note: `Text.insert` / `len(Text)` count UTF-8 bytes, so every index used below is either
the end of the text or inside an ASCII run (an index inside a multi-byte character produces an
update that other replicas cannot integrate: a client-library pitfall, not a server behaviour).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pycrdt import Doc, Map, Text

from collab_server.client import YClient
from collab_server.core.hub import RoomUnavailable
from collab_server.core.protocol import CloseCode, read_varuint
from collab_server.runtime import embedded
from collab_server.runtime.embedded import EmbeddedPostgres
from collab_server.storage import db as dbmod
from collab_server.storage.migrate import migrate
from collab_server.storage.postgres import LOCAL_USER_ID, open_document_id
from collab_server.storage.ydoc import state_of
from tests.conftest import RunningServer, make_settings
from tests.waiting import eventually

TAG = re.compile(r"[A-Za-z]+\d+(?:\.\d+)?;")


# -- helpers -------------------------------------------------------------------------------


def text_of(doc: Doc) -> str:
    return str(doc.get("content", type=Text))


def state_vector(doc: Doc) -> dict[int, int]:
    """The decoded state vector ({client id: clock}); the encoded entry order is unspecified."""
    raw = doc.get_state()
    count, pos = read_varuint(raw, 0)
    out = {}
    for _ in range(count):
        client, pos = read_varuint(raw, pos)
        clock, pos = read_varuint(raw, pos)
        out[client] = clock
    return out


async def stored_doc(conn: asyncpg.Connection, document_id: uuid.UUID) -> Doc:
    """What PostgreSQL holds for a document: yjs_state plus the write-ahead rows not merged yet."""
    state = await conn.fetchval("SELECT yjs_state FROM documents WHERE id = $1", document_id)
    rows = await conn.fetch("SELECT payload FROM document_updates WHERE document_id = $1 ORDER BY seq", document_id)
    return state_of(state, [r["payload"] for r in rows])


async def pending_rows(conn: asyncpg.Connection, document_id: uuid.UUID) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM document_updates WHERE document_id = $1", document_id))




class Typist:
    """Appends a unique tag to the client's text every `interval` seconds and remembers when each was sent.

    A tag is stamped when its update is handed to the client's socket writer (that task runs on the
    next loop iteration, microseconds later on an idle loop).
    """

    def __init__(self, client: YClient, prefix: str, interval: float, filler: str = "", burst: int = 1) -> None:
        self.client = client
        self.prefix = prefix
        self.interval = interval
        self.filler = filler
        self.burst = burst  # inserts (each its own update and frame) sent back to back per interval
        self.sent: dict[str, float] = {}
        self.order: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Typist:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        text = self.client.doc.get("content", type=Text)
        n = 0
        while not self._stop.is_set() and not self.client.closed.is_set():
            for _ in range(self.burst):
                tag = f"{self.prefix}{n};"
                text.insert(len(text), self.filler + tag)
                self.sent[tag] = time.monotonic()
                self.order.append(tag)
                n += 1
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def tags_in(text: str) -> Counter[str]:
    return Counter(TAG.findall(text))


# -- 1. restart ----------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm", "kill"])
async def test_restart_keeps_text_map_and_state_vector(spawn_server, db, stop: str) -> None:
    name = f"restart-{stop}"
    first = spawn_server()
    writer = await YClient(f"{first.ws_base}/{name}").connect()
    text = writer.doc.get("content", type=Text)
    meta = writer.doc.get("meta", type=Map)
    # Fast typing: bursts 1 ms apart, so that one 5 ms group commit holds several rows that build
    # on each other (the room writes what it applied in one loop turn as one row).
    text.insert(0, "# Title\n")
    for i in range(60):
        text.insert(len(text), f"line {i} é🙂\n")
        if i % 10 == 0:
            meta[f"k{i}"] = {"n": i, "s": f"v{i}"}
        if i % 6 == 5:
            await asyncio.sleep(0.001)
    del text[0:2]  # "# "
    await asyncio.sleep(0.001)
    text.insert(5, " [mid]")  # inside the ASCII header: byte and character indices agree
    meta["k0"] = "overwritten"
    await asyncio.sleep(0.001)
    del meta["k10"]
    await asyncio.sleep(0.1)  # >> the 5 ms group-commit window
    expected_text, expected_map, expected_sv = str(text), meta.to_py(), state_vector(writer.doc)
    assert expected_text.startswith("Title [mid]\nline 0 é🙂\n")

    if stop == "sigterm":
        assert await asyncio.to_thread(first.terminate) == 0
    else:
        first.kill()
    await writer.wait_closed()

    second = spawn_server()
    reader = await YClient(f"{second.ws_base}/{name}").connect()
    try:
        got_text = text_of(reader.doc)
        got_map = reader.doc.get("meta", type=Map).to_py()
        got_sv = state_vector(reader.doc)
    finally:
        await reader.close()
    assert got_text == expected_text
    assert got_map == expected_map
    assert got_sv == expected_sv
    # Either way PostgreSQL ends up with all of it (the restart compacts what a crash left behind).
    assert text_of(await stored_doc(db, open_document_id(name))) == expected_text


# -- 2. crash window -----------------------------------------------------------------------

COMMIT_WINDOW_MS = 5
# An insert sent this long before the kill must be stored. The server commits a group at most
# COMMIT_WINDOW_MS after the first update of the group arrives, or one window after the INSERT in
# flight finishes (a few ms with fsync off). The rest is slack for loopback delivery and for both
# event loops being scheduled late on a busy CI machine: 50 ms is 10 windows.
CRASH_MARGIN_S = 0.050


async def test_kill_9_loses_nothing_older_than_the_commit_window(spawn_server, db) -> None:
    """One process, bus off: this measures the write-ahead alone. (With the bus on, the restarted
    process replays the killed one's last Redis entries, see the next test.)"""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env = {"COLLAB_COMMIT_WINDOW_MS": str(COMMIT_WINDOW_MS), "COLLAB_BUS": "off"}
    name = "crash-window"
    proc = spawn_server(**env)
    report = []
    for round_no in range(3):
        # A fresh Doc each round: reconnecting the old one would re-send what the crash lost.
        writer = await YClient(f"{proc.ws_base}/{name}").connect()
        await asyncio.sleep(0.3)  # connect, then type, as a person would
        typist = Typist(writer, f"r{round_no}.", 0.002).start()
        await asyncio.sleep(rng.uniform(0.3, 0.9))
        assert not writer.closed.is_set(), f"writer closed early: {writer.close_code} {writer.close_reason}"
        killed_at = time.monotonic()
        assert proc.proc is not None
        proc.proc.kill()  # SIGKILL, right now
        await typist.stop()
        proc.kill()  # reap
        await writer.wait_closed()

        proc = spawn_server(**env)
        # What PostgreSQL holds (yjs_state + write-ahead rows), not what a room shows.
        stored = tags_in(text_of(await stored_doc(db, open_document_id(name))))

        sent = typist.sent
        lost = [t for t in typist.order if stored[t] == 0]
        must_have = [t for t in typist.order if sent[t] < killed_at - CRASH_MARGIN_S]
        missing = [t for t in must_have if stored[t] == 0]
        window = max((killed_at - sent[t] for t in lost), default=0.0)  # age of the oldest lost insert
        report.append((len(sent), len(lost), round(window * 1000, 1)))
        assert must_have, "the typist sent nothing before the kill"
        assert not missing, (
            f"seed {seed} round {round_no}: {len(missing)} inserts sent more than {CRASH_MARGIN_S * 1000:.0f} ms "
            f"before kill -9 are gone, e.g. {missing[:5]} sent "
            f"{[round((killed_at - sent[t]) * 1000, 1) for t in missing[:5]]} ms before the kill"
        )
        assert all(stored[t] <= 1 for t in typist.order), "an insert is stored twice"
    print(f"crash window (sent, lost, ms before the kill of the oldest lost insert) per round: {report}")


async def test_edits_built_on_a_killed_peers_unstored_updates_are_stored(spawn_server, db) -> None:
    """Bus on, two processes. A relays its clients' updates to B at once but writes them ahead only
    after its commit window (500 ms here, so that the gap is certain rather than a few ms wide), and
    is killed inside that window. B's client, who saw A's last edits, keeps typing after them for half
    a second, then B stops cleanly. A's last edits may be lost (inside A's window); B's may not."""
    a_proc = spawn_server(COLLAB_BUS="on", COLLAB_COMMIT_WINDOW_MS="500")
    b_proc = spawn_server(COLLAB_BUS="on")
    name = "peer-crash"
    document_id = open_document_id(name)
    a = await YClient(f"{a_proc.ws_base}/{name}").connect()
    b = await YClient(f"{b_proc.ws_base}/{name}").connect()
    a_text = a.doc.get("content", type=Text)
    for i in range(10):
        a_text.insert(len(a_text), f"a{i};")
    await eventually(lambda: tags_in(text_of(b.doc))["a9;"] == 1, what="A's edits reaching B through the bus")
    a_proc.kill()
    await a.wait_closed()

    typist = Typist(b, "b", 0.01).start()
    await asyncio.sleep(0.5)
    await typist.stop()
    await asyncio.sleep(0.1)
    await b.close()
    assert await asyncio.to_thread(b_proc.terminate) == 0

    stored = tags_in(text_of(await stored_doc(db, document_id)))
    lost = [t for t in typist.order if stored[t] == 0]
    assert not lost, (
        f"{len(lost)} of {len(typist.order)} edits B accepted and kept for 0.1-0.6 s before a clean stop "
        f"are not in PostgreSQL (stored: {sorted(stored)[:8]}...)"
    )


# -- private PostgreSQL for outage tests ---------------------------------------------------


def _port_below_ephemeral_range() -> int:
    """A free port the kernel never hands out on its own (bind to port 0, connect), so that nothing else
    on the machine takes it while our PostgreSQL is down and `restart_same_port` can have it back."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(max(1025, low - 10_000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of our own that the outage tests may stop (the shared one must keep running).

    Not under pytest's tmp_path: every pytest run resets /tmp/pytest-of-<user> to mode 0700, which
    would lock the PostgreSQL system user out of its data directory before `restart_same_port`."""
    tmp = Path(tempfile.mkdtemp(prefix="collab-private-pg-"))
    port = _port_below_ephemeral_range()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embedded, "_free_port", lambda: port)
        pg = EmbeddedPostgres(tmp / "pg", extra_options={"fsync": "off"}).start()
    assert pg.port == port
    try:
        yield pg
    finally:
        pg.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def private_db(private_pg: EmbeddedPostgres) -> AsyncIterator[str]:
    await asyncio.to_thread(private_pg.restart_same_port)  # a failed test may have left it down
    name = f"collab_priv_{uuid.uuid4().hex[:10]}"
    admin = await dbmod.connect(private_pg.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = private_pg.url.rsplit("/", 1)[0] + f"/{name}"
    conn = await dbmod.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield url


async def readyz(base: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        return await client.get("/readyz")


# -- 3. PostgreSQL outage ------------------------------------------------------------------


async def test_postgres_outage_keeps_clients_and_loses_nothing(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, compact_max_updates=50, compact_max_age_seconds=1.0, shutdown_timeout=5)
    server = await RunningServer(settings, private_db, redis_url).start()
    name = "outage"
    document_id = open_document_id(name)
    a = b = None
    try:
        a = await YClient(f"{server.ws_base}/{name}").connect()
        b = await YClient(f"{server.ws_base}/{name}").connect()
        ta = Typist(a, "a", 0.01).start()
        tb = Typist(b, "b", 0.01).start()
        await asyncio.sleep(0.5)

        down_at = time.monotonic()
        await asyncio.to_thread(private_pg.stop, "immediate")
        # Edits keep relaying between the clients while PostgreSQL is gone.
        await eventually(
            lambda: any(at > down_at for at in ta.sent.values()) and not server.ctx.wal.healthy,
            what="write-ahead noticing the outage",
        )
        resp = await readyz(server.http)
        assert resp.status_code == 503
        assert "postgres" in resp.json()["down"], resp.text
        a_after = next(t for t, at in ta.sent.items() if at > down_at)
        b_after = next(t for t, at in tb.sent.items() if at > down_at)
        await eventually(lambda: tags_in(text_of(b.doc))[a_after] == 1, what="a -> b relay during the outage")
        await eventually(lambda: tags_in(text_of(a.doc))[b_after] == 1, what="b -> a relay during the outage")
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
        assert server.ctx.wal.backlog_bytes > 0

        await asyncio.to_thread(private_pg.restart_same_port)
        await asyncio.sleep(0.5)
        await ta.stop()
        await tb.stop()

        await eventually(lambda: text_of(a.doc) == text_of(b.doc), what="clients converging")
        await eventually(
            lambda: server.ctx.wal.healthy and server.ctx.wal.backlog_bytes == 0, timeout=20,
            what="write-ahead catching up",
        )
        assert (await readyz(server.http)).status_code == 200
        assert await server.ctx.wal.flush(10)
        await server.ctx.store.compact(document_id)

        assert not a.closed.is_set() and not b.closed.is_set(), (a.close_code, b.close_code)
        expected = text_of(a.doc)
        everything = {**ta.sent, **tb.sent}
        assert all(tags_in(expected)[t] == 1 for t in everything)

        conn = await dbmod.connect(private_db)
        try:
            stored = text_of(await stored_doc(conn, document_id))
            content = await conn.fetchval("SELECT content FROM documents WHERE id = $1", document_id)
        finally:
            await conn.close()
        counts = tags_in(stored)
        lost = [t for t in everything if counts[t] == 0]
        assert not lost, f"{len(lost)} of {len(everything)} edits lost, e.g. {lost[:5]}"
        assert stored == expected
        assert content == expected
    finally:
        for client in (a, b):
            if client is not None:
                await client.close()
        await server.stop()


# -- 4. bounded backlog --------------------------------------------------------------------


@pytest.mark.parametrize("burst", [1, 8], ids=["one-by-one", "bursts"])
async def test_full_backlog_refuses_edits_with_1013_and_keeps_what_it_accepted(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path, burst: int
) -> None:
    """Edits arriving one by one, or several frames at once (a paste, a client flushing its queue)."""
    limit = 64 * 1024
    settings = make_settings(tmp_path, write_backlog_bytes=limit, shutdown_timeout=5)
    server = await RunningServer(settings, private_db, redis_url).start()
    name = "backlog"
    document_id = open_document_id(name)
    writer = observer = late = None
    try:
        writer = await YClient(f"{server.ws_base}/{name}").connect()
        observer = await YClient(f"{server.ws_base}/{name}").connect()
        await asyncio.to_thread(private_pg.stop, "immediate")

        # ~1 KiB per edit: the 64 KiB backlog fills after ~60 edits.
        typist = Typist(writer, "w", 0.005 * burst, filler="-" * 1000, burst=burst).start()
        await eventually(lambda: writer.closed.is_set() or len(typist.sent) > 400, timeout=15, what="refusal")
        await typist.stop()
        await writer.wait_closed()
        assert writer.close_code == CloseCode.TRY_AGAIN_LATER, (writer.close_code, writer.close_reason)
        assert "backlog" in writer.close_reason
        assert server.ctx.wal.backlog_bytes <= limit

        room_now = str(server.ctx.hub.get(document_id).doc.get("content", type=Text))  # type: ignore[union-attr]
        await eventually(lambda: text_of(observer.doc) == room_now, what="the observer has what the room took")
        accepted = tags_in(text_of(observer.doc))
        assert 0 < len(accepted) < len(typist.sent)
        # What the server took is a prefix of what was sent; the rest was refused, visibly.
        assert list(accepted) == typist.order[: len(accepted)]
        assert not observer.closed.is_set()
        room = server.ctx.hub.get(document_id)

        await asyncio.to_thread(private_pg.restart_same_port)
        await eventually(
            lambda: server.ctx.wal.healthy and server.ctx.wal.backlog_bytes == 0, timeout=20,
            what="write-ahead draining",
        )
        # Edits are welcome again.
        late = await YClient(f"{server.ws_base}/{name}").connect()
        late.doc.get("content", type=Text).insert(len(late.doc.get("content", type=Text)), "late0;")
        await eventually(lambda: tags_in(text_of(observer.doc))["late0;"] == 1, what="late edit relayed")
        assert await server.ctx.wal.flush(10)
        await server.ctx.store.compact(document_id)

        conn = await dbmod.connect(private_db)
        try:
            stored = text_of(await stored_doc(conn, document_id))
        finally:
            await conn.close()
        counts = tags_in(stored)
        lost = [t for t in accepted if counts[t] == 0]
        assert not lost, f"{len(lost)} of {len(accepted)} edits relayed to the other client were never stored"
        assert stored == text_of(observer.doc)
        assert counts["late0;"] == 1
        assert not room.write_refused, "an update was applied and relayed but not queued for PostgreSQL"
    finally:
        for client in (writer, observer, late):
            if client is not None:
                await client.close()
        await server.stop()


async def test_outage_backlog_larger_than_one_compaction_chunk_is_stored(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path
) -> None:
    """Default settings: a typist keeps going through an outage until more updates are queued than one
    compaction merges at a time (COMPACT_CHUNK = 20,000). When PostgreSQL is back, all of them are stored."""
    # Only the message rate limit is lifted, so one client can stand in for a room full of typists.
    settings = make_settings(tmp_path, rate_messages_per_second=0, shutdown_timeout=5)
    server = await RunningServer(settings, private_db, redis_url).start()
    name = "big-backlog"
    document_id = open_document_id(name)
    client = None
    try:
        client = await YClient(f"{server.ws_base}/{name}").connect()
        text = client.doc.get("content", type=Text)
        await asyncio.to_thread(private_pg.stop, "immediate")
        room = server.ctx.hub.get(document_id)
        for i in range(20_500):
            text.insert(len(text), "abcdefghijklmnopqrstuvwxyz"[i % 26])
            if i % 250 == 249:
                await eventually(lambda: len(str(room.doc.get("content", type=Text))) == len(text), what="relay")
        expected = str(text)
        await eventually(lambda: str(room.doc.get("content", type=Text)) == expected, what="server caught up")
        await asyncio.to_thread(private_pg.restart_same_port)
        await eventually(
            lambda: server.ctx.wal.healthy and server.ctx.wal.backlog_bytes == 0, timeout=20, what="write-ahead drained"
        )
        assert await server.ctx.wal.flush(10)
        await server.ctx.store.compact(document_id)
        conn = await dbmod.connect(private_db)
        try:
            assert await pending_rows(conn, document_id) == 0
            stored = text_of(await stored_doc(conn, document_id))
        finally:
            await conn.close()
        assert len(stored) == len(expected), f"{len(expected) - len(stored)} of {len(expected)} characters lost"
        assert stored == expected
        assert not client.closed.is_set()
    finally:
        if client is not None:
            await client.close()
        await server.stop()


# -- 5. sync_log ---------------------------------------------------------------------------


# Live feed entries off: these tests read the one row a compaction writes (test_wal covers the live ones).
SYNC_LOG_SETTINGS = {"compact_max_updates": 100_000, "compact_max_age_seconds": 600, "compact_max_bytes": 1 << 28,
                     "feed_interval_seconds": 0}


async def log_rows(db: asyncpg.Connection, document_id: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT operation::text AS op, changes, content_hash FROM sync_log WHERE entity_id = $1 ORDER BY cursor",
        document_id,
    )


async def type_then_compact(server: Any, db: asyncpg.Connection, name: str) -> tuple[YClient, list[asyncpg.Record]]:
    """200 keystrokes, then 20 typos fixed at once (a key and its backspace ~1 ms apart), each its own
    update; then exactly one compaction."""
    ctx = server.ctx
    document_id = open_document_id(name)
    client = await YClient(server.ws_url(name)).connect()
    text = client.doc.get("content", type=Text)
    for i in range(200):
        text.insert(len(text), "abcdefghij"[i % 10])
        await asyncio.sleep(0.0005)
    for _ in range(20):
        text.insert(len(text), "z")
        await asyncio.sleep(0.0005)
        del text[len(text) - 1]
        await asyncio.sleep(0.0005)
    room = ctx.hub.get(document_id)
    await eventually(lambda: str(room.doc.get("content", type=Text)) == str(text), what="server has every keystroke")
    assert await ctx.wal.flush(5)
    rows = await log_rows(db, document_id)
    assert [r["op"] for r in rows] == ["create"], "with live entries off, keystrokes write no sync_log row"
    payloads = await db.fetch("SELECT seq, payload FROM document_updates WHERE document_id = $1", document_id)
    assert 0 < len(payloads) <= 240  # the room may merge what arrived within one loop turn into one row
    result = await ctx.store.compact(document_id)
    assert result is not None and result.merged == len(payloads)
    return client, payloads


async def test_one_sync_log_row_per_compaction_with_a_small_summary(make_server, db) -> None:
    server = await make_server(**SYNC_LOG_SETTINGS)
    ctx = server.ctx
    name = "sync-log"
    document_id = open_document_id(name)
    client, payloads = await type_then_compact(server, db, name)
    text = text_of(client.doc)

    rows = await log_rows(db, document_id)
    assert [r["op"] for r in rows] == ["create", "update"]
    changes = rows[1]["changes"]
    assert len(orjson.dumps(changes)) < 2048
    assert changes["editors"] == [str(LOCAL_USER_ID)]  # one editor
    seqs = sorted(r["seq"] for r in payloads)
    assert changes["clock"] == [seqs[0], seqs[-1]]
    assert changes["updates"] == len(payloads)
    assert changes["bytes"] == sum(len(r["payload"]) for r in payloads)
    assert isinstance(changes["chars_added"], int) and isinstance(changes["chars_removed"], int)

    doc = await db.fetchrow("SELECT content, content_hash FROM documents WHERE id = $1", document_id)
    assert doc["content"] == text
    assert doc["content_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert rows[1]["content_hash"] == doc["content_hash"]

    # The room unloading afterwards has nothing left to merge: still one update row.
    await client.close()
    await eventually(lambda: ctx.hub.get(document_id) is None and not ctx.hub.is_unloading(document_id), what="unload")
    assert [r["op"] for r in await log_rows(db, document_id)] == ["create", "update"]

    # A 1 MiB document: the summary stays small, content and hash are right (non-ASCII included).
    big_name = "sync-log-big"
    big_id = open_document_id(big_name)
    big = await YClient(server.ws_url(big_name)).connect()
    big_text = big.doc.get("content", type=Text)
    chunk = ("0123456789abcdef" * 4095) + "é🙂\n"  # 65,520 + 3 characters
    for _ in range(16):
        big_text.insert(len(big_text), chunk)
    expected = str(big_text)
    assert len(expected) > 1024 * 1024 - 1000
    await eventually(lambda: str(ctx.hub.get(big_id).doc.get("content", type=Text)) == expected, timeout=20,
                     what="server has the big document")
    assert await ctx.wal.flush(10)
    await ctx.store.compact(big_id)
    big_rows = await log_rows(db, big_id)
    assert [r["op"] for r in big_rows] == ["create", "update"]
    assert len(orjson.dumps(big_rows[1]["changes"])) < 2048
    assert big_rows[1]["changes"]["bytes"] >= len(expected.encode())
    stored = await db.fetchrow("SELECT content, content_hash FROM documents WHERE id = $1", big_id)
    assert stored["content"] == expected
    assert stored["content_hash"] == hashlib.sha256(expected.encode()).hexdigest()
    await big.close()


async def test_sync_log_summary_counts_characters_added_and_removed(make_server, db) -> None:
    """The summary is the net change between the stored text before and after the compaction:
    a typo typed and fixed within one compaction neither adds nor removes anything."""
    server = await make_server(**SYNC_LOG_SETTINGS)
    name = "sync-log-chars"
    client, _ = await type_then_compact(server, db, name)
    document_id = open_document_id(name)
    changes = (await log_rows(db, document_id))[1]["changes"]
    assert (changes["chars_added"], changes["chars_removed"]) == (200, 0)
    text = client.doc.get("content", type=Text)
    del text[0:5]
    text.insert(0, "XY")
    room = server.ctx.hub.get(document_id)
    await eventually(lambda: str(room.doc.get("content", type=Text)) == str(text), what="server has the edit")
    assert await server.ctx.wal.flush(5)
    await server.ctx.store.compact(document_id)
    second = (await log_rows(db, document_id))[2]["changes"]
    assert (second["chars_added"], second["chars_removed"]) == (2, 5)
    await client.close()


# -- 6. two processes compacting one document ----------------------------------------------


@pytest.mark.parametrize("bus", ["off", "on"])
async def test_two_processes_compacting_one_document_lose_and_duplicate_nothing(spawn_server, db, bus: str) -> None:
    """With the bus off the two sides only meet in PostgreSQL; with it on each side also builds on the
    other's edits, which the other process may not have committed yet when this one compacts."""
    env = {"COLLAB_COMPACT_MAX_UPDATES": "5", "COLLAB_COMMIT_WINDOW_MS": "2", "COLLAB_BUS": bus}
    one, two = spawn_server(**env), spawn_server(**env)
    name = "two-writers"
    document_id = open_document_id(name)
    a = await YClient(f"{one.ws_base}/{name}").connect()
    b = await YClient(f"{two.ws_base}/{name}").connect()
    ta, tb = Typist(a, "A", 0.002), Typist(b, "B", 0.002)
    ta.start()
    tb.start()
    await eventually(lambda: len(ta.sent) >= 300 and len(tb.sent) >= 300, timeout=15, what="typing")
    await ta.stop()
    await tb.stop()
    assert not a.closed.is_set() and not b.closed.is_set()
    await asyncio.sleep(0.1)
    compactions_while_typing = await db.fetchval(
        "SELECT count(*) FROM sync_log WHERE entity_id = $1 AND operation = 'update'", document_id
    )
    await a.close()
    await b.close()
    # A clean stop compacts the rest on both sides.
    assert await asyncio.to_thread(one.terminate) == 0
    assert await asyncio.to_thread(two.terminate) == 0

    assert compactions_while_typing >= 10, "the two servers hardly compacted: the test would prove nothing"
    assert await pending_rows(db, document_id) == 0
    state = await db.fetchval("SELECT yjs_state FROM documents WHERE id = $1", document_id)
    counts = tags_in(text_of(state_of(state, [])))
    everything = [*ta.order, *tb.order]
    lost = [t for t in everything if counts[t] == 0]
    doubled = [t for t in everything if counts[t] > 1]
    assert not lost, f"{len(lost)} of {len(everything)} edits lost, e.g. {lost[:5]}"
    assert not doubled, f"{len(doubled)} edits stored twice, e.g. {doubled[:5]}"
    assert sum(counts.values()) == len(everything)


# -- 7. loading ----------------------------------------------------------------------------


async def test_load_merges_yjs_state_and_pending_rows(server, db) -> None:
    ctx = server.ctx
    document_id = await ctx.store.ensure_open_document("preloaded")
    author = Doc()
    text = author.get("content", type=Text)
    meta = author.get("meta", type=Map)
    text += "hello"
    meta["title"] = "draft"
    base = author.get_update()
    updates = []
    for edit in (
        lambda: text.insert(len(text), " world"),
        lambda: text.__delitem__(slice(0, 1)),
        lambda: text.insert(0, "H"),
        lambda: meta.__setitem__("title", "final"),
    ):
        before = author.get_state()
        edit()
        updates.append(author.get_update(before))
    await db.execute("UPDATE documents SET yjs_state = $2 WHERE id = $1", document_id, base)
    for update in updates:
        await db.execute("INSERT INTO document_updates (document_id, payload) VALUES ($1, $2)", document_id, update)

    client = await YClient(server.ws_url("preloaded")).connect()
    assert text_of(client.doc) == "Hello world"
    assert client.doc.get("meta", type=Map).to_py() == {"title": "final"}
    assert state_vector(client.doc) == state_vector(author)
    await client.close()
    # Unloading merges the pending rows into yjs_state.
    await eventually(lambda: ctx.hub.get(document_id) is None and not ctx.hub.is_unloading(document_id), what="unload")
    assert await pending_rows(db, document_id) == 0
    state = await db.fetchval("SELECT yjs_state FROM documents WHERE id = $1", document_id)
    assert text_of(state_of(state, [])) == "Hello world"

    # Write-ahead rows only, no yjs_state yet (a crash before the first compaction).
    only_rows = await ctx.store.ensure_open_document("rows-only")
    for update in [base, *updates]:
        await db.execute("INSERT INTO document_updates (document_id, payload) VALUES ($1, $2)", only_rows, update)
    room = await ctx.hub.open_room(only_rows)
    assert str(room.doc.get("content", type=Text)) == "Hello world"


def _unloaded(hub: Any, document_id: uuid.UUID) -> bool:
    return hub.get(document_id) is None and not hub.is_unloading(document_id)


async def test_missing_or_deleted_document_is_refused_and_leaves_no_room(server, db) -> None:
    hub = server.ctx.hub
    missing = uuid.uuid4()
    with pytest.raises(RoomUnavailable) as refused:
        await hub.open_room(missing)
    assert refused.value.code == CloseCode.NOT_FOUND == 4404
    assert hub.get(missing) is None and not hub.is_loading(missing)

    document_id = await server.ctx.store.ensure_open_document("soft-deleted")
    await db.execute("UPDATE documents SET deleted = true WHERE id = $1", document_id)
    with pytest.raises(RoomUnavailable) as refused:
        await hub.open_room(document_id)
    assert refused.value.code == 4404
    assert hub.get(document_id) is None and not hub.is_loading(document_id)

    # Over the WebSocket the same refusal is the close code 4404.
    client = YClient(server.ws_url("soft-deleted"))
    await client.connect(wait_synced=False)
    await client.wait_closed()
    assert client.close_code == 4404
    assert not client.synced.is_set()
    assert hub.get(document_id) is None

    # Nothing cached the failure: once undeleted, the document opens.
    await db.execute("UPDATE documents SET deleted = false WHERE id = $1", document_id)
    async with YClient(server.ws_url("soft-deleted")) as again:
        assert again.synced.is_set()
        assert hub.get(document_id) is not None


# -- 8. versions ---------------------------------------------------------------------------


async def _session(server: Any, name: str, typed: str) -> None:
    client = await YClient(server.ws_url(name)).connect()
    text = client.doc.get("content", type=Text)
    for ch in typed:
        text.insert(len(text), ch)
    if typed:
        room = server.ctx.hub.get(open_document_id(name))
        await eventually(lambda: str(room.doc.get("content", type=Text)).endswith(typed), what="edits arriving")
    await client.close()
    hub = server.ctx.hub
    gone = open_document_id(name)
    await eventually(lambda: hub.get(gone) is None and not hub.is_unloading(gone), what="unload")


async def _versions(db: asyncpg.Connection, document_id: uuid.UUID) -> list[tuple[int, str, str]]:
    rows = await db.fetch(
        "SELECT version_number, content, yjs_state FROM document_versions WHERE document_id = $1 "
        "ORDER BY version_number", document_id,
    )
    return [(r["version_number"], r["content"], text_of(state_of(r["yjs_state"], []))) for r in rows]


async def test_unload_after_edits_writes_one_numbered_version(make_server, db) -> None:
    server = await make_server(room_grace_seconds=0, compact_max_age_seconds=600, version_interval_seconds=600)
    name = "versions"
    document_id = open_document_id(name)

    await _session(server, name, "one")
    assert await _versions(db, document_id) == [(1, "one", "one")]
    await _session(server, name, " two")
    assert await _versions(db, document_id) == [(1, "one", "one"), (2, "one two", "one two")]
    await _session(server, name, "")  # opened and closed without editing
    assert await _versions(db, document_id) == [(1, "one", "one"), (2, "one two", "one two")]


async def test_unload_after_edits_writes_a_version_even_if_already_compacted(make_server, db) -> None:
    """The age sweeper may merge a session's edits before the room unloads; the unload must still
    snapshot them (the hub asks for it with snapshot=True), or the session has no version at all."""
    server = await make_server(room_grace_seconds=0, compact_max_age_seconds=0.2, version_interval_seconds=600)
    name = "versions-compacted"
    document_id = open_document_id(name)
    for session, typed in enumerate(["one", " two"], start=1):
        client = await YClient(server.ws_url(name)).connect()
        text = client.doc.get("content", type=Text)
        text.insert(len(text), typed)
        expected = "one two"[: len("one") if session == 1 else None]
        await eventually(partial(_compacted, db, document_id, expected), what="sweeper compaction")
        await client.close()
        await eventually(partial(_unloaded, server.ctx.hub, document_id), what="unload")
        versions = await _versions(db, document_id)
        assert len(versions) == session, f"session {session} left versions {versions}"
    assert await _versions(db, document_id) == [(1, "one", "one"), (2, "one two", "one two")]


async def _compacted(db: asyncpg.Connection, document_id: uuid.UUID, content: str) -> bool:
    stored = await db.fetchval("SELECT content FROM documents WHERE id = $1", document_id)
    return stored == content and await pending_rows(db, document_id) == 0


# -- 9. graceful shutdown ------------------------------------------------------------------


async def test_sigterm_closes_clients_with_1001_and_compacts_everything(spawn_server, db) -> None:
    shutdown_timeout = 5.0
    proc = spawn_server(
        COLLAB_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        COLLAB_COMPACT_MAX_UPDATES="100000",
        COLLAB_COMPACT_MAX_AGE_SECONDS="600",
    )
    name = "shutdown"
    document_id = open_document_id(name)
    writer = await YClient(f"{proc.ws_base}/{name}").connect()
    watcher = await YClient(f"{proc.ws_base}/{name}").connect()
    typist = Typist(writer, "s", 0.003).start()
    await asyncio.sleep(0.5)
    assert await pending_rows(db, document_id) > 0  # so the shutdown has something to compact

    started = time.monotonic()
    code = await asyncio.to_thread(proc.terminate, shutdown_timeout + 10)
    elapsed = time.monotonic() - started
    await typist.stop()
    await writer.wait_closed()
    await watcher.wait_closed()
    assert code == 0
    assert elapsed < shutdown_timeout, f"took {elapsed:.1f}s"
    assert writer.close_code == CloseCode.GOING_AWAY, (writer.close_code, writer.close_reason)
    assert watcher.close_code == CloseCode.GOING_AWAY, (watcher.close_code, watcher.close_reason)

    assert await pending_rows(db, document_id) == 0
    state = await db.fetchval("SELECT yjs_state FROM documents WHERE id = $1", document_id)
    stored = text_of(state_of(state, []))
    # Everything the server relayed (i.e. accepted) is stored, and so is everything sent well before SIGTERM.
    assert tags_in(text_of(watcher.doc)) <= tags_in(stored)
    early = [t for t, at in typist.sent.items() if at < started - 0.1]
    assert early and all(tags_in(stored)[t] == 1 for t in early)
    content = await db.fetchval("SELECT content FROM documents WHERE id = $1", document_id)
    assert content == stored





# -- 9. text PostgreSQL cannot store -----------------------------------------------------------


async def test_a_nul_character_typed_into_a_document_compacts_and_versions(server, db) -> None:
    """PostgreSQL `text` refuses NUL: `content` and versions get U+FFFD, the Yjs state keeps the bytes,
    and compaction keeps working (it used to fail on every retry, leaving yjs_clock at 0)."""
    name = "nul-typed"
    document_id = open_document_id(name)
    client = await YClient(server.ws_url(name)).connect()
    client.doc.get("content", type=Text).insert(0, "A\x00B")
    room_text = lambda: str(server.ctx.hub.get(document_id).doc.get("content", type=Text))  # noqa: E731
    await eventually(lambda: server.ctx.hub.get(document_id) is not None and room_text() == "A\x00B",
                     what="edit arrives")
    assert await server.ctx.wal.flush(5)
    result = await server.ctx.store.compact(document_id, snapshot=True)
    assert result is not None and result.version_number is not None
    row = await db.fetchrow("SELECT content, yjs_clock, yjs_state FROM documents WHERE id = $1", document_id)
    assert row["content"] == "A\ufffdB" and row["yjs_clock"] > 0
    assert text_of(state_of(row["yjs_state"], [])) == "A\x00B"
    version = await db.fetchval("SELECT content FROM document_versions WHERE document_id = $1", document_id)
    assert version == "A\ufffdB"
    assert await pending_rows(db, document_id) == 0
    await client.close()


async def test_an_upgrade_while_postgres_is_down_is_a_503_in_json(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.test_auth import SECRET, expect_refusal, setup_demo

    server = await RunningServer(make_settings(tmp_path, auth="on", jwt_secret=SECRET), private_db, redis_url).start()
    try:
        conn = await asyncpg.connect(private_db)
        try:
            demo = await setup_demo(conn, server)
        finally:
            await conn.close()
        await asyncio.to_thread(private_pg.stop, "immediate")
        body = await expect_refusal(f"{server.ws_base}/{demo.documents[1]}?token={demo.tokens['editor']}", 503)
        assert body["error"]["code"] == "unavailable", body
    finally:
        await asyncio.to_thread(private_pg.restart_same_port)
        await server.stop()


async def test_an_open_mode_upgrade_while_postgres_is_down_closes_1013_and_opens_once_back(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path
) -> None:
    """Open mode checks nothing in the database at the upgrade, so an outage is the room load's refusal."""
    server = await RunningServer(make_settings(tmp_path), private_db, redis_url).start()
    try:
        await asyncio.to_thread(private_pg.stop, "immediate")
        client = YClient(server.ws_url("during-an-outage"))
        await client.connect(wait_synced=False)
        await client.wait_closed()
        assert (client.close_code, client.close_reason) == (1013, "document could not be loaded")
        await asyncio.to_thread(private_pg.restart_same_port)
        async with YClient(server.ws_url("during-an-outage")) as again:  # nothing cached the failure
            assert again.synced.is_set()
    finally:
        await asyncio.to_thread(private_pg.restart_same_port)
        await server.stop()


_ENTRY = re.compile(r"\n(?=\d{4}-\d\d-\d\d \d)")  # PostgreSQL's log: one entry per timestamped line
_STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)", re.DOTALL)


async def _log_every_statement(database_url: str) -> None:
    """PostgreSQL logs every statement of this database (its own count: a pool reset would show too)."""
    conn = await dbmod.connect(database_url)
    try:
        await conn.execute(f'ALTER DATABASE "{database_url.rsplit("/", 1)[1]}" SET log_statement = \'all\'')
    finally:
        await conn.close()


async def test_a_cold_room_costs_one_statement_and_a_live_one_none(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path
) -> None:
    """Counted by PostgreSQL itself (log_statement for this database), so a pool reset or an
    existence check on the upgrade would show up too."""
    await _log_every_statement(private_db)
    server = await RunningServer(make_settings(tmp_path), private_db, redis_url).start()
    log = private_pg.data_dir / "server.log"
    hub, store = server.ctx.hub, server.ctx.store
    names = [f"cold-{i}" for i in range(5)]
    try:
        def logged_since(mark: int) -> list[str]:
            with log.open("rb") as f:
                f.seek(mark)
                entries = _ENTRY.split(f.read().decode(errors="replace"))
            return [" ".join(m.group(1).split()) for e in entries if (m := _STATEMENT.search(e))]

        async def open_close(name: str) -> None:
            async with YClient(server.ws_url(name)) as client:
                assert client.synced.is_set()
            await eventually(lambda: None, lambda _: _unloaded(hub, open_document_id(name)),
                             what=f"room {name} unloaded")

        for name in names:
            await store.ensure_open_document(name)
        store.forget_open_documents()  # as after a restart: the documents exist, this process knows nothing

        mark = log.stat().st_size
        for name in names:
            await open_close(name)
        statements = logged_since(mark)
        assert len(statements) == len(names), statements
        assert all("FROM documents d JOIN workspaces w" in s for s in statements), statements

        # More connections to a live room cost nothing, and leave nothing behind in the store.
        async with YClient(server.ws_url(names[0])):
            mark = log.stat().st_size
            for _ in range(20):
                async with YClient(server.ws_url(names[0])) as client:
                    assert client.synced.is_set()
            assert logged_since(mark) == []
            assert store.pending_open_documents() == 0

        # A brand-new document: the load finds nothing, creates it, reads it back.
        mark = log.stat().st_size
        await open_close("brand-new")
        statements = logged_since(mark)
        assert len(statements) == 3 and "INSERT INTO documents" in statements[1], statements
    finally:
        await server.stop()


async def test_rooms_opened_at_once_load_in_a_few_statements_each_with_its_own_content(
    private_pg: EmbeddedPostgres, private_db: str, redis_url: str, tmp_path: Path
) -> None:
    """A reconnect storm: 40 rooms asked for at once share load statements (counted by PostgreSQL
    itself), and each room still gets its own document and pending updates, not a neighbour's."""
    await _log_every_statement(private_db)
    server = await RunningServer(make_settings(tmp_path), private_db, redis_url).start()
    log = private_pg.data_dir / "server.log"
    store = server.ctx.store
    names = [f"storm-{i}" for i in range(40)]
    try:
        for name in names:  # pending write-ahead rows only: the load must bring each its own
            document_id = await store.ensure_open_document(name)
            doc: Doc = Doc()
            doc["content"] = Text(f"I am {name}.")
            await store.pool.execute("INSERT INTO document_updates (document_id, payload) VALUES ($1, $2)",
                                     document_id, doc.get_update())
        store.forget_open_documents()
        before, mark = store.load_statements, log.stat().st_size
        clients = [YClient(server.ws_url(name)) for name in names]
        await asyncio.gather(*(c.connect() for c in clients))
        try:
            assert [text_of(c.doc) for c in clients] == [f"I am {name}." for name in names]
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        with log.open("rb") as f:
            f.seek(mark)
            loads = [e for e in _ENTRY.split(f.read().decode(errors="replace"))
                     if _STATEMENT.search(e) and "FROM documents d JOIN workspaces w" in e]
        sent = store.load_statements - before
        assert len(loads) == sent, (len(loads), sent)
        assert sent <= len(names) // 4, f"{sent} load statements for {len(names)} rooms opened at once"
    finally:
        await server.stop()


async def test_a_released_pool_connection_keeps_no_transaction_or_local_setting(db_url: str) -> None:
    """The pool's reset is a no-op: this pins what it relies on, asyncpg rolling back an open
    transaction (and its transaction-local settings) before the connection is reused."""
    pool = await dbmod.create_pool(db_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT set_config('collab.probe', 'left behind', true)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT current_setting('collab.probe', true)") in (None, "")
    finally:
        await pool.close()


async def test_a_process_killed_during_an_outage_loses_nothing_it_held(
    private_pg: EmbeddedPostgres, private_db: str, spawn_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """While PostgreSQL is down the write-ahead holds edits; they are on local disk too (the spill file),
    so a kill -9 then loses none of them: the next start writes them."""
    proc = spawn_server(DATABASE_URL=private_db)
    name = "spill"
    client = await YClient(f"{proc.ws_base}/{name}").connect()
    text = client.doc.get("content", type=Text)
    text.insert(0, "before the outage;")
    conn = await dbmod.connect(private_db)
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) FROM document_updates"), lambda n: n > 0,
                         what="the first edit in PostgreSQL")
    finally:
        await conn.close()
    await asyncio.to_thread(private_pg.stop, "immediate")
    for i in range(20):
        text.insert(len(text), f"during the outage {i};")
        await asyncio.sleep(0.01)
    spill = tmp_path / "data" / "spill"

    def held() -> int:
        return sum(p.stat().st_size for p in spill.glob("*.spill"))

    await eventually(lambda: asyncio.sleep(0, held()), lambda n: n > 20 * 15, what="the edits on local disk")
    await asyncio.sleep(0.1)  # one more commit window for the last of them
    proc.kill()
    await client.wait_closed()
    await asyncio.to_thread(private_pg.restart_same_port)
    await asyncio.to_thread(proc.start)  # replays the dead process's spill file, then serves

    fresh = await YClient(f"{proc.ws_base}/{name}").connect()  # a new Doc: it cannot resend anything
    stored = str(fresh.doc.get("content", type=Text))
    assert stored == "before the outage;" + "".join(f"during the outage {i};" for i in range(20)), stored
    files = list(spill.glob("*.spill"))
    assert len(files) == 1 and files[0].stat().st_size == 0  # the new process's own, empty; the old one gone
    await fresh.close()
