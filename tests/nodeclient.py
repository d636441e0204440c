"""Drive the real y-websocket client (and the reference server) from Python tests.

Compatibility is only proven against the unmodified npm ``WebsocketProvider``, so instead of
re-implementing a client in Python the tests run ``tests/node/client.mjs`` — one long-lived Node
process holding any number of providers — and talk to it with JSON lines (see that file for the
command list). ``RefServer`` runs the y-websocket reference server for side-by-side comparisons.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

try:  # POSIX only; without it parallel first runs may both run `npm ci` (harmless but slow).
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

NODE_DIR = Path(__file__).resolve().parent / "node"
CLIENT_SCRIPT = NODE_DIR / "client.mjs"
REF_SERVER_SCRIPT = NODE_DIR / "ref_server.mjs"
HOCUSPOCUS_SCRIPT = NODE_DIR / "hocuspocus.mjs"
HOCUSPOCUS_SERVER_SCRIPT = NODE_DIR / "hocuspocus_server.mjs"
MIN_NODE_MAJOR = 18
# Replies such as encodeState can be large; asyncio's default 64 KiB line limit is too small.
_LINE_LIMIT = 64 * 1024 * 1024
_STDERR_TAIL = 200


class NodeHarnessError(RuntimeError):
    """The harness itself failed (node/npm missing, install failed, process died, no reply)."""


class NodeCommandError(RuntimeError):
    """A command was answered with ok:false; ``reply`` holds the full reply (e.g. last text, status)."""

    def __init__(self, cmd: str, reply: dict[str, Any]) -> None:
        self.cmd = cmd
        self.reply = reply
        self.error = str(reply.get("error", "unknown error"))
        details = {k: v for k, v in reply.items() if k not in ("id", "ok", "error")}
        super().__init__(f"node command {cmd!r} failed: {self.error}" + (f" {details}" if details else ""))


@functools.lru_cache(maxsize=8)
def _node_major(node: str) -> int | None:
    """Major version of ``node``, or None if it cannot be run (cached: called before every start)."""
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if match else None


def node_available() -> bool:
    """True if a usable Node (>= 18, needed by ws/yjs ESM builds) is on PATH."""
    node = shutil.which("node")
    if node is None:
        return False
    major = _node_major(node)
    return major is not None and major >= MIN_NODE_MAJOR


def _modules_ready() -> bool:
    """True if every pinned dependency is installed at exactly the pinned version.

    Checking versions rather than mere presence makes a lock-file bump reinstall automatically.
    """
    try:
        deps: dict[str, str] = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    except (OSError, ValueError, KeyError):
        return False
    for name, version in deps.items():
        try:
            installed = json.loads((NODE_DIR / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            return False
        if version.startswith("npm:"):  # an alias, "npm:@scope/package@1.2.3"
            version = version.rsplit("@", 1)[1]
        if installed.get("version") != version:
            return False
    return True


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialise `npm ci` across concurrent test processes (xdist workers, parallel `make test`)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    digest = hashlib.sha1(str(NODE_DIR).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"collab-server-npm-ci-{digest}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_node_modules() -> None:
    """Run `npm ci` in tests/node if the pinned packages are missing, so a fresh clone can `make test`."""
    if _modules_ready():
        return
    npm = shutil.which("npm")
    if not node_available() or npm is None:
        raise NodeHarnessError(
            f"Node.js >= {MIN_NODE_MAJOR} and npm are required for the y-websocket client tests "
            f"(node={shutil.which('node')!r}, npm={npm!r}); install them and re-run"
        )
    with _install_lock():
        if _modules_ready():  # another process installed while we waited
            return
        log.warning("installing node test dependencies: npm ci in %s", NODE_DIR)
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0 or not _modules_ready():
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise NodeHarnessError(f"`npm ci` in {NODE_DIR} failed (exit {proc.returncode}):\n{tail}")


async def _drain_lines(stream: asyncio.StreamReader, sink: deque[str], prefix: str) -> None:
    """Keep a child's stderr flowing (a full pipe would stall it) and keep its tail for error messages."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        sink.append(text)
        log.debug("%s: %s", prefix, text)


async def _stop_process(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Wait ``grace`` seconds for a voluntary exit, then terminate, then kill."""
    for action in (None, proc.terminate, proc.kill):
        if proc.returncode is not None:
            return
        if action is not None:
            with contextlib.suppress(ProcessLookupError):
                action()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)


class ClientHandle:
    """One named provider inside a NodeClients process; ``call`` fills in ``client=`` for you."""

    def __init__(self, owner: NodeClients, name: str, client_id: int | None = None) -> None:
        self.owner = owner
        self.name = name
        self.client_id = client_id

    async def call(self, cmd: str, *, reply_timeout: float | None = None, **kw: Any) -> dict[str, Any]:
        """Send ``cmd`` for this client; see NodeClients.call."""
        return await self.owner.call(cmd, reply_timeout=reply_timeout, client=self.name, **kw)

    async def text(self, key: str = "content") -> str:
        """Current content of ``doc.getText(key)``."""
        return str((await self.call("text", key=key))["text"])

    async def awareness_states(self) -> dict[str, Any]:
        """Awareness states as seen by this client, keyed by clientID (as strings)."""
        return dict((await self.call("awareness"))["states"])

    async def status(self) -> dict[str, Any]:
        """wsconnected / synced / lastClose {code, reason} / closeCount / terminalClose of the provider."""
        return await self.call("status")


class NodeClients:
    """A `node client.mjs` process holding several real y-websocket clients, driven by JSON lines.

    Replies are matched to requests by id (a reader task resolves futures), so concurrent ``call``s are
    fine; unsolicited ``{"event": ...}`` lines are appended to ``events``.
    """

    script: Path = CLIENT_SCRIPT  # the JSON-lines program this process runs
    ping_timeout: float = 30

    def __init__(self, *, node: str = "node", env: dict[str, str] | None = None) -> None:
        self._node = node
        self._env = env
        self.info: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._next_id = 0
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._event_cond = asyncio.Condition()
        self._dead: NodeHarnessError | None = None
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: deque[str] = deque(maxlen=_STDERR_TAIL)

    async def start(self) -> Self:
        """Install node deps if needed, spawn the process, and check it answers."""
        if self._proc is not None:
            raise NodeHarnessError("NodeClients already started")
        if not node_available():
            raise NodeHarnessError(f"Node.js >= {MIN_NODE_MAJOR} not found on PATH; it is required to run "
                                   "the real y-websocket client")
        await asyncio.to_thread(ensure_node_modules)
        self._proc = await asyncio.create_subprocess_exec(
            self._node, str(self.script),
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
            env={**os.environ, **(self._env or {})},
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read_stdout(self._proc.stdout), name="nodeclient-stdout"),
            asyncio.create_task(_drain_lines(self._proc.stderr, self.stderr_lines, "node client"),
                                name="nodeclient-stderr"),
        ]
        try:
            self.info = await self.call("ping", reply_timeout=self.ping_timeout)
        except BaseException:
            await self.close()  # __aexit__ will not run when __aenter__ fails
            raise
        return self

    def stderr_tail(self, lines: int = 40) -> str:
        """Last stderr lines of the node process, for error messages."""
        return "\n".join(list(self.stderr_lines)[-lines:])

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("node client printed a non-JSON line: %r", line[:200])
                    continue
                if "event" in msg:
                    async with self._event_cond:
                        self.events.append(msg)
                        self._event_cond.notify_all()
                    continue
                entry = self._pending.pop(msg.get("id"), None)
                if entry is None:
                    log.warning("node client reply for unknown id: %r", msg)
                elif not entry[1].done():
                    entry[1].set_result(msg)
        finally:
            await self._mark_dead()

    async def _mark_dead(self) -> None:
        """Fail every pending call once stdout is closed (the process exited or crashed)."""
        code = None
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(self._proc.wait(), 5)
        await asyncio.sleep(0.05)  # let the stderr drain catch the last lines
        self._dead = NodeHarnessError(
            f"node client process exited (code {code}); stderr:\n{self.stderr_tail()}"
        )
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._dead)
        self._pending.clear()
        async with self._event_cond:
            self._event_cond.notify_all()

    async def call(self, cmd: str, *, reply_timeout: float | None = None, **kw: Any) -> dict[str, Any]:
        """Send one command and return its reply; raise NodeCommandError on ok:false.

        ``reply_timeout`` (seconds) defaults to the command's own ``timeoutMs`` plus slack, so a node-side
        timeout is reported with its details (last text, status) rather than as a Python timeout.
        """
        if self._proc is None or self._proc.stdin is None:
            raise NodeHarnessError("NodeClients not started")
        if self._dead is not None:
            raise self._dead
        self._next_id += 1
        req_id = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (cmd, fut)
        line = json.dumps({"id": req_id, "cmd": cmd, **kw}, separators=(",", ":")) + "\n"
        try:
            async with self._write_lock:
                self._proc.stdin.write(line.encode())
                await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._pending.pop(req_id, None)
            raise NodeHarnessError(f"node client stdin closed; stderr:\n{self.stderr_tail()}") from exc
        if reply_timeout is None:
            reply_timeout = float(kw.get("timeoutMs", 10_000)) / 1000 + 10
        try:
            reply = await asyncio.wait_for(fut, reply_timeout)
        except TimeoutError as exc:
            self._pending.pop(req_id, None)
            raise NodeHarnessError(
                f"no reply to {cmd!r} within {reply_timeout}s; stderr:\n{self.stderr_tail()}"
            ) from exc
        if not reply.get("ok"):
            raise NodeCommandError(cmd, reply)
        return reply

    async def connect(self, client: str, url: str, room: str, **kw: Any) -> ClientHandle:
        """Create a Y.Doc + WebsocketProvider named ``client`` and wait until it is synced."""
        reply = await self.call("connect", client=client, url=url, room=room, **kw)
        return ClientHandle(self, client, reply.get("clientId"))

    def client(self, name: str) -> ClientHandle:
        """Handle for an already connected client."""
        return ClientHandle(self, name)

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0,
                         start: int = 0) -> dict[str, Any]:
        """First event (from index ``start``) matching ``predicate``; waits up to ``within`` seconds."""
        async def _find() -> dict[str, Any]:
            async with self._event_cond:
                index = start
                while True:
                    for ev in self.events[index:]:
                        if predicate(ev):
                            return ev
                    index = len(self.events)
                    if self._dead is not None:
                        raise self._dead
                    await self._event_cond.wait()

        return await asyncio.wait_for(_find(), within)

    async def close(self) -> None:
        """Ask the process to destroy every provider and exit; kill it if it does not."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and self._dead is None:
            with contextlib.suppress(NodeHarnessError, NodeCommandError):
                await self.call("exit", reply_timeout=5)
        if proc.stdin is not None:
            proc.stdin.close()
        await _stop_process(proc, 5)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class HocuspocusClients(NodeClients):
    """A `node hocuspocus.mjs` process: real `@hocuspocus/provider`s (4.x, or 3.x with version=3) on
    shared sockets. ``socket`` opens a HocuspocusProviderWebsocket, ``open`` attaches a document to it."""

    script = HOCUSPOCUS_SCRIPT

    async def socket(self, name: str, url: str, version: int = 4) -> str:
        await self.call("socket", socket=name, url=url, version=version)
        return name

    async def open(self, client: str, socket: str, name: str, **kw: Any) -> ClientHandle:
        reply = await self.call("open", client=client, socket=socket, name=name, **kw)
        return ClientHandle(self, client, reply.get("clientId"))


class RefServer:
    """The y-websocket reference server (in memory) on a free port, for comparison runs.

    It binds port 0 itself and reports the real port, so there is no free-port race.
    """

    script: Path = REF_SERVER_SCRIPT

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, env: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self.stderr_lines: deque[str] = deque(maxlen=_STDERR_TAIL)

    @property
    def url(self) -> str:
        """Base URL to hand to WebsocketProvider (the room is appended as the path)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id (for resource measurements in benchmarks)."""
        return self._proc.pid if self._proc is not None else None

    async def start(self, startup_timeout: float = 30.0) -> Self:
        """Spawn the server and wait for its `listening <port>` line."""
        if not node_available():
            raise NodeHarnessError(f"Node.js >= {MIN_NODE_MAJOR} not found on PATH; it is required to run "
                                   "the y-websocket reference server")
        await asyncio.to_thread(ensure_node_modules)
        self._proc = await asyncio.create_subprocess_exec(
            "node", str(self.script), "--host", self.host, "--port", str(self.port),
            "--exit-on-stdin-close",
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(self._env or {})},
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._stderr_task = asyncio.create_task(
            _drain_lines(self._proc.stderr, self.stderr_lines, "ref server")
        )
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), startup_timeout)
        except TimeoutError:
            line = b""
        match = re.fullmatch(rb"listening (\d+)\s*", line)
        if match is None:
            await self.close()
            raise NodeHarnessError(f"reference server did not start (got {line!r}); stderr:\n"
                                   + "\n".join(self.stderr_lines))
        self.port = int(match.group(1))
        return self

    async def close(self) -> None:
        """Stop the server (closing stdin makes it exit; signals as fallback)."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        await _stop_process(proc, 5)
        if self._stderr_task is not None:
            await asyncio.gather(self._stderr_task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class HocuspocusRefServer(RefServer):
    """`@hocuspocus/server` (in memory), to check the Hocuspocus harness against the reference."""

    script = HOCUSPOCUS_SERVER_SCRIPT
