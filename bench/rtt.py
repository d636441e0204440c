"""Round trip of one small update between two clients on loopback (median of N).

    python -m bench.rtt [--url ws://127.0.0.1:8080/ws] [--n 1000]

Without --url it starts `collab-server serve` (open mode, embedded services in a temp dir, or
DATABASE_URL / REDIS_URL when both are set).
A sends an insert; B receives it and answers with its own insert; A times the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from pycrdt import Text

from bench.servers import our_server
from collab_server.client import YClient


async def measure(url: str, n: int) -> list[float]:
    a = await YClient(f"{url}/rtt-{os.getpid()}").connect()
    b = await YClient(f"{url}/rtt-{os.getpid()}").connect()
    ta, tb = a.doc.get("content", type=Text), b.doc.get("content", type=Text)
    got_a, got_b = asyncio.Event(), asyncio.Event()
    a.on_update = lambda _u: got_a.set()
    b.on_update = lambda _u: got_b.set()
    samples = []
    for i in range(n + 50):
        got_a.clear()
        got_b.clear()
        started = time.perf_counter()
        ta.insert(len(ta), "a")
        await got_b.wait()
        tb.insert(len(tb), "b")
        await got_a.wait()
        if i >= 50:  # warm-up
            samples.append((time.perf_counter() - started) * 1000)
    await a.close()
    await b.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    if args.url:
        samples = asyncio.run(measure(args.url, args.n))
    else:
        with our_server() as server:
            samples = asyncio.run(measure(server.ws_url, args.n))
    samples.sort()
    print(f"round trip of one small update, {len(samples)} samples: median {statistics.median(samples):.3f} ms, "
          f"p99 {samples[int(len(samples) * 0.99)]:.3f} ms (two hops: A→server→B, B→server→A)")


if __name__ == "__main__":
    main()
