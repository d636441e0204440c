"""Shared fixtures: real PostgreSQL and Redis (embedded unless DATABASE_URL / REDIS_URL are set),
a fresh database per test cloned from a migrated template, and servers on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import settings as hypothesis_settings

from collab_server.config import Settings
from collab_server.context import AppContext
from collab_server.runtime.app import create_app
from collab_server.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from collab_server.runtime.server import CollabServer, bind, uvicorn_config
from collab_server.storage import db as dbmod
from collab_server.storage.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
TEST_PG_OPTIONS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
REDIS_TEST_DB = 9  # on an external Redis, keep out of the way of db 0

# Property tests are reproducible in `make test` (same examples every run, no example database);
# HYPOTHESIS_PROFILE=fuzz searches afresh and longer.
hypothesis_settings.register_profile("default", derandomize=True, database=None)
hypothesis_settings.register_profile("fuzz", max_examples=20_000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class TestServices:
    admin_url: str
    redis_base: str
    pg: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    template: str = ""
    tmp: Path | None = None


@pytest.fixture(scope="session")
def services() -> Iterator[TestServices]:
    tmp = Path(tempfile.mkdtemp(prefix="collab-test-"))
    pg = rd = None
    admin_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not admin_url:
        pg = EmbeddedPostgres(tmp / "pg", extra_options=TEST_PG_OPTIONS).start()
        admin_url = pg.url
    if not redis_url:
        rd = EmbeddedRedis(tmp / "redis", persist=False).start()
        redis_url = rd.url
    parts = urlsplit(redis_url)
    redis_base = urlunsplit(parts._replace(path=f"/{REDIS_TEST_DB}")) if not rd else redis_url
    svc = TestServices(admin_url, redis_base, pg, rd, tmp=tmp)
    try:
        yield svc
    finally:
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(services: TestServices) -> AsyncIterator[str]:
    name = f"collab_tpl_{uuid.uuid4().hex[:10]}"
    admin = await dbmod.connect(services.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await dbmod.connect(with_database(services.admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        services.template = name
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db_url(services: TestServices, template_db: str) -> AsyncIterator[str]:
    """A fresh, fully migrated database for this test only."""
    name = f"collab_t_{uuid.uuid4().hex[:12]}"
    admin = await dbmod.connect(services.admin_url)
    try:
        for attempt in range(20):
            try:
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
                break
            except asyncpg.ObjectInUseError:  # the template is briefly busy
                if attempt == 19:
                    raise
                await asyncio.sleep(0.1)
        yield with_database(services.admin_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await dbmod.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis_url(services: TestServices) -> AsyncIterator[str]:
    client = aioredis.from_url(services.redis_base)
    await client.flushdb()
    await client.aclose()
    yield services.redis_base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    settings: Settings
    db_url: str
    redis_url: str
    port: int = 0
    server: CollabServer | None = None
    task: asyncio.Task[None] | None = None
    app: Any = None

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ctx(self) -> AppContext:
        return self.app.state.ctx  # type: ignore[no-any-return]

    def ws_url(self, document: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.ws_base}/{document}" + (f"?{query}" if query else "")

    async def start(self) -> RunningServer:
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.app = create_app(self.settings, self.db_url, self.redis_url)
        self.server = CollabServer(uvicorn_config(self.app, self.settings))
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        deadline = time.monotonic() + 30
        while not self.server.started:
            if self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self.server is not None and self.task is not None and not self.task.done():
            self.server.should_exit = True
            done, _ = await asyncio.wait({self.task}, timeout=60)
            if not done:  # say where the shutdown hangs: every task's stack, before cancelling it
                stacks = "\n".join(_task_stack(task) for task in asyncio.all_tasks() if not task.done())
                self.task.cancel()
                raise TimeoutError(f"the server did not stop within 60 s; its tasks:\n{stacks}")
            self.task.result()

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.http, timeout=10) as client:
            return await client.get(path, **kw)


def _task_stack(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(limit=12, file=out)
    return out.getvalue()


ServerFactory = Callable[..., Awaitable[RunningServer]]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "auth": "off",
        "room_grace_seconds": 0.5,
        "commit_window_ms": 2.0,
        "jwt_secret": "test-secret-test-secret-test-secret",
        "db_pool_min": 2,  # many servers share the test PostgreSQL's 100 connections
    }
    base.update(overrides)
    return Settings.from_env({}, **base)


test_settings = make_settings  # the name helpers and older tests use
test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
async def make_server(db_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start in-process servers (uvicorn on a real socket) sharing this test's database."""
    running: list[RunningServer] = []

    async def factory(**overrides: Any) -> RunningServer:
        settings = make_settings(tmp_path, **overrides)
        server = await RunningServer(settings, db_url, redis_url).start()
        running.append(server)
        return server

    yield factory
    for server in running:
        await server.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> RunningServer:
    return await make_server()


@dataclass
class ServerProcess:
    """`collab-server serve` in a child process, for crash and restart tests."""

    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServerProcess:
        assert self.log_path is not None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collab_server", "serve", *self.extra_args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.http}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the server and any worker processes it forked."""
        if self.proc and self.proc.poll() is None:
            import psutil

            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.kill()
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)


@pytest.fixture
def spawn_server(db_url: str, redis_url: str, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    procs: list[ServerProcess] = []

    def factory(port: int | None = None, args: tuple[str, ...] = (), **env: str) -> ServerProcess:
        full_env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "COLLAB_PORT": str(port or free_port()),
            "COLLAB_DATA_DIR": str(tmp_path / "data"),
            "COLLAB_AUTH": "off",
            "COLLAB_ROOM_GRACE_SECONDS": "0.5",
            "COLLAB_LOG_LEVEL": "info",
            "COLLAB_DB_POOL_MIN": "2",  # many servers share the test PostgreSQL's 100 connections
            **env,
        }
        proc = ServerProcess(
            full_env, int(full_env["COLLAB_PORT"]), log_path=tmp_path / f"server-{len(procs)}.log",
            extra_args=list(args),
        )
        procs.append(proc)
        return proc.start()

    yield factory
    for proc in procs:
        proc.kill()
    # Every line a server wrote is one JSON object (logs are parsed by machines; a line that is not
    # JSON is a line lost to them). The one exception is not ours: after a kill -9, Python's own
    # multiprocessing resource tracker (a process of its own) warns about the semaphores the killed
    # process could not release.
    for proc in procs:
        assert proc.log_path is not None
        for number, raw in enumerate(proc.log_path.read_bytes().splitlines(), 1):
            if b"multiprocessing/resource_tracker.py" in raw or raw.startswith(b"  warnings.warn("):
                continue
            try:
                assert isinstance(orjson.loads(raw), dict)
            except (orjson.JSONDecodeError, AssertionError):
                pytest.fail(f"{proc.log_path.name} line {number} is not a JSON object: {raw[:300]!r}")
