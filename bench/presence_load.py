"""Redis cost of presence: N connected clients moving their cursors every 100 ms.

    python -m bench.presence_load [--clients 1000] [--seconds 10] [--interval 0.1]

Starts `collab-server serve` (open mode, embedded PostgreSQL/Redis in a temp dir, or DATABASE_URL /
REDIS_URL when both are set), opens N WebSocket connections over 100 documents, sends an awareness
update with a new cursor from every client every --interval seconds, and reports the Redis commands
per second the server caused (INFO commandstats delta over the measuring window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis
import websockets

from bench.servers import our_server
from collab_server.core.awareness import encode_entries
from collab_server.core.protocol import encode_awareness, encode_sync_step1


def total_commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def run_clients(url: str, clients: int, seconds: float, interval: float, measure) -> dict:  # type: ignore[no-untyped-def]
    sockets = []
    sem = asyncio.Semaphore(100)

    async def connect(i: int) -> None:
        async with sem:
            ws = await websockets.connect(f"{url}/presence-{i % 100}", compression=None, ping_interval=None,
                                          max_size=None)
            await ws.send(encode_sync_step1(b"\x00"))
            sockets.append((i, ws))

    await asyncio.gather(*(connect(i) for i in range(clients)))

    async def drain(ws) -> None:  # type: ignore[no-untyped-def]
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.create_task(drain(ws)) for _, ws in sockets]
    clocks = [0] * clients
    start_cmds = None
    started = time.monotonic()
    deadline = started + 2 + seconds  # 2 s warm-up
    tick = 0
    while time.monotonic() < deadline:
        tick += 1
        for i, ws in sockets:
            clocks[i] += 1
            state = json.dumps({"user": {"name": f"u{i}"}, "cursor": {"anchor": tick, "head": tick}}).encode()
            await ws.send(encode_awareness(encode_entries([(10_000 + i, clocks[i], state)])))
        if start_cmds is None and time.monotonic() - started >= 2:
            start_cmds = (measure(), time.monotonic())
        await asyncio.sleep(interval)
    end_cmds = (measure(), time.monotonic())
    for _, ws in sockets:
        ws.transport.abort()
    for task in readers:
        task.cancel()
    assert start_cmds is not None
    rate = (end_cmds[0] - start_cmds[0]) / (end_cmds[1] - start_cmds[1])
    return {"clients": clients, "cursor_interval_s": interval, "awareness_updates_per_s": clients / interval,
            "redis_commands_per_s": round(rate, 1), "per_client_per_s": round(rate / clients, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    with our_server() as server:
        client = redis.Redis.from_url(server.backing.redis_url)
        result = asyncio.run(run_clients(server.ws_url, args.clients, args.seconds, args.interval,
                                         lambda: total_commands(client)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
