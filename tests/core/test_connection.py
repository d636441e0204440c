"""Connection over an in-memory peer: direct writes, the bounded queue, closing once."""

from __future__ import annotations

import asyncio

from collab_server.core.connection import ClientInfo, Connection
from collab_server.core.counters import Counters
from tests.core.memory import MemoryPeer
from tests.waiting import eventually


def connection(peer: MemoryPeer, queue_limit: int = 100, counters: Counters | None = None) -> Connection:
    return Connection("c", ClientInfo(), peer, queue_limit, counters)


async def test_a_writable_peer_gets_frames_at_once_with_no_task() -> None:
    peer = MemoryPeer()
    conn = connection(peer)
    conn.send(b"one")
    conn.send(b"two")
    assert peer.frames == [b"one", b"two"]  # synchronously: no writer task, no loop turn
    assert conn.bytes_out == 6 and conn.queued_bytes == 0


async def test_frames_wait_in_order_while_the_peer_is_full_then_drain() -> None:
    peer = MemoryPeer(writable=False)
    conn = connection(peer)
    for frame in (b"a", b"b", b"c"):
        conn.send(frame)
    assert peer.frames == [] and conn.queued_bytes == 3
    peer.set_writable(True)
    conn.send(b"d")  # queued behind the backlog, never ahead of it
    await eventually(lambda: peer.frames, lambda f: len(f) == 4, what="the backlog drained")
    assert peer.frames == [b"a", b"b", b"c", b"d"]
    conn.send(b"e")  # the backlog is gone: direct again
    assert peer.frames[-1] == b"e" and conn.queued_bytes == 0


async def test_a_peer_that_does_not_read_is_closed_at_the_queue_limit() -> None:
    counters = Counters()
    peer = MemoryPeer(writable=False)
    conn = connection(peer, queue_limit=10, counters=counters)
    conn.send(b"x" * 6)
    conn.send(b"y" * 6)  # 12 > 10
    assert conn.closing and conn.close_code == 1013 and "send queue full" in conn.close_reason
    assert conn.queued_bytes == 0  # the backlog is dropped, not held
    assert counters.get("collab_send_queue_overflows_total") == 1
    await eventually(lambda: peer.closed, what="the close frame")
    assert peer.closed == (1013, "send queue full: the client is not reading")
    conn.send(b"late")
    assert peer.frames == []


async def test_close_happens_once_and_a_peer_that_blocks_the_close_is_aborted(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(Connection, "CLOSE_TIMEOUT", 0.05)
    peer = MemoryPeer()
    peer.close_blocks = True
    conn = connection(peer)
    conn.close(4403, "revoked")
    conn.close(1000, "again")  # ignored
    assert conn.close_code == 4403
    await asyncio.wait_for(conn.finish(), 5)
    await eventually(lambda: peer.aborted, timeout=4, what="abort after the close timed out")


def test_connection_ids_are_unique_and_a_forked_child_draws_its_own_prefix() -> None:
    import os

    from collab_server.core.connection import new_connection_id

    ids = [new_connection_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, new_connection_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read), os.close(write)
    assert child[:16] != ids[0][:16]  # same counter start, different process prefix
