"""Running the app under uvicorn, with a shutdown that closes clients with 1001 and loses nothing."""

from __future__ import annotations

import errno
import gc
import logging
import multiprocessing
import os
import signal
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from collab_server.config import Settings
from collab_server.transport.websocket import WebSocketProtocol

from .app import create_app
from .http import bounded_http


class PortInUse(RuntimeError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """Bind before starting so a busy port is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use (set COLLAB_PORT to another port)") from None
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class CollabServer(uvicorn.Server):
    """uvicorn closes WebSockets with 1012 on shutdown; we first close ours with 1001 after
    flushing, and exit 0 instead of re-raising the signal."""

    tune_gc = False  # the serving process's own; not for servers embedded in another program

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.tune_gc:
            tune_gc()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        app = self.config.loaded_app
        ctx = getattr(getattr(app, "state", None), "ctx", None) if app is not None else None
        if ctx is None:  # wrapped by middleware: find the Starlette app
            inner = getattr(app, "app", None)
            ctx = getattr(getattr(inner, "state", None), "ctx", None)
        if ctx is not None:
            await ctx.hub.shutdown()
        await super().shutdown(sockets)


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="uvloop",
        http=bounded_http(settings.max_header_bytes, settings.header_timeout_seconds or 1e9),
        # uvicorn hands every upgrade request to this class (its `ws` option takes a protocol class);
        # frame size, keepalive and compression (none) are the class's business, from our settings.
        ws=WebSocketProtocol,
        forwarded_allow_ips=list(settings.trusted_proxies),  # the same proxies for HTTP requests
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )


GC_THRESHOLD = (10_000, 10, 10)


def tune_gc() -> None:
    """Measured in a 5,000-connection storm: the cyclic collector took 0.83 s of the server's 3.0 s
    of CPU, and one full collection paused the loop for 180 ms (every socket leaves a few cycles
    behind: websockets' protocol and its parser generator, uvicorn's HTTP protocol). What exists once
    started (modules, the app) is frozen out of every scan, and young collections run every 10,000
    allocations instead of 700: 0.25 s in all, longest pause 48 ms, no full collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def serve(settings: Settings, database_url: str, redis_url: str, sock: socket.socket) -> None:
    app = create_app(settings, database_url, redis_url)
    server = CollabServer(uvicorn_config(app, settings))
    server.tune_gc = True
    server.run(sockets=[sock])


def _worker(settings: Settings, database_url: str, redis_url: str, sock: socket.socket) -> None:
    """A forked worker: serve until shut down (everything flushed and stopped by then), then exit
    at once. multiprocessing would otherwise join the conversion pool's processes at exit, and that
    join has been seen to wait forever on a process already gone (1 exit in ~20 under load)."""
    serve(settings, database_url, redis_url, sock)
    logging.shutdown()
    os._exit(0)


def serve_workers(settings: Settings, database_url: str, redis_url: str, sock: socket.socket, workers: int) -> int:
    """N worker processes accepting on one socket; they share documents through the Redis bus.
    Signals are forwarded so every worker drains (closes with 1001, flushes) before we exit."""
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(settings, database_url, redis_url, sock), name=f"collab-worker-{i}")
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()

    def forward(sig: int, _frame: FrameType | None) -> None:
        for proc in procs:
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)
