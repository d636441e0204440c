"""Scale-out: several processes serve one document through Redis Streams."""

import asyncio
import time
from pathlib import Path

from pycrdt import Doc, Map, Text

from collab_server.client import YClient
from collab_server.runtime.embedded import EmbeddedRedis
from tests.conftest import RunningServer, make_settings


def text(client: YClient) -> str:
    return str(client.doc.get("content", type=Text))


async def converge(clients: list[YClient], expected: str, timeout: float = 5.0) -> None:
    for c in clients:
        await c.wait_for(lambda c=c: text(c) == expected, timeout=timeout)


async def test_three_processes_converge_on_text_map_and_awareness(make_server) -> None:
    servers = [await make_server() for _ in range(3)]
    clients = [await YClient(s.ws_url("shared")).connect() for s in servers for _ in range(2)]
    for i, c in enumerate(clients):
        c.doc.get("content", type=Text).insert(0, f"[{i}]")
        c.doc.get("meta", type=Map)[f"k{i}"] = i
        c.set_awareness({"user": {"name": f"u{i}"}, "cursor": i})
    expected_len = sum(len(f"[{i}]") for i in range(len(clients)))
    for c in clients:
        await c.wait_for(lambda c=c: len(text(c)) == expected_len, timeout=5)
        await c.wait_for(lambda c=c: len(c.doc.get("meta", type=Map)) == len(clients), timeout=5)
        await c.wait_for(lambda c=c: len(c.remote_awareness) == len(clients) - 1, timeout=5)
    assert len({text(c) for c in clients}) == 1
    for c in clients:
        await c.close()


async def test_late_joiner_on_another_process_gets_recent_edits(make_server) -> None:
    a_server, b_server = await make_server(), await make_server()
    writer = await YClient(a_server.ws_url("late")).connect()
    writer.doc.get("content", type=Text).insert(0, "written on A a moment ago")
    await asyncio.sleep(0.02)  # well inside the write-ahead window plus the commit
    late = await YClient(b_server.ws_url("late")).connect()
    await late.wait_for(lambda: text(late) == "written on A a moment ago", timeout=3)
    await writer.close()
    await late.close()


async def test_relay_latency_is_reported(make_server) -> None:
    a_server, b_server = await make_server(), await make_server()
    a = await YClient(a_server.ws_url("lat")).connect()
    b = await YClient(b_server.ws_url("lat")).connect()
    samples = []
    for i in range(20):
        started = time.perf_counter()
        a.doc.get("content", type=Text).insert(0, "x")
        await b.wait_for(lambda i=i: len(text(b)) == i + 1, timeout=3)
        samples.append(time.perf_counter() - started)
    samples.sort()
    print(f"cross-process relay p50 {samples[10] * 1000:.2f} ms")
    assert samples[10] < 0.5
    await a.close()
    await b.close()


async def test_killed_process_clients_reconnect_elsewhere_and_lose_nothing(spawn_server, make_server) -> None:
    victim = spawn_server()
    survivor = await make_server()
    observer = await YClient(survivor.ws_url("crash")).connect()
    typist_doc = Doc()
    typist = await YClient(f"{victim.ws_base}/crash", doc=typist_doc).connect()
    typist.set_awareness({"user": {"name": "typist"}})
    await observer.wait_for(lambda: len(observer.remote_awareness) == 1, timeout=5)
    t = typist_doc.get("content", type=Text)
    for i in range(50):
        t.insert(len(t), f"{i};")
        await asyncio.sleep(0.002)
    victim.kill()
    killed = time.monotonic()
    # The dead process cannot say goodbye: its client's awareness vanishes within 5 s anyway.
    await observer.wait_for(lambda: not observer.remote_awareness, timeout=5)
    assert time.monotonic() - killed < 5
    await typist.wait_closed(2)
    # The client keeps its document and reconnects to the surviving process.
    t.insert(len(t), "after;")
    again = await YClient(survivor.ws_url("crash"), doc=typist_doc).connect()
    expected = "".join(f"{i};" for i in range(50)) + "after;"
    await observer.wait_for(lambda: text(observer) == expected, timeout=5)
    await again.close()
    await observer.close()


async def test_redis_restart_mid_session_recovers_without_client_action(db_url: str, tmp_path: Path) -> None:
    private = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    servers = [
        await RunningServer(make_settings(tmp_path), db_url, private.url).start() for _ in range(2)
    ]
    try:
        a = await YClient(servers[0].ws_url("flaky")).connect()
        b = await YClient(servers[1].ws_url("flaky")).connect()
        a.doc.get("content", type=Text).insert(0, "before;")
        await converge([b], "before;")
        private.stop()
        await asyncio.sleep(0.3)
        a.doc.get("content", type=Text).insert(len(text(a)), "during;")  # published while Redis is down
        await asyncio.sleep(0.5)
        private.restart_same_port()
        b.doc.get("content", type=Text).insert(0, "after;")
        await converge([a, b], "after;before;during;", timeout=10)
        assert not a.closed.is_set() and not b.closed.is_set()
        await a.close()
        await b.close()
    finally:
        for server in servers:
            await server.stop()
        private.stop()


async def test_serve_with_two_workers_shares_documents(spawn_server, server) -> None:
    import psutil

    served = spawn_server(args=("--workers", "2"))
    assert served.proc is not None and len(psutil.Process(served.proc.pid).children()) == 2
    clients: list[YClient] = []
    # The kernel decides which worker accepts; connect until both hold clients of the room.
    for _ in range(40):
        clients.append(await YClient(f"{served.ws_base}/workers").connect())
        await asyncio.sleep(0.05)
        people = (await server.get("/api/documents/workers/presence")).json()["presence"]
        if len({p["process_id"] for p in people}) == 2 and len(clients) >= 4:
            break
    assert len({p["process_id"] for p in people}) == 2
    for i, c in enumerate(clients):
        c.doc.get("content", type=Text).insert(0, f"<{i}>")
    expected = sum(len(f"<{i}>") for i in range(len(clients)))
    for c in clients:
        await c.wait_for(lambda c=c: len(text(c)) == expected, timeout=5)
    assert served.terminate() == 0
    for c in clients:
        await c.wait_closed(3)
        assert c.close_code == 1001


async def test_a_server_stops_in_bounded_time_while_redis_is_frozen(db_url: str, tmp_path: Path) -> None:
    """Redis alive but answering nothing (SIGSTOP: its sockets stay open): the bus's and presence's
    waits at shutdown are bounded, so the server still stops, and editing went on meanwhile."""
    import os
    import signal

    private = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    pid = private.pid
    assert pid is not None
    server = await RunningServer(make_settings(tmp_path), db_url, private.url).start()
    stopped = False
    try:
        client = await YClient(server.ws_url("frozen")).connect()
        os.kill(pid, signal.SIGSTOP)
        client.doc.get("content", type=Text).insert(0, "typed while Redis is frozen")
        assert await server.ctx.wal.flush(10)  # PostgreSQL has it: Redis is not on the edit path
        await client.close()
        t0 = time.monotonic()
        await server.stop()
        stopped = True
        assert time.monotonic() - t0 < 30
    finally:
        os.kill(pid, signal.SIGCONT)
        if not stopped:
            await server.stop()
        private.stop()
