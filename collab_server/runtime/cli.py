"""The `collab-server` command: serve, migrate, demo, token (the load tester is `collab-loadtest`)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import orjson

from collab_server.access.auth import TokenVerifier, load_secret
from collab_server.config import ConfigError, Settings
from collab_server.storage import db
from collab_server.storage.migrate import MigrationError, migrate

from . import logs
from .embedded import EmbeddedError
from .server import PortInUse

T = TypeVar("T")
log = logging.getLogger("collab.cli")
EXIT_SETUP = 2


def _fail(message: str) -> None:
    click.echo(f"collab-server: {message}", err=True)
    sys.exit(EXIT_SETUP)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        _fail(str(exc))
        raise AssertionError from exc  # unreachable


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop

        return uvloop.run(coro_fn())
    except ImportError:  # pragma: no cover
        return asyncio.run(coro_fn())


def _guard(fn: Callable[[], T]) -> T:
    """Turn the setup failures an operator can fix into one line and exit status 2."""
    try:
        return fn()
    except (db.DatabaseUnavailable, EmbeddedError, MigrationError, PortInUse, ConfigError) as exc:
        _fail(str(exc))
        raise AssertionError from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Real-time Yjs collaboration server (y-websocket protocol, PostgreSQL, Redis).

    With no DATABASE_URL / REDIS_URL it starts an embedded PostgreSQL and Redis under
    COLLAB_DATA_DIR (default .collab).
    """


@main.command()
@click.option("--host", default=None, help="Address to listen on (COLLAB_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (COLLAB_PORT, default 8080).")
@click.option("--demo/--no-demo", default=False, help="Create the demo data and print how to connect.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes on one port, sharing documents through Redis.")
def serve(host: str | None, port: int | None, demo: bool, workers: int) -> None:
    """Start the server (migrating the database first)."""
    from .server import bind, serve_workers
    from .server import serve as run_server
    from .services import start_services

    settings = _settings(host=host, port=port)
    logs.setup(settings.log_level)
    sock = _guard(lambda: bind(settings.host, settings.port))
    services = _guard(lambda: start_services(settings))
    try:
        for note in services.notes:  # log lines, JSON like every other (setup failures stay one plain line)
            log.info(note, extra={"event": "startup"})
        if demo:
            info = _guard(lambda: _run(lambda: _demo(settings, services.database_url)))
            _print_demo(info, settings, as_json=False)
        _guard(lambda: _run(lambda: _check_database(services.database_url)))
        log.info("listening on http://%s:%d", settings.host, settings.port,
                 extra={"event": "listening", "url": f"http://{settings.host}:{settings.port}"})
        if workers > 1:
            if settings.bus != "on":
                _fail("--workers needs COLLAB_BUS=on: workers share documents through Redis")
            code = serve_workers(settings, services.database_url, services.redis_url, sock, workers)
            if code:
                sys.exit(code)
        else:
            run_server(settings, services.database_url, services.redis_url, sock)
    finally:
        services.stop()


async def _check_database(url: str) -> None:
    conn = await db.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@main.command(name="migrate")
def migrate_cmd() -> None:
    """Apply pending SQL migrations from sql/ (idempotent, safe to run concurrently)."""
    from .services import start_services

    settings = _settings()
    logs.setup("warning")
    services = _guard(lambda: start_services(settings))
    try:
        applied = _guard(lambda: _run(lambda: _migrate(services.database_url)))
    finally:
        services.stop()
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


async def _migrate(url: str) -> list[str]:
    conn = await db.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _demo(settings: Settings, url: str) -> dict[str, Any]:
    from .demo import create_demo

    conn = await db.connect(url)
    try:
        await migrate(conn)
        demo = await create_demo(conn, TokenVerifier(load_secret(settings)))
    finally:
        await conn.close()
    return demo.as_json(settings.host, settings.port)


def _print_demo(info: dict[str, Any], settings: Settings, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(info).decode())
        return
    tokens = info["tokens"]
    doc = info["documents"][0]
    click.echo(
        f"""
Open the editor (signed in as the demo editor): {info['app_url']}
The console: {info['console_url']}

Demo workspace {info['workspace']}, documents:
  {chr(10).join('  ' + d for d in info['documents']).strip()}
Connect a y-websocket client (tokens valid 7 days):
  new WebsocketProvider('ws://{settings.host}:{settings.port}/ws', '{doc}', ydoc, {{ params: {{ token }} }})
  editor   token: {tokens['editor']}
  viewer   token: {tokens['viewer']}
  outsider token: {tokens['outsider']}
  admin    token: {tokens['admin']}
  e.g. {info['ws_url']}
"""
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def demo(as_json: bool) -> None:
    """Create (idempotently) a demo workspace, users and documents; print how to connect."""
    from .services import start_services

    settings = _settings()
    logs.setup("warning")
    services = _guard(lambda: start_services(settings))
    try:
        info = _guard(lambda: _run(lambda: _demo(settings, services.database_url)))
    finally:
        services.stop()
    _print_demo(info, settings, as_json)


_TTL = re.compile(r"^(\d+)([smhd]?)$")


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match:
        raise click.BadParameter("use a number with an optional unit: 90s, 15m, 1h, 7d")
    value, unit = int(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


@main.command()
@click.option("--email", required=True, help="Email of an existing user.")
@click.option("--ttl", default="1h", show_default=True, help="Lifetime: 90s, 15m, 1h, 7d.")
def token(email: str, ttl: str) -> None:
    """Mint an HS256 token for a user (signed with COLLAB_JWT_SECRET or the local secret)."""
    from .services import start_services

    seconds = parse_ttl(ttl)
    settings = _settings()
    logs.setup("warning")
    services = _guard(lambda: start_services(settings))

    async def find() -> str | None:
        conn = await db.connect(services.database_url)
        try:
            await migrate(conn)
            row = await conn.fetchrow(
                "SELECT id FROM users WHERE lower(email) = lower($1) AND deleted_at IS NULL", email
            )
        finally:
            await conn.close()
        return str(row["id"]) if row else None

    try:
        user_id = _guard(lambda: _run(find))
    finally:
        services.stop()
    if user_id is None:
        _fail(f"no user with email {email}")
    click.echo(TokenVerifier(load_secret(settings)).mint(str(user_id), seconds))


@main.command(name="sync")
@click.argument("directory", type=click.Path(file_okay=False, path_type=pathlib.Path))
@click.option("--server", required=True, help="The server's HTTP address, e.g. http://127.0.0.1:8080.")
@click.option("--workspace", required=True, help="The workspace id (GET /api/workspaces lists yours).")
@click.option("--token", envvar="COLLAB_TOKEN", default=None, help="A token (or COLLAB_TOKEN); none in open mode.")
@click.option("--once", is_flag=True, help="Sync both ways once and exit (default: keep watching).")
def sync_cmd(directory: pathlib.Path, server: str, workspace: str, token: str | None, once: bool) -> None:
    """Keep DIRECTORY's Markdown files in two-way sync with a workspace (offline first: edits merge)."""
    from collab_server.client import ApiClient, ApiClientError
    from collab_server.client.folder import RETRYABLE, FolderSync, SyncError

    def report(message: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {message}")

    api = ApiClient(server, token, device_name=f"sync {socket.gethostname()}")
    try:
        folder = FolderSync(directory, api, workspace, report)
    except SyncError as exc:
        _fail(str(exc))
    try:
        if once:
            _run(folder.once)
            report(f"synced {len(folder.files)} documents with {directory}")
        else:
            report(f"watching {directory} and workspace {workspace} (Ctrl-C stops)")
            _run(folder.watch)
    except KeyboardInterrupt:
        pass
    except ApiClientError as exc:
        _fail(f"the server refused: {exc}")
    except RETRYABLE as exc:
        _fail(f"cannot reach {server}: {exc} (nothing is lost: run sync again)")
