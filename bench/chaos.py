"""Chaos under load: kill -9 the servers while PostgreSQL stops, Redis dies and attackers hold sockets.

    make chaos                                    # python -m bench.chaos, about 3 minutes
    python -m bench.chaos --duration 120 --kills 20 --seed 7 --json

Two `collab-server serve` processes (open mode, the Redis bus on) share a private embedded PostgreSQL
and Redis in a temporary directory: private, because this script stops and kills them. In each of --rooms
rooms one writer per server types a tagged insert every --interval-ms. Half the rooms have *reconnecting*
writers (what the npm provider does: the same Doc reconnects and the sync exchange sends whatever the
server lacks, edits typed offline included); the other half have *forgetful* writers (a fresh Doc after every
reconnect), so what a crash lost stays lost and can be counted: the server's own loss window.

The timeline, in fractions of --duration: --kills kill -9 of a random live server at random moments, each
restarted at once on its port; at 0.25 PostgreSQL stops (immediate mode, as in a crash) for --pg-outage
seconds; at 0.5 Redis is killed (SIGKILL) and restarted 5 s later; at 0.75 all at once: PostgreSQL stopped,
Redis killed and a server killed in the same instant. All along each live server has --slowloris sockets
sending one header byte a second, and one WebSocket client that never reads a byte.

Printed: updates sent vs stored for each kind of writer, the worst loss window (the age at the kill of the
oldest lost edit, with PostgreSQL up and during an outage apart), the servers' memory high-water mark,
recovery times (kill → serving, kill → every writer synced again, PostgreSQL / Redis back → /readyz green),
how long the attackers' sockets lived, and the load generator's own CPU and schedule lag: a run where it
fell behind its schedule is marked invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pycrdt import Doc, Text
from websockets.frames import Frame, Opcode

from bench.crash_window import Server, prepare_database
from collab_server.client import YClient
from collab_server.client.tasks import first_of
from collab_server.core.protocol import encode_sync_step1
from collab_server.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from collab_server.storage import db as dbmod
from collab_server.storage.postgres import open_document_id
from collab_server.storage.ydoc import state_of

TAG = re.compile(r"<\w+\.\d+>")
VALID_LAG_P99_S = 0.020  # a load generator later than this on its schedule measures itself
SERVER_ENV = {
    "COLLAB_AUTH": "off",
    "COLLAB_BUS": "on",
    "COLLAB_LOG_LEVEL": "warning",
    # A client that never reads is cut by the ping timeout; 5 + 5 s instead of 10 + 20 s so that it happens
    # between two kills of the same server. Everything else is the default.
    "COLLAB_PING_INTERVAL": "5",
    "COLLAB_PING_TIMEOUT": "5",
}


def now() -> float:
    return time.monotonic()


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Node:
    """One server process and its incarnations (each restart after a kill is a new one)."""

    name: str
    server: Server
    incarnation: int = 0
    up: bool = False
    ended: dict[int, float] = field(default_factory=dict)  # incarnation -> when it was killed
    restarts: list[tuple[float, float]] = field(default_factory=list)  # (killed at, serving again at)
    failed_starts: int = 0
    rss_max: int = 0

    @property
    def ws_base(self) -> str:
        return self.server.ws_base

    async def start(self, patience: float = 120) -> None:
        """Start, retrying while it cannot (it needs PostgreSQL to migrate before it listens)."""
        deadline = now() + patience
        while True:
            try:
                await asyncio.to_thread(self.server.start, 30)
                break
            except (RuntimeError, TimeoutError):
                self.server.kill()
                self.failed_starts += 1
                if now() > deadline:
                    raise
                await asyncio.sleep(0.5)
        self.incarnation += 1
        self.up = True

    def kill(self) -> float:
        assert self.server.proc is not None
        at = now()
        self.up = False
        self.server.proc.kill()  # reaped by restart_after_kill, off the loop
        self.ended[self.incarnation] = at
        return at

    async def restart_after_kill(self, killed_at: float) -> None:
        assert self.server.proc is not None
        await asyncio.to_thread(self.server.proc.wait, 10)
        await self.start()
        self.restarts.append((killed_at, now()))

    def pid(self) -> int | None:
        proc = self.server.proc
        return proc.pid if proc is not None and proc.poll() is None else None


@dataclass
class Writer:
    name: str
    room: str
    node: Node
    resync: bool
    interval: float
    client: YClient | None = None
    incarnation: int = 0
    sent: dict[str, tuple[float, int]] = field(default_factory=dict)  # tag -> (when, incarnation; 0 = offline)
    lags: list[float] = field(default_factory=list)
    synced_at: list[float] = field(default_factory=list)
    connect_errors: dict[str, int] = field(default_factory=dict)

    def live(self) -> bool:
        c = self.client
        return c is not None and c.synced.is_set() and not c.closed.is_set()

    async def keep_connected(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            client = self.client
            if client is not None and not client.closed.is_set():
                await first_of(client.closed.wait(), stop.wait())
                continue
            if not self.node.up:
                await asyncio.sleep(0.05)
                continue
            if client is None or not self.resync:
                client = YClient(f"{self.node.ws_base}/{self.room}")  # a forgetful writer: a fresh Doc
                if self.resync:
                    self.client = client
            try:
                await client.connect(timeout=5)
            except Exception as exc:  # whatever a dying server makes the handshake raise: try again
                kind = type(exc).__name__
                self.connect_errors[kind] = self.connect_errors.get(kind, 0) + 1
                if client.ws is not None and not client.closed.is_set():
                    client.abort()  # open but never synced: drop it and try again
                    await client.wait_closed()
                await asyncio.sleep(0.1)
                continue
            self.client = client
            self.incarnation = self.node.incarnation
            self.synced_at.append(now())

    async def type(self, stop: asyncio.Event) -> None:
        start, i = now(), 0
        while not stop.is_set():
            due = start + i * self.interval
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            at = now()
            self.lags.append(at - due)
            i += 1
            client, live = self.client, self.live()
            if client is None or not (live or self.resync):
                continue  # a forgetful writer types only while connected
            tag = f"<{self.name}.{i}>"
            text = client.doc.get("content", type=Text)
            text.insert(len(text), tag)
            self.sent[tag] = (at, self.incarnation if live else 0)

    def tags(self) -> set[str]:
        if self.client is None:
            return set()
        return set(TAG.findall(str(self.client.doc.get("content", type=Text))))


@dataclass
class AttackStats:
    closed_after: list[float] = field(default_factory=list)  # seconds the server let the socket live
    answers: dict[str, int] = field(default_factory=dict)  # first line of the server's answer -> count
    ended_by_kill: int = 0
    refused: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "closed_by_server": len(self.closed_after),
            "lived_s_p50": round(pct(self.closed_after, 0.5), 2),
            "lived_s_max": round(max(self.closed_after, default=0.0), 2),
            "ended_by_kill": self.ended_by_kill,
            "refused": self.refused,
            "answers": self.answers,
        }


def killed_since(node: Node, incarnation: int) -> bool:
    return incarnation in node.ended or node.incarnation != incarnation


async def slowloris(node: Node, sockets: int, stats: AttackStats, stop: asyncio.Event) -> None:
    """Keep `sockets` connections sending one byte of a never-ending header a second."""

    async def one() -> None:
        incarnation, opened = node.incarnation, now()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.server.port)
        except OSError:
            return

        async def drip() -> None:
            with contextlib.suppress(OSError):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: chaos\r\nX-Slow: ")
                while True:
                    await asyncio.sleep(1)
                    writer.write(b"x")
                    await writer.drain()

        dripper = asyncio.create_task(drip())
        answer = b""
        try:
            while chunk := await reader.read(4096):
                answer += chunk
        except OSError:
            pass
        finally:
            dripper.cancel()
            writer.close()
        if killed_since(node, incarnation):
            stats.ended_by_kill += 1
        else:
            stats.closed_after.append(now() - opened)
            line = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed without an answer)"
            stats.answers[line] = stats.answers.get(line, 0) + 1

    while not stop.is_set():
        if not node.up:
            await asyncio.sleep(0.1)
            continue
        await first_of(asyncio.gather(*(one() for _ in range(sockets))), stop.wait())


def holds(pid: int, server_port: int, client_port: int) -> bool:
    """Does the server process still hold its end of our socket open?"""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        c.laddr.port == server_port and c.raddr and c.raddr.port == client_port and c.status == "ESTABLISHED"
        for c in conns
    )


async def never_reader(node: Node, room: str, stats: AttackStats, stop: asyncio.Event) -> None:
    """A WebSocket client that completes the handshake, asks for the document and never reads again."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        pid = node.pid()
        if not node.up or pid is None:
            await asyncio.sleep(0.1)
            continue
        incarnation = node.incarnation
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", node.server.port))
            key = base64.b64encode(os.urandom(16)).decode()
            await loop.sock_sendall(sock, (
                f"GET /ws/{room} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode())
            head = b""
            while b"\r\n\r\n" not in head:  # the handshake byte by byte: not one byte more
                byte = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
                if not byte:
                    break
                head += byte
            if not head.startswith(b"HTTP/1.1 101"):
                stats.refused += 1
                await asyncio.sleep(1)
                continue
            step1 = Frame(Opcode.BINARY, encode_sync_step1(Doc().get_state()))
            await loop.sock_sendall(sock, step1.serialize(mask=True, extensions=[]))
            opened, client_port = now(), sock.getsockname()[1]
            while not stop.is_set():
                await asyncio.sleep(0.5)
                if killed_since(node, incarnation):
                    stats.ended_by_kill += 1
                    break
                if not await asyncio.to_thread(holds, pid, node.server.port, client_port):
                    stats.closed_after.append(now() - opened)
                    break
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)
        finally:
            sock.close()


@dataclass
class Sample:
    at: float
    node: str
    postgres: bool
    redis: bool


def readyz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return None
    return body


async def monitor(nodes: list[Node], samples: list[Sample], stop: asyncio.Event) -> None:
    """Every 0.25 s: each server's /readyz checks and its resident memory."""
    while not stop.is_set():
        for node in nodes:
            pid = node.pid()
            if pid is None or not node.up:
                continue
            with contextlib.suppress(psutil.Error):
                node.rss_max = max(node.rss_max, psutil.Process(pid).memory_info().rss)
            body = await asyncio.to_thread(readyz, node.server.port)
            if body is not None:
                checks = body.get("checks", {})
                samples.append(Sample(now(), node.name, checks.get("postgres") == "ok", checks.get("redis") == "ok"))
        await asyncio.sleep(0.25)


def green_after(
    samples: list[Sample], nodes: list[Node], since: float, check: Callable[[Sample], bool]
) -> float | None:
    """Seconds from `since` until every server's latest /readyz sample passes `check`."""
    latest: dict[str, bool] = {}
    for s in samples:
        if s.at < since:
            continue
        latest[s.node] = check(s)
        if len(latest) == len(nodes) and all(latest.values()):
            return s.at - since
    return None


@dataclass
class Chaos:
    args: argparse.Namespace
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    nodes: list[Node]
    writers: list[Writer] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    kills: list[tuple[float, Node, bool]] = field(default_factory=list)  # (when, which, PostgreSQL down)
    pg_down: list[tuple[float, float]] = field(default_factory=list)
    pg_back: list[float] = field(default_factory=list)
    redis_back: list[float] = field(default_factory=list)
    restarts: list[asyncio.Task[None]] = field(default_factory=list)
    t0: float = 0.0

    def log(self, text: str) -> None:
        at = now() - self.t0
        self.events.append((at, text))
        print(f"{at:7.2f} s  {text}", flush=True)

    def pg_is_down(self) -> bool:
        return bool(self.pg_down) and self.pg_down[-1][1] == 0.0

    def kill_one(self, rng: random.Random) -> None:
        live = [n for n in self.nodes if n.up]
        if not live:
            self.log("kill skipped: no server is up")
            return
        node = rng.choice(live)
        at = node.kill()
        self.kills.append((at, node, self.pg_is_down()))
        self.log(f"kill -9 {node.name} (incarnation {node.incarnation}, kill {len(self.kills)})")
        self.restarts.append(asyncio.create_task(node.restart_after_kill(at)))

    async def stop_pg(self) -> None:
        self.pg_down.append((now(), 0.0))
        await asyncio.to_thread(self.pg.stop, "immediate")
        self.log("PostgreSQL stopped (immediate)")

    async def start_pg(self) -> None:
        await asyncio.to_thread(self.pg.restart_same_port)
        self.pg_down[-1] = (self.pg_down[-1][0], now())
        self.pg_back.append(now())
        self.log("PostgreSQL back")

    async def start_redis(self) -> None:
        await asyncio.to_thread(self.redis.restart_same_port)
        self.redis_back.append(now())
        self.log("Redis back")

    async def faults(self, rng: random.Random) -> None:
        d, a = self.args.duration, self.args
        plan: list[tuple[float, str]] = [(rng.uniform(0.04, 0.96) * d, "kill") for _ in range(a.kills - 1)]
        plan += [
            (0.25 * d, "pg_stop"), (0.25 * d + a.pg_outage, "pg_start"),
            (0.5 * d, "redis_kill"), (0.5 * d + 5, "redis_start"),
            (0.75 * d, "all"), (0.75 * d + 5, "redis_start"), (0.75 * d + a.pg_outage, "pg_start"),
        ]
        for at, what in sorted(plan):
            await asyncio.sleep(max(0.0, self.t0 + at - now()))
            if what == "kill":
                self.kill_one(rng)
            elif what == "pg_stop":
                await self.stop_pg()
            elif what == "pg_start":
                await self.start_pg()
            elif what == "redis_kill":
                await asyncio.to_thread(self.redis.stop, True)
                self.log("Redis killed (SIGKILL)")
            elif what == "redis_start":
                await self.start_redis()
            else:
                self.kill_one(rng)
                await asyncio.to_thread(self.redis.stop, True)
                await self.stop_pg()
                self.log("all at once: Redis killed, a server killed, PostgreSQL stopped")

    async def watch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = now()
            await asyncio.sleep(0.01)
            if now() - before > 0.1:
                self.log(f"the load generator stalled {now() - before:.3f} s")

    async def stored(self) -> dict[str, set[str]]:
        conn = await dbmod.connect(self.pg.url)
        try:
            out: dict[str, set[str]] = {}
            for room in {w.room for w in self.writers}:
                document_id = open_document_id(room)
                state = await conn.fetchval("SELECT yjs_state FROM documents WHERE id = $1", document_id)
                rows = await conn.fetch(
                    "SELECT payload FROM document_updates WHERE document_id = $1 ORDER BY seq", document_id
                )
                doc = state_of(state, [r["payload"] for r in rows])
                out[room] = set(TAG.findall(str(doc.get("content", type=Text))))
            return out
        finally:
            await conn.close()

    async def settle(self, timeout: float = 90) -> tuple[dict[str, set[str]], float]:
        """After the load: every reconnecting writer synced and equal to storage, storage holding all they
        typed, and nothing more arriving for a second (the last commits of the forgetful writers' rooms)."""
        started = now()
        want: dict[str, set[str]] = {w.room: set() for w in self.writers}
        for w in self.writers:
            if w.resync:
                want[w.room] |= set(w.sent)
        stored: dict[str, set[str]] = {}
        while now() - started < timeout:
            if all(w.live() for w in self.writers if w.resync):
                before = stored
                stored = await self.stored()
                if (stored == before and all(want[room] <= stored[room] for room in want)
                        and all(w.tags() == stored[w.room] for w in self.writers if w.resync)):
                    break
            await asyncio.sleep(1.0)
        else:
            stored = await self.stored()
        return stored, now() - started

    async def run(self) -> dict[str, Any]:
        a = self.args
        seed = a.seed if a.seed is not None else random.randrange(1 << 30)
        rng = random.Random(seed)
        for node in self.nodes:
            await node.start()
        interval = a.interval_ms / 1000
        for r in range(a.rooms):
            resync = r < (a.rooms + 1) // 2
            room = f"chaos-{'resync' if resync else 'forgetful'}-{r}"
            for node in self.nodes:
                self.writers.append(Writer(f"w{r}{node.name}", room, node, resync, interval))
        stop_typing, stop_all = asyncio.Event(), asyncio.Event()
        samples: list[Sample] = []
        slow, never = AttackStats(), AttackStats()
        cpu0, self.t0 = psutil.Process().cpu_times(), now()
        print(f"seed {seed}; {len(self.writers)} writers in {a.rooms} rooms, one insert each every "
              f"{a.interval_ms:g} ms ({len(self.writers) / interval:,.0f} updates/s); {a.kills} kills over "
              f"{a.duration:g} s; PostgreSQL outages of {a.pg_outage:g} s", flush=True)
        background = [asyncio.create_task(w.keep_connected(stop_all)) for w in self.writers]
        background += [asyncio.create_task(monitor(self.nodes, samples, stop_all))]
        background += [asyncio.create_task(self.watch_loop(stop_all))]
        background += [asyncio.create_task(slowloris(n, a.slowloris, slow, stop_all)) for n in self.nodes]
        background += [asyncio.create_task(never_reader(n, self.writers[0].room, never, stop_all))
                       for n in self.nodes]
        typists = [asyncio.create_task(w.type(stop_typing)) for w in self.writers]
        await self.faults(rng)
        await asyncio.sleep(max(0.0, self.t0 + a.duration - now()))
        stop_typing.set()
        await asyncio.gather(*typists)
        loadgen_s = now() - self.t0
        cpu1 = psutil.Process().cpu_times()
        self.log("load stopped; waiting for every server, then for storage to hold every edit")
        await asyncio.gather(*self.restarts)
        stored, settle_s = await self.settle()
        self.log(f"settled in {settle_s:.1f} s")
        stop_all.set()
        await asyncio.gather(*background, return_exceptions=True)
        for w in self.writers:
            if w.client is not None:
                await w.client.close()
        return self.report(seed, stored, settle_s, samples, slow, never,
                           (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / loadgen_s)

    def report(self, seed: int, stored: dict[str, set[str]], settle_s: float, samples: list[Sample],
               slow: AttackStats, never: AttackStats, loadgen_cpu: float) -> dict[str, Any]:
        kinds: dict[str, dict[str, int]] = {"reconnecting": {}, "forgetful": {}}
        windows_up: list[float] = []
        windows_down: list[float] = []
        in_flight = lost_without_kill = 0
        for w in self.writers:
            kind = kinds["reconnecting" if w.resync else "forgetful"]
            lost = [t for t in w.sent if t not in stored[w.room]]
            kind["sent"] = kind.get("sent", 0) + len(w.sent)
            kind["stored"] = kind.get("stored", 0) + len(w.sent) - len(lost)
            kind["lost"] = kind.get("lost", 0) + len(lost)
            for tag in lost:
                sent_at, incarnation = w.sent[tag]
                killed_at = w.node.ended.get(incarnation)
                if killed_at is None:
                    lost_without_kill += 1
                elif killed_at < sent_at:
                    in_flight += 1  # typed after the kill, before the writer noticed its socket was dead
                elif any(start <= killed_at and (end == 0.0 or killed_at <= end) for start, end in self.pg_down):
                    windows_down.append(killed_at - sent_at)
                else:
                    windows_up.append(killed_at - sent_at)
        converged = all(w.tags() == stored[w.room] for w in self.writers if w.resync)
        divergent = [
            {"writer": w.name, "live": w.live(), "missing": len(stored[w.room] - w.tags()),
             "extra": len(w.tags() - stored[w.room]), "example": sorted(stored[w.room] ^ w.tags())[:3]}
            for w in self.writers if w.resync and w.tags() != stored[w.room]
        ]
        recovery = []
        for killed_at, node, _pg in self.kills:
            mine = [w for w in self.writers if w.node is node]
            back = [min((s for s in w.synced_at if s > killed_at), default=None) for w in mine]
            if all(b is not None for b in back):
                recovery.append(max(b for b in back if b is not None) - killed_at)
        serving = [b - k for n in self.nodes for k, b in n.restarts]
        pg_green = [g for t in self.pg_back if (g := green_after(samples, self.nodes, t, lambda s: s.postgres))
                    is not None]
        redis_green = [g for t in self.redis_back if (g := green_after(samples, self.nodes, t, lambda s: s.redis))
                       is not None]
        lags = [x for w in self.writers for x in w.lags]
        lag_p99 = pct(lags, 0.99)
        return {
            "seed": seed,
            "kills": len(self.kills),
            "kills_during_postgres_outage": sum(1 for _, _, down in self.kills if down),
            "updates": kinds,
            "lost_after_kill_older_than_the_kill": {"postgres_up": len(windows_up), "postgres_down": len(windows_down)},
            "worst_loss_window_ms": {
                "postgres_up": round(max(windows_up, default=0.0) * 1000, 1),
                "postgres_down": round(max(windows_down, default=0.0) * 1000, 1),
            },
            "lost_in_flight_to_a_dead_server": in_flight,
            "lost_without_a_kill": lost_without_kill,
            "reconnecting_writers_converged_with_storage": converged,
            "divergent_writers": divergent,
            "reconnect_errors": {k: sum(w.connect_errors.get(k, 0) for w in self.writers)
                                 for k in sorted({k for w in self.writers for k in w.connect_errors})},
            "settle_s": round(settle_s, 2),
            "memory_high_water_mib": {n.name: round(n.rss_max / 2**20, 1) for n in self.nodes},
            "kill_to_serving_s": {"p50": round(pct(serving, 0.5), 2), "max": round(max(serving, default=0), 2)},
            "kill_to_all_writers_synced_s": {
                "p50": round(pct(recovery, 0.5), 2), "max": round(max(recovery, default=0), 2),
                "measured": len(recovery),
            },
            "failed_starts": sum(n.failed_starts for n in self.nodes),
            "postgres_back_to_ready_s": [round(x, 2) for x in pg_green],
            "redis_back_to_ready_s": [round(x, 2) for x in redis_green],
            "slowloris": slow.summary(),
            "never_reading_client": never.summary(),
            "load_generator": {
                "cpu": round(loadgen_cpu, 3),
                "schedule_lag_ms_p50": round(pct(lags, 0.5) * 1000, 2),
                "schedule_lag_ms_p99": round(lag_p99 * 1000, 2),
                "schedule_lag_ms_max": round(max(lags, default=0.0) * 1000, 1),
                "valid": lag_p99 <= VALID_LAG_P99_S,
            },
        }


def print_report(r: dict[str, Any]) -> None:
    u = r["updates"]
    print(f"\nchaos, seed {r['seed']}: {r['kills']} kill -9 ({r['kills_during_postgres_outage']} while PostgreSQL "
          f"was down), 2 PostgreSQL outages, 2 Redis kills")
    for kind, c in u.items():
        print(f"  {kind:12s} writers: sent {c.get('sent', 0):6d}, stored {c.get('stored', 0):6d}, "
              f"lost {c.get('lost', 0)}")
    w = r["worst_loss_window_ms"]
    print(f"  worst loss window (forgetful writers): {w['postgres_up']} ms with PostgreSQL up, "
          f"{w['postgres_down']} ms when killed during an outage; {r['lost_in_flight_to_a_dead_server']} typed "
          f"after a kill before the writer noticed; {r['lost_without_a_kill']} lost without a kill")
    print(f"  reconnecting writers converged with storage: {r['reconnecting_writers_converged_with_storage']} "
          f"(settled {r['settle_s']} s after the load stopped)"
          + "".join(f"\n    {d}" for d in r["divergent_writers"]))
    print(f"  memory high-water: {r['memory_high_water_mib']} MiB")
    s, k = r["kill_to_serving_s"], r["kill_to_all_writers_synced_s"]
    print(f"  recovery: kill → serving p50 {s['p50']} s, max {s['max']} s ({r['failed_starts']} failed starts); "
          f"kill → all its writers synced p50 {k['p50']} s, max {k['max']} s; PostgreSQL back → /readyz green "
          f"{r['postgres_back_to_ready_s']} s; Redis back → green {r['redis_back_to_ready_s']} s")
    for name in ("slowloris", "never_reading_client"):
        a = r[name]
        print(f"  {name}: {a['closed_by_server']} closed by the server after p50 {a['lived_s_p50']} s, max "
              f"{a['lived_s_max']} s; {a['ended_by_kill']} ended by a kill; answers {a['answers'] or '-'}")
    g = r["load_generator"]
    print(f"  load generator: CPU {g['cpu']:.0%} of a core, schedule lag p50 {g['schedule_lag_ms_p50']} ms, "
          f"p99 {g['schedule_lag_ms_p99']} ms, max {g['schedule_lag_ms_max']} ms: "
          + ("valid" if g["valid"] else f"INVALID (p99 over {VALID_LAG_P99_S * 1000:g} ms: it measured itself)"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (the faults are spread over it)")
    p.add_argument("--kills", type=int, default=20, help="kill -9 of a server, the all-at-once one included")
    p.add_argument("--rooms", type=int, default=8, help="rooms, half with reconnecting and half forgetful writers")
    p.add_argument("--interval-ms", type=float, default=25.0, help="time between two inserts of one writer")
    p.add_argument("--pg-outage", type=float, default=10.0, help="seconds PostgreSQL stays stopped, twice")
    p.add_argument("--slowloris", type=int, default=20, help="slow-loris sockets held against each server")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)
    if not 1 <= args.kills <= 200:
        p.error("--kills must be between 1 and 200")
    if not 20 <= args.duration <= 3600 or not 1 <= args.pg_outage <= args.duration / 5:
        p.error("need 20 <= --duration <= 3600 and 1 <= --pg-outage <= duration / 5")
    if not 2 <= args.rooms <= 100 or not 1 <= args.interval_ms <= 1000:
        p.error("need 2 <= --rooms <= 100 and 1 <= --interval-ms <= 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collab-chaos-") as tmp:
        data = Path(tmp)
        pg = EmbeddedPostgres(data / "pg").start()
        redis = EmbeddedRedis(data / "redis").start()
        nodes: list[Node] = []
        try:
            asyncio.run(prepare_database(pg.url))
            env = {**os.environ, **SERVER_ENV, "DATABASE_URL": pg.url, "REDIS_URL": redis.url,
                   "COLLAB_DATA_DIR": str(data)}
            nodes = [Node(name, Server(env, data / f"server-{name}.log", keep_port=True, ready_path="/healthz"))
                     for name in ("a", "b")]
            result = asyncio.run(Chaos(args, pg, redis, nodes).run())
        except BaseException:
            for node in nodes:
                if node.server.log_path.exists():
                    print(node.server.log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            for node in nodes:
                node.server.terminate()
            redis.stop()
            pg.stop()
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["lost_without_a_kill"] == 0 and result["updates"]["reconnecting"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
