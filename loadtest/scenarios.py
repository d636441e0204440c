"""Single-purpose measurements used by the benchmarks: a large document, cold rooms, idle connections."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import asdict
from typing import Any

from collab_server.core.hocuspocus import AUTH_PERMISSION_DENIED, address_prefix
from collab_server.core.protocol import (
    encode_sync_step1,
    encode_update,
    write_var_bytes,
)

from .client import WSClient, raise_fd_limit, ws_connect
from .config import check_loopback
from .report import LatencyStats
from .workload import STEP1_EMPTY, STEP2_EMPTY, encode_text_insert, tags_in

# -- single-purpose measurements (bench) ---------------------------------------------------


async def _connect_synced(url: str, timeout: float, keep: bool = False) -> tuple[WSClient, dict[str, Any]]:
    """Connect a fresh client, send step 1, wait for step 2; return it with timings (ms)."""
    info: dict[str, Any] = {"step2": None}
    loop = asyncio.get_running_loop()
    synced: asyncio.Future[None] = loop.create_future()
    frames: list[bytes] = []
    ws: WSClient | None = None

    def on_message(data: bytes, now: float) -> None:
        if data[:2] == b"\x00\x01" and not synced.done():
            info["sync_ms"] = (now - info["step1_at"]) * 1000
            info["step2_bytes"] = len(data)
            if keep:
                info["step2"] = data
            synced.set_result(None)
        elif data[:2] == b"\x00\x00" and ws is not None:
            ws.send(STEP2_EMPTY)
        elif keep:
            frames.append(data)

    def on_close(code: int, reason: str) -> None:
        info["close"] = (code, reason)
        if not synced.done():
            synced.set_exception(ConnectionError(f"closed before sync: {code} {reason}"))

    def bind(proto: WSClient) -> None:
        nonlocal ws
        ws = proto

    t0 = time.perf_counter()
    await ws_connect(url, on_message, on_close, timeout, bind=bind)
    assert ws is not None
    info["step1_at"] = time.perf_counter()
    ws.send(STEP1_EMPTY)
    try:
        async with asyncio.timeout(timeout):
            await synced
    except BaseException:
        ws.abort()
        raise
    info["join_ms"] = (time.perf_counter() - t0) * 1000
    info["frames"] = frames
    return ws, info


async def large_document(
    url: str,
    *,
    size: int = 1024 * 1024,
    edits: int = 10_000,
    joiners: int = 5,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Write a `size`-byte text then `edits` single-character inserts scattered through it
    (each splits an item, as real editing does), wait until an observer has them all, then
    time `joiners` late joiners one after another (step 1 sent -> step 2 received)."""
    check_loopback(url)
    rng = random.Random(7)
    writer, _ = await _connect_synced(url, timeout)
    observer, obs = await _connect_synced(url, timeout)
    got: set[tuple[int, int]] = set()
    done = asyncio.get_running_loop().create_future()
    want = edits + 1

    def on_obs(data: bytes, now: float) -> None:
        for tag in tags_in(data):
            got.add(tag)
        if len(got) >= want and not done.done():
            done.set_result(None)

    observer.on_message = on_obs
    try:
        cid = random.getrandbits(31) + 1
        filler = (b"lorem ipsum dolor sit amet " * (size // 27 + 1))[: max(0, size - 8)]
        head = b"\x020.0\x03"
        t0 = time.perf_counter()
        writer.send(encode_update(encode_text_insert(cid, 0, head + filler)))
        length = len(head) + len(filler)
        editor = random.getrandbits(31) + 1
        clock = 0
        for i in range(edits):
            pos = rng.randrange(len(head), length - 1)  # inside the text: after char pos
            text = b"\x021.%d\x03" % i
            writer.send(encode_update(encode_text_insert(editor, clock, text, (cid, pos), (cid, pos + 1))))
            clock += len(text)
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the socket drain
        async with asyncio.timeout(timeout):
            await done
        write_seconds = time.perf_counter() - t0
        syncs = []
        step2_bytes = 0
        for _ in range(joiners):
            ws, info = await _connect_synced(url, timeout)
            syncs.append(info["sync_ms"])
            step2_bytes = info["step2_bytes"]
            await ws.aclose()
        return {
            "document_bytes": length,
            "edits": edits,
            "write_and_relay_seconds": round(write_seconds, 3),
            "late_joiners": joiners,
            "sync_ms": [round(s, 3) for s in syncs],
            "sync_ms_median": round(sorted(syncs)[len(syncs) // 2], 3) if syncs else None,
            "sync_ms_max": round(max(syncs), 3) if syncs else None,
            "step2_bytes": step2_bytes,
            "observer_join_ms": round(obs["join_ms"], 3),
        }
    finally:
        await asyncio.gather(writer.aclose(), observer.aclose())


async def cold_rooms(
    url: str, names: list[str], *, parallel: int = 1, timeout: float = 10.0, max_seconds: float = 300.0
) -> dict[str, Any]:
    """Open, sync and close each room, `parallel` at a time (each worker one room after another); rooms per second."""
    check_loopback(url)
    base = url.rstrip("/")
    times: list[float] = []
    errors: list[str] = []
    todo = iter(names)
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def worker() -> None:
        for name in todo:
            if time.perf_counter() > deadline:
                errors.append("stopped at max_seconds")
                return
            one = time.perf_counter()
            try:
                ws, _info = await _connect_synced(f"{base}/{name}", timeout)
                await ws.aclose(timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(f"{name}: {exc}"[:200])
                continue
            times.append(time.perf_counter() - one)

    await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
    total = time.perf_counter() - t0
    return {
        "rooms": len(times),
        "parallel": max(1, parallel),
        "seconds": round(total, 3),
        "rooms_per_second": round(len(times) / total, 1) if total > 0 else 0.0,
        "open_sync_close": asdict(LatencyStats.of(times)),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def seed_rooms(url: str, names: list[str], *, text_bytes: int = 2048, edits: int = 20,
                     concurrency: int = 32, timeout: float = 10.0) -> int:
    """Give each room some content (a text and a few edits) so that loading it is real work."""
    check_loopback(url)
    base = url.rstrip("/")
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(name: str) -> None:
        nonlocal done
        async with sem:
            ws, _ = await _connect_synced(f"{base}/{name}", timeout)
            cid = random.getrandbits(31) + 1
            body = (b"seed text " * (text_bytes // 10 + 1))[:text_bytes]
            ws.send(encode_update(encode_text_insert(cid, 0, body)))
            editor = random.getrandbits(31) + 1
            clock = 0
            for i in range(edits):
                pos = random.randrange(0, text_bytes - 1)
                text = b"e%d" % i
                ws.send(encode_update(encode_text_insert(editor, clock, text, (cid, pos), (cid, pos + 1))))
                clock += len(text)
            # A step 1 round trip: once its answer arrives, the updates before it were applied.
            probe = asyncio.get_running_loop().create_future()
            def answered(data: bytes, now: float, probe: asyncio.Future[None] = probe) -> None:
                if data[:2] == b"\x00\x01" and not probe.done():
                    probe.set_result(None)

            ws.on_message = answered
            ws.send(encode_sync_step1(b"\x00"))
            async with asyncio.timeout(timeout):
                await probe
            await ws.aclose(timeout)
            done += 1

    await asyncio.gather(*(one(n) for n in names))
    return done


async def hold_connections(
    url: str, documents: int, per_document: int, *, concurrency: int = 200, timeout: float = 30.0,
    prefix: str | None = None,
) -> tuple[list[WSClient], dict[str, Any]]:
    """Open documents x per_document synced connections; return them (still open) and timings."""
    check_loopback(url)
    raise_fd_limit(documents * per_document + 256)
    base = url.rstrip("/")
    prefix = prefix or f"idle-{os.urandom(3).hex()}"
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    joins: list[float] = []

    async def one(i: int) -> WSClient | None:
        async with sem:
            try:
                ws, info = await _connect_synced(f"{base}/{prefix}-{i % documents}", timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(str(exc)[:200])
                return None
            joins.append(info["join_ms"] / 1000)
            return ws

    t0 = time.perf_counter()
    opened = await asyncio.gather(*(one(i) for i in range(documents * per_document)))
    seconds = time.perf_counter() - t0
    clients = [ws for ws in opened if ws is not None]
    return clients, {
        "connections": len(clients),
        "open_and_sync_seconds": round(seconds, 3),
        "join_latency": asdict(LatencyStats.of(joins)),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def hold_documents(
    url: str, sockets: int, per_socket: int, documents: int, *, concurrency: int = 100, timeout: float = 60.0,
    prefix: str | None = None, token: str = "",
) -> tuple[list[WSClient], dict[str, Any]]:
    """The Hocuspocus dialect: open `sockets` sockets carrying `per_socket` documents each (names drawn
    round-robin from `documents`), every one authenticated and synced; return them (still open) and timings."""
    check_loopback(url)
    raise_fd_limit(sockets + 256)
    prefix = prefix or f"hp-{os.urandom(3).hex()}"
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    joins: list[float] = []
    auth_body = b"\x02\x00" + write_var_bytes(token.encode())

    async def one(s: int) -> WSClient | None:
        names = [f"{prefix}-{(s * per_socket + j) % documents}" for j in range(per_socket)]
        keys = [address_prefix(name) for name in names]
        waiting = set(keys)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ws: WSClient | None = None

        def on_message(data: bytes, now: float) -> None:
            for key in keys:  # at most a few dozen: a measurement, not a hot path
                if data.startswith(key):
                    body = data[len(key):len(key) + 2]
                    if body == b"\x00\x01":
                        waiting.discard(key)
                        if not waiting and not done.done():
                            done.set_result(None)
                    elif body == b"\x00\x00" and ws is not None:
                        ws.send(key + STEP2_EMPTY)
                    elif body[:1] == b"\x02" and body[1:2] == bytes((AUTH_PERMISSION_DENIED,)) and not done.done():
                        done.set_exception(ConnectionError(f"permission denied: {data[len(key) + 2:][:100]!r}"))
                    return

        def on_close(code: int, reason: str) -> None:
            if not done.done():
                done.set_exception(ConnectionError(f"closed before sync: {code} {reason}"))

        def bind(proto: WSClient) -> None:
            nonlocal ws
            ws = proto

        async with sem:
            t0 = time.perf_counter()
            try:
                await ws_connect(url, on_message, on_close, timeout, bind=bind)
                assert ws is not None
                for key in keys:
                    ws.send(key + auth_body)
                    ws.send(key + STEP1_EMPTY)
                async with asyncio.timeout(timeout):
                    await done
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(str(exc)[:200])
                if ws is not None:
                    ws.abort()
                return None
            joins.append(time.perf_counter() - t0)
            return ws

    t0 = time.perf_counter()
    opened = await asyncio.gather(*(one(s) for s in range(sockets)))
    seconds = time.perf_counter() - t0
    clients = [ws for ws in opened if ws is not None]
    return clients, {
        "sockets": len(clients),
        "documents_open": len(clients) * per_socket,
        "open_and_sync_seconds": round(seconds, 3),
        "socket_join_latency": asdict(LatencyStats.of(joins)),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def close_all(clients: list[WSClient], timeout: float = 5.0) -> None:
    for ws in clients:
        ws.close()
    waits = [ws.done for ws in clients if not ws.done.done()]
    if waits:
        await asyncio.wait(waits, timeout=timeout)
    for ws in clients:
        if not ws.done.done():
            ws.abort()


