"""The servers under test, pinned to one CPU, and what they cost (CPU seconds, RSS).

`OurServer` is `collab-server serve` (open mode, no abuse limits) against PostgreSQL and Redis;
`RefServer` is the y-websocket reference server (`@y/websocket-server`, in memory) under node.
Both are started with `taskset -c <cpu>`; the embedded PostgreSQL and Redis are started pinned
to the same CPU, because they are part of what this server needs to do its work.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_prefix(cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


@contextlib.contextmanager
def affinity(cpu: int | None):  # type: ignore[no-untyped-def]
    """Run the block (and whatever it starts) on `cpu` only, then restore."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """CPU of the process trees, children that have exited included (PostgreSQL's backend of a
    closed connection, reaped by its postmaster): without them a delta could even be negative."""
    total = 0.0
    for pid in pids:
        for proc in _tree(pid):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


@dataclass
class Backing:
    """PostgreSQL and Redis for our server: the given URLs, or embedded ones in a temp dir."""

    cpu: int | None
    database_url: str = ""
    redis_url: str = ""
    tmp: Path | None = None
    pg: Any = None
    redis: Any = None
    notes: list[str] = field(default_factory=list)

    def start(self) -> Backing:
        from collab_server.runtime.embedded import EmbeddedPostgres, EmbeddedRedis

        self.database_url = os.environ.get("DATABASE_URL", "")
        self.redis_url = os.environ.get("REDIS_URL", "")
        if self.database_url and self.redis_url:
            self.notes.append("PostgreSQL and Redis from DATABASE_URL / REDIS_URL (not pinned, not measured)")
            return self
        self.tmp = Path(tempfile.mkdtemp(prefix="collab-bench-"))
        with affinity(self.cpu):
            if not self.database_url:
                # The server's own defaults (fsync on): what `collab-server serve` would start.
                self.pg = EmbeddedPostgres(self.tmp / "pg").start()
                self.database_url = self.pg.url
            if not self.redis_url:
                self.redis = EmbeddedRedis(self.tmp / "redis", persist=False).start()
                self.redis_url = self.redis.url
        return self

    def pids(self) -> list[int]:
        pids = []
        if self.pg is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.append(int((self.pg.data_dir / "postmaster.pid").read_text().splitlines()[0]))
        redis_pid = self.redis.pid if self.redis is not None else None
        if redis_pid is not None:
            pids.append(redis_pid)
        return pids

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop("fast")
        if self.tmp is not None:
            for _ in range(5):  # PostgreSQL may still be removing its files for a moment
                shutil.rmtree(self.tmp, ignore_errors=True)
                if not self.tmp.exists():
                    break
                time.sleep(0.2)


class ServerBase:
    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    port = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def extra_pids(self) -> list[int]:
        return []

    def probe(self) -> dict[str, Any]:
        """Cumulative counters: the server's CPU, its backing services' CPU, its RSS."""
        pid = self.proc.pid if self.proc is not None else 0
        out: dict[str, Any] = {
            "server_cpu_seconds": cpu_seconds(self.pids()),
            "server_rss_bytes": rss_bytes(pid),
        }
        extra = self.extra_pids()
        if extra:
            out["database_cpu_seconds"] = cpu_seconds(extra)
        return out

    def stop(self, timeout: float = 30) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.proc = None
        return proc.returncode


class OurServer(ServerBase):
    name = "collab-server"

    def __init__(self, backing: Backing, cpu: int | None, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.backing = backing
        self.cpu = cpu
        self.log_path = log_dir / "collab-server.log"
        self.env_overrides = env or {}
        self.data_dir = log_dir.parent / "data"  # the local secret and anything else the server keeps

    def start(self, timeout: float = 60) -> OurServer:
        import httpx

        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": self.backing.database_url,
            "REDIS_URL": self.backing.redis_url,
            "COLLAB_PORT": str(self.port),
            "COLLAB_DATA_DIR": str(self.data_dir),
            "COLLAB_AUTH": "off",
            "COLLAB_RATE_MESSAGES_PER_SECOND": "0",
            "COLLAB_RATE_CONNECTIONS_PER_MINUTE": "0",
            "COLLAB_LOG_LEVEL": "warning",
            **self.env_overrides,
        }
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*pin_prefix(self.cpu), sys.executable, "-m", "collab_server", "serve"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collab-server exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"collab-server not ready in {timeout} s: {self.tail()}")

    def extra_pids(self) -> list[int]:
        return self.backing.pids()

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""


class RefServer(ServerBase):
    """A reference server under node, from tests/node (its npm packages pinned there)."""

    name = "y-websocket"
    script = "ref_server.mjs"
    package = "@y/websocket-server"
    route = "/ws"

    def __init__(self, cpu: int | None, log_dir: Path) -> None:
        self.cpu = cpu
        self.log_path = log_dir / f"{self.script.removesuffix('.mjs')}.log"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.route}"

    def start(self, timeout: float = 30) -> RefServer:
        if shutil.which("node") is None:
            raise RuntimeError("node is not installed: cannot run the reference server")
        if not (NODE_DIR / "node_modules" / self.package).exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                           check=True, timeout=600)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*pin_prefix(self.cpu), "node", str(NODE_DIR / self.script), "--host", "127.0.0.1", "--port", "0",
             "--exit-on-stdin-close"],
            cwd=NODE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        )
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline and self.proc.poll() is None:
            chunk = self.proc.stdout.read()
            if chunk:
                line += chunk
                match = re.search(rb"listening (\d+)", line)
                if match:
                    self.port = int(match.group(1))
                    return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} reference server did not start (got {line!r})")

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        return super().stop(timeout)


class HocuspocusServer(RefServer):
    """`@hocuspocus/server` in memory (no extensions): the reference for the Hocuspocus route."""

    name = "hocuspocus"
    script = "hocuspocus_server.mjs"
    package = "@hocuspocus/server"
    route = "/hocuspocus"  # it upgrades any path; ours serves the dialect here


@contextlib.contextmanager
def our_server(cpu: int | None = None, env: dict[str, str] | None = None) -> Iterator[OurServer]:
    """collab-server with its PostgreSQL and Redis, for a script that just needs one running."""
    log_dir = Path(tempfile.mkdtemp(prefix="collab-bench-logs-")) / "logs"
    log_dir.mkdir()
    backing = Backing(cpu).start()
    server = OurServer(backing, cpu, log_dir, env)
    try:
        yield server.start()
    finally:
        server.stop()
        backing.stop()
        shutil.rmtree(log_dir.parent, ignore_errors=True)
