"""Round trip of one small update between two clients on loopback (median of N).

    python -m bench.rtt [--url ws://127.0.0.1:8080/ws] [--n 1000]

Without --url it starts `collab-server serve` (open mode, embedded services in a temp dir).
A sends an insert; B receives it and answers with its own insert; A times the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
from pycrdt import Text

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


def start_server(port: int) -> subprocess.Popen[bytes]:
    data = tempfile.mkdtemp(prefix="collab-bench-")
    env = {**os.environ, "COLLAB_AUTH": "off", "COLLAB_PORT": str(port), "COLLAB_DATA_DIR": data,
           "COLLAB_LOG_LEVEL": "warning", "COLLAB_RATE_MESSAGES_PER_SECOND": "0"}
    env.pop("DATABASE_URL", None) if "BENCH_EXTERNAL" not in os.environ else None
    proc = subprocess.Popen([sys.executable, "-m", "collab_server", "serve"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--port", type=int, default=18181)
    args = parser.parse_args()
    proc = None if args.url else start_server(args.port)
    url = args.url or f"ws://127.0.0.1:{args.port}/ws"
    try:
        samples = asyncio.run(measure(url, args.n))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    samples.sort()
    print(f"round trip of one small update, {len(samples)} samples: median {statistics.median(samples):.3f} ms, "
          f"p99 {samples[int(len(samples) * 0.99)]:.3f} ms (two hops: A→server→B, B→server→A)")


if __name__ == "__main__":
    main()
