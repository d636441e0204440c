"""Measure the crash-loss window: how far before a `kill -9` can an edit the server received be lost?

    python -m bench.crash_window --kills 20

Starts `collab-server serve` as a child process against PostgreSQL (embedded under a temporary
data directory by default, or DATABASE_URL / --database-url), has one client type continuously
(one tagged insert every --interval-ms), kills the server with SIGKILL at a random moment, restarts
it, and reads what PostgreSQL holds (documents.yjs_state plus the write-ahead rows). For each kill
it prints how many inserts were lost and the window: the age, in ms before the kill, of the oldest
lost insert (0 if none was lost). Everything is on 127.0.0.1; run time and kill count are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycrdt import Text

from collab_server.client import YClient
from collab_server.config import Settings
from collab_server.runtime.services import Services, start_services
from collab_server.storage import db as dbmod
from collab_server.storage.migrate import migrate
from collab_server.storage.postgres import open_document_id
from collab_server.storage.ydoc import state_of

ROOT = Path(__file__).resolve().parent.parent
MAX_KILLS = 200
TAG = re.compile(r"k\d+\.\d+;")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    env: dict[str, str]
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    keep_port: bool = False  # restart on the same port, so clients reconnect to the same URL
    ready_path: str = "/readyz"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 60) -> None:
        if not (self.keep_port and self.port):
            self.port = free_port()
        env = {**self.env, "COLLAB_PORT": str(self.port), "COLLAB_HOST": "127.0.0.1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collab_server", "serve"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class KillResult:
    sent: int
    lost: int
    window_ms: float  # age at the kill of the oldest lost insert; 0 if none was lost
    newest_lost_ms: float  # age at the kill of the newest lost insert; 0 if none was lost
    lost_beyond_margin: int  # lost inserts sent more than --margin-ms before the kill


@dataclass
class Bench:
    args: argparse.Namespace
    database_url: str
    server: Server
    room: str = field(default_factory=lambda: f"crash-window-{uuid.uuid4().hex[:8]}")

    async def stored_tags(self) -> set[str]:
        conn = await dbmod.connect(self.database_url)
        try:
            document_id = open_document_id(self.room)
            state = await conn.fetchval("SELECT yjs_state FROM documents WHERE id = $1", document_id)
            rows = await conn.fetch(
                "SELECT payload FROM document_updates WHERE document_id = $1 ORDER BY seq", document_id
            )
        finally:
            await conn.close()
        doc = state_of(state, [r["payload"] for r in rows])
        return set(TAG.findall(str(doc.get("content", type=Text))))

    async def one_kill(self, n: int, rng: random.Random) -> KillResult:
        # A fresh Doc every time: reconnecting the old one would re-send what the crash lost.
        client = await YClient(f"{self.server.ws_base}/{self.room}").connect()
        await asyncio.sleep(0.3)
        text = client.doc.get("content", type=Text)
        sent: dict[str, float] = {}
        stop = asyncio.Event()

        async def type_() -> None:
            i = 0
            while not stop.is_set() and not client.closed.is_set():
                tag = f"k{n}.{i};"
                text.insert(len(text), tag)
                sent[tag] = time.monotonic()
                i += 1
                await asyncio.sleep(self.args.interval_ms / 1000)

        typist = asyncio.create_task(type_())
        await asyncio.sleep(rng.uniform(self.args.min_run, self.args.max_run))
        killed_at = time.monotonic()
        assert self.server.proc is not None
        self.server.proc.kill()  # SIGKILL now; reaped below
        stop.set()
        await typist
        self.server.kill()
        await client.wait_closed()

        await asyncio.to_thread(self.server.start)
        stored = await self.stored_tags()
        lost = [t for t in sent if t not in stored]
        ages = [(killed_at - sent[t]) * 1000 for t in lost]
        margin = self.args.margin_ms
        return KillResult(
            sent=len(sent),
            lost=len(lost),
            window_ms=round(max(ages, default=0.0), 2),
            newest_lost_ms=round(min(ages, default=0.0), 2),
            lost_beyond_margin=sum(1 for a in ages if a > margin),
        )

    async def run(self) -> list[KillResult]:
        seed = self.args.seed if self.args.seed is not None else random.randrange(1 << 30)
        rng = random.Random(seed)
        print(f"seed {seed}; room {self.room}; commit window {self.args.commit_window_ms} ms; "
              f"typing every {self.args.interval_ms} ms; bus {self.args.bus or 'server default'}", flush=True)
        await asyncio.to_thread(self.server.start)
        results: list[KillResult] = []
        deadline = time.monotonic() + self.args.time_limit
        try:
            for n in range(self.args.kills):
                if time.monotonic() > deadline:
                    print(f"time limit of {self.args.time_limit}s reached after {n} kills", flush=True)
                    break
                result = await self.one_kill(n, rng)
                results.append(result)
                print(
                    f"kill {n + 1:3d}: sent {result.sent:4d}, lost {result.lost:3d}, "
                    f"window {result.window_ms:7.2f} ms (newest lost {result.newest_lost_ms:.2f} ms before the kill)"
                    + (f", {result.lost_beyond_margin} lost older than {self.args.margin_ms} ms"
                       if result.lost_beyond_margin else ""),
                    flush=True,
                )
        finally:
            await asyncio.to_thread(self.server.terminate)
        return results


def summarize(results: list[KillResult], margin_ms: float) -> dict[str, Any]:
    windows = [r.window_ms for r in results]
    return {
        "kills": len(results),
        "window_ms_max": max(windows, default=0.0),
        "window_ms_p50": round(statistics.median(windows), 2) if windows else 0.0,
        "lost_updates": sum(r.lost for r in results),
        "sent_updates": sum(r.sent for r in results),
        "kills_with_loss": sum(1 for r in results if r.lost),
        f"lost_older_than_{margin_ms:g}ms": sum(r.lost_beyond_margin for r in results),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.crash_window", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help=f"number of kill -9 / restart cycles (1..{MAX_KILLS})")
    p.add_argument("--interval-ms", type=float, default=2.0, help="time between two inserts of the typist")
    p.add_argument("--commit-window-ms", type=float, default=5.0, help="COLLAB_COMMIT_WINDOW_MS for the server")
    p.add_argument("--min-run", type=float, default=0.3, help="least seconds of typing before a kill")
    p.add_argument("--max-run", type=float, default=1.0, help="most seconds of typing before a kill")
    p.add_argument("--margin-ms", type=float, default=50.0, help="report lost inserts older than this")
    p.add_argument("--bus", choices=["on", "off"], default=None,
                   help="COLLAB_BUS for the server (default: the server's default)")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                   help="PostgreSQL to use (default: DATABASE_URL, else an embedded one in a temporary directory)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                   help="Redis to use (default: REDIS_URL, else an embedded one)")
    p.add_argument("--data-dir", type=Path, default=None, help="where embedded services live (default: temporary)")
    p.add_argument("--pg-fast", action="store_true", help="embedded PostgreSQL with fsync=off (not the real cost)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=600.0, help="stop starting new kills after this many seconds")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    args = p.parse_args(argv)
    if not 1 <= args.kills <= MAX_KILLS:
        p.error(f"--kills must be between 1 and {MAX_KILLS}")
    if not 0 < args.min_run <= args.max_run <= 10:
        p.error("need 0 < --min-run <= --max-run <= 10")
    if not 0.1 <= args.interval_ms <= 1000:
        p.error("--interval-ms must be between 0.1 and 1000")
    return args


async def prepare_database(url: str) -> None:
    conn = await dbmod.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collab-crash-window-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        settings = Settings.from_env(
            {}, data_dir=data_dir, database_url=args.database_url, redis_url=args.redis_url
        )
        services: Services = start_services(settings, {"fsync": "off"} if args.pg_fast else None)
        try:
            for note in services.notes:
                print(note, flush=True)
            asyncio.run(prepare_database(services.database_url))
            env = {
                **os.environ,
                "DATABASE_URL": services.database_url,
                "REDIS_URL": services.redis_url,
                "COLLAB_AUTH": "off",
                "COLLAB_DATA_DIR": str(data_dir),
                "COLLAB_COMMIT_WINDOW_MS": str(args.commit_window_ms),
                "COLLAB_LOG_LEVEL": "warning",
            }
            if args.bus:
                env["COLLAB_BUS"] = args.bus
            server = Server(env, Path(tmp) / "server.log")
            try:
                results = asyncio.run(Bench(args, services.database_url, server).run())
            except BaseException:
                log = Path(tmp) / "server.log"
                if log.exists():
                    print(log.read_text()[-3000:], file=sys.stderr)
                raise
        finally:
            services.stop()
    summary = summarize(results, args.margin_ms)
    print(
        f"crash-loss window over {summary['kills']} kills: max {summary['window_ms_max']:.2f} ms, "
        f"p50 {summary['window_ms_p50']:.2f} ms; lost {summary['lost_updates']} of {summary['sent_updates']} "
        f"updates ({summary['kills_with_loss']} kills lost something; "
        f"{summary[f'lost_older_than_{args.margin_ms:g}ms']} lost older than {args.margin_ms:g} ms)"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
