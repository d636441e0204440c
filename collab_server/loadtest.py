"""A scripted load generator for any y-websocket-compatible server (this one or the reference).

D documents x C clients speak the y-websocket protocol over plain WebSockets; a scheduler
sends text updates at a target aggregate rate (in typing bursts), optionally cursor moves over
awareness, leaves and re-joins (churn) and late joiners. It measures, end to end, the time from
a sender's send to each other receiver's delivery (p50 / p95 / p99 / max), delivered updates per
second, loss (an update not delivered to every other client of its room by the end of the step
plus a drain period), convergence at the end, errors and reconnects.

It has to drive ~20,000 updates/s (x 3 receivers each) from one core, so the hot path avoids
both a pycrdt Doc per client and a general WebSocket library (measured: pycrdt insert +
observe costs 15-300 us per update as the text grows; `websockets` costs ~11 us per received
frame; this client ~2 us):

* updates are encoded by hand: each one inserts a short string ``\\x02<sender>.<seq>\\x03`` at the
  end of the sender's own run of text in the Y.Text ``content`` (origin = the sender's previous
  character), which is a valid Yjs update byte for byte identical to what Yjs/pycrdt would emit;
* receivers do not apply updates: they find the tags in the raw frame with one regex, and record
  the delivery time per (sender, seq) and which ones they have seen (tags inside a sync step 2
  count as seen, so late joiners and re-joiners are checked too);
* a minimal WebSocket client on an asyncio Protocol (masking in C via `websockets.speedups`)
  parses every frame of a TCP read in one callback, with one clock reading per read.

Convergence is checked for real at the end: the clients of `check_rooms` rooms keep every frame
they received and sent, and each one's pycrdt Doc is rebuilt from them; all texts of a room must
be identical. Every loop is bounded in count and time; `max_seconds` caps a whole run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import math
import os
import random
import re
import resource
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

from .protocol import ProtocolError, decode, write_varuint

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets ships the C extension on every platform we use

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        if not data:
            return data
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


_randbytes = random.randbytes
_SMALL_HEADERS = [bytes((0x82, 0x80 | n)) for n in range(126)]  # FIN + binary, masked, length n

MIXES = ("typing", "cursor", "churn", "late")
ROOT_KEY = b"content"  # the Y.Text every client types into (what the demo editor uses)

# A tag is inserted as text; it cannot be produced by the varint framing around it.
_TAG = re.compile(rb"\x02(\d+)\.(\d+)\x03")
_CURSOR_TAG = re.compile(rb'"k":"(\d+)\.(\d+)"')
_STEP1_EMPTY = b"\x00\x00\x01\x00"  # sync step 1 with an empty state vector
_STEP2_EMPTY = b"\x00\x01\x02\x00\x00"  # sync step 2 with an empty update
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER = 64 * 1024


class LoadTestError(RuntimeError):
    """The run could not start (bad target, nothing connected)."""


# -- a minimal WebSocket client ------------------------------------------------------------


class HandshakeError(ConnectionError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WSClient(asyncio.Protocol):
    """RFC 6455 client on a raw asyncio Protocol: binary messages in and out, pings answered.

    `on_message(payload, t)` is called for every complete binary message, with `t` the
    perf_counter reading taken once when the TCP read that completed it arrived.
    `on_close(code, reason)` is called once when the connection is gone.
    """

    def __init__(
        self,
        host: str,
        path: str,
        on_message: Callable[[bytes, float], None],
        on_close: Callable[[int, str], None],
        max_message: int = 256 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.path = path
        self.on_message = on_message
        self.on_close = on_close
        self.max_message = max_message
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.open = False
        self.close_sent = False
        self.close_code = 1006
        self.close_reason = ""
        self._key = base64.b64encode(os.urandom(16))
        self._head = b""
        self._buf = b""
        self._chunks: list[bytes] | None = None  # a large frame being gathered
        self._chunks_len = 0
        self._need = 0
        self._fragments: list[bytes] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: collab-server-loadtest\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self._key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if not self.done.done():
            self.done.set_result(None)
            self.on_close(self.close_code, self.close_reason)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            data = self._handshake(data)
            if not data:
                return
        now = time.perf_counter()
        if self._chunks is not None:
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks = None
        elif self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            if length > self.max_message:
                self._fail(1009, "message too big")
                return
            masked = b1 & 0x80
            if masked:
                hdr += 4
            end = pos + hdr + length
            if end > n:
                if end - pos > 65536:
                    self._chunks = [data[pos:]]
                    self._chunks_len = n - pos
                    self._need = end - pos
                    return
                break
            payload = data[pos + hdr : end]
            if masked:  # servers must not mask, but tolerate it
                payload = _apply_mask(payload, data[pos + hdr - 4 : pos + hdr])
            pos = end
            opcode = b0 & 0x0F
            if opcode == 2:
                if b0 & 0x80:
                    self.on_message(payload, now)
                else:
                    self._fragments = [payload]
            elif opcode == 0:
                if self._fragments is not None:
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        message = b"".join(self._fragments)
                        self._fragments = None
                        self.on_message(message, now)
            elif opcode == 9:
                self._write(payload, 10)
            elif opcode == 8:
                self._on_close_frame(payload)
                return
            # text (1) and pong (10) frames are ignored
            if self.transport is None or self.transport.is_closing():
                return
        if pos < n:
            self._buf = data[pos:]

    # -- handshake and closing ------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEADER:
                self._refuse(0, "response header too large")
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            self._refuse(status, f"upgrade refused: HTTP {status} {rest[:200]!r}")
            return b""
        accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest())
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != accept:
            self._refuse(status, "bad Sec-WebSocket-Accept")
            return b""
        self.open = True
        self.opened.set_result(None)
        return rest

    def _refuse(self, status: int, message: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(status, message))
        self.close_code = 1006
        self.close_reason = message
        if self.transport is not None:
            self.transport.close()

    def _on_close_frame(self, payload: bytes) -> None:
        self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self.close_reason = payload[2:].decode(errors="replace")
        if not self.close_sent:
            self.close_sent = True
            self._write(payload[:2], 8)
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self.close(code, reason)
        if self.transport is not None:
            self.transport.abort()

    def _write(self, payload: bytes, opcode: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
        mask = _randbytes(4)
        transport.write(header + mask + _apply_mask(payload, mask))

    # -- public ---------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Send one binary message (dropped silently once closing)."""
        if not self.open or self.close_sent:
            return
        n = len(payload)
        if n < 126:  # the hot path: one small update, one write
            mask = _randbytes(4)
            self.transport.write(_SMALL_HEADERS[n] + mask + _apply_mask(payload, mask))  # type: ignore[union-attr]
        else:
            self._write(payload, 2)

    @property
    def write_buffer(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; `done` resolves when the TCP connection is gone."""
        if self.transport is None or self.close_sent:
            return
        self.close_sent = True
        if self.open:
            self._write(code.to_bytes(2, "big") + reason.encode()[:120], 8)
        else:
            self.transport.close()

    async def aclose(self, timeout: float = 2.0) -> None:
        self.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.done), timeout)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def ws_connect(
    url: str,
    on_message: Callable[[bytes, float], None],
    on_close: Callable[[int, str], None],
    timeout: float = 10.0,
    bind: Callable[[WSClient], None] | None = None,
) -> WSClient:
    """Open a WebSocket to `url` (ws:// only) and complete the handshake within `timeout`.
    `bind` receives the client before any byte arrives (a message may come with the handshake)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs are supported, not {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    netloc = host if parts.port is None else f"{host}:{port}"

    def factory() -> WSClient:
        proto = WSClient(netloc, path, on_message, on_close)
        if bind is not None:
            bind(proto)
        return proto

    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(factory, host, port)
        try:
            await proto.opened
        except BaseException:
            proto.abort()
            raise
    return proto


def check_loopback(url: str) -> None:
    """The load generator only targets this machine: refuse anything but a loopback host."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise LoadTestError(f"the URL must start with ws:// (got {url!r})")
    host = parts.hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise LoadTestError(f"the load generator only targets loopback addresses (got host {host!r})")


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


# -- hand-encoded Yjs updates --------------------------------------------------------------


def _varuint(value: int) -> bytes:
    """write_varuint with the common short cases unrolled (clocks stay below 2**21 per run)."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    return write_varuint(value)


def _varstring(data: bytes) -> bytes:
    return write_varuint(len(data)) + data


def encode_text_insert(
    client_id: int,
    clock: int,
    text: bytes,
    origin: tuple[int, int] | None = None,
    right_origin: tuple[int, int] | None = None,
    root: bytes = ROOT_KEY,
) -> bytes:
    """One Yjs v1 update inserting ASCII `text` as item (client_id, clock) into Y.Text `root`,
    after `origin` and before `right_origin` (item IDs); without either, into the root directly.
    Byte for byte what Yjs and pycrdt emit for the same insert."""
    info = 4 | (0x80 if origin else 0) | (0x40 if right_origin else 0)  # 4: ContentString
    parts = [b"\x01\x01", write_varuint(client_id), write_varuint(clock), bytes((info,))]
    if origin:
        parts += (write_varuint(origin[0]), write_varuint(origin[1]))
    if right_origin:
        parts += (write_varuint(right_origin[0]), write_varuint(right_origin[1]))
    if not origin and not right_origin:
        parts.append(b"\x01" + _varstring(root))  # parent is a root type named `root`
    parts += (_varstring(text), b"\x00")  # content, then an empty delete set
    return b"".join(parts)


def _update_frame(update: bytes) -> bytes:
    return b"\x00\x02" + write_varuint(len(update)) + update


def _step1_frame(state_vector: bytes) -> bytes:
    return b"\x00\x00" + write_varuint(len(state_vector)) + state_vector


def tags_in(data: bytes) -> list[tuple[int, int]]:
    """The (sender, seq) tags inserted by the load generator found in a frame or update."""
    return [(int(m[1]), int(m[2])) for m in _TAG.finditer(data)]


# -- configuration and results -------------------------------------------------------------


@dataclass
class LoadConfig:
    url: str = "ws://127.0.0.1:8080/ws"
    documents: int = 10
    clients: int = 4  # per document
    rate: float = 1000.0  # aggregate text updates per second (all documents together)
    duration: float = 10.0  # seconds per step
    mix: tuple[str, ...] = ("typing", "cursor")
    params: dict[str, str] = field(default_factory=dict)  # query string, e.g. token
    steps: tuple[float, ...] = ()  # rates to step through (each for `duration`); empty: just `rate`
    drain: float = 3.0  # seconds after a step for the last deliveries
    max_seconds: float = 600.0  # hard cap on the whole run
    cursor_ratio: float = 0.25  # cursor moves per text update (when both are in the mix)
    churn_interval: float = 30.0  # each client leaves and a new one joins about this often
    late_at: float = 0.5  # late joiners join at this fraction of the run, one per document
    typists: float = 0.25  # share of clients typing a burst at any moment
    burst: tuple[int, int] = (3, 20)  # keystrokes per typing burst
    connect_concurrency: int = 128
    connect_timeout: float = 10.0
    max_reconnects: int = 3  # per client, after an unexpected close
    check_rooms: int = 8  # rooms whose clients rebuild a pycrdt Doc at the end (-1: all)
    stop_p99_ms: float = 1000.0  # stepping stops after a step with loss or p99 beyond this ...
    always_run_to: float = 0.0  # ... except that steps up to this rate always run
    prefix: str = ""  # document name prefix; default: a fresh random one per run
    seed: int | None = None
    tick: float = 0.001  # scheduler period

    def validate(self) -> None:
        check_loopback(self.url)
        if self.documents < 1 or self.clients < 1:
            raise LoadTestError("--documents and --clients must be at least 1")
        if self.rate < 0 or any(r < 0 for r in self.steps) or self.duration < 0:
            raise LoadTestError("rates and durations must not be negative")
        unknown = set(self.mix) - set(MIXES)
        if unknown:
            raise LoadTestError(f"unknown mix element(s) {sorted(unknown)}; choose from {', '.join(MIXES)}")
        if self.max_seconds <= 0:
            raise LoadTestError("--max-seconds must be positive")

    @property
    def rates(self) -> tuple[float, ...]:
        return self.steps or (self.rate,)


@dataclass
class LatencyStats:
    count: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0

    @classmethod
    def of(cls, seconds: Iterable[float]) -> LatencyStats:
        values = sorted(seconds)
        n = len(values)
        if not n:
            return cls()

        def pct(p: float) -> float:
            return round(values[min(n - 1, max(0, math.ceil(p * n) - 1))] * 1000, 3)

        return cls(n, pct(0.50), pct(0.95), pct(0.99), round(values[-1] * 1000, 3),
                   round(sum(values) / n * 1000, 3))


@dataclass
class StepResult:
    target_rate: float
    seconds: float
    sent: int = 0
    sent_per_second: float = 0.0
    skipped: int = 0  # due sends the generator could not make in time (it was behind)
    delivered: int = 0  # (update, receiver) deliveries seen live
    delivered_per_second: float = 0.0
    expected: int = 0  # (update, receiver) pairs that had to arrive by the end of the drain
    lost: int = 0  # updates not delivered to every other client of their room
    lost_deliveries: int = 0
    drain_seconds: float = 0.0
    latency: LatencyStats = field(default_factory=LatencyStats)
    cursor_sent: int = 0
    cursor_latency: LatencyStats = field(default_factory=LatencyStats)
    generator_cpu: float = 0.0  # share of one core the load generator used
    generator_lag_p99_ms: float = 0.0  # how late the scheduler woke up (its own loop latency)
    joins: int = 0
    leaves: int = 0
    errors: int = 0
    server: dict[str, Any] = field(default_factory=dict)  # filled by a probe (bench)

    @property
    def ok(self) -> bool:
        return self.lost == 0


@dataclass
class LoadResult:
    config: dict[str, Any]
    steps: list[StepResult] = field(default_factory=list)
    connected: int = 0
    connect_seconds: float = 0.0  # open + sync of the initial D x C clients
    join_latency: LatencyStats = field(default_factory=LatencyStats)  # connect -> step 2 (initial)
    churn_join_latency: LatencyStats = field(default_factory=LatencyStats)
    late_sync: LatencyStats = field(default_factory=LatencyStats)  # step 1 sent -> step 2 received
    late_step2_bytes: int = 0
    errors: int = 0
    reconnects: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    converged: bool = False
    convergence: dict[str, Any] = field(default_factory=dict)
    lost: int = 0
    sent: int = 0
    delivered: int = 0
    latency: LatencyStats = field(default_factory=LatencyStats)  # all steps together
    seconds: float = 0.0
    generator_cpu_seconds: float = 0.0
    aborted: str | None = None

    @property
    def ok(self) -> bool:
        return self.aborted is None and self.lost == 0 and self.converged and self.connected > 0

    def saturation(self, p99_ms: float = 100.0, min_share: float = 0.95) -> float | None:
        """The highest step rate with p99 under `p99_ms`, no loss, and the generator keeping up."""
        best = None
        for step in self.steps:
            if (step.lost == 0 and step.latency.count and step.latency.p99_ms < p99_ms
                    and step.sent_per_second >= min_share * step.target_rate):
                best = step.target_rate if best is None else max(best, step.target_rate)
        return best

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["saturation_rate"] = self.saturation()
        return out


# -- the simulated clients -----------------------------------------------------------------


class _Room:
    __slots__ = ("clients", "idents", "index", "name", "url")

    def __init__(self, index: int, name: str, url: str) -> None:
        self.index = index
        self.name = name
        self.url = url
        self.clients: list[LoadClient] = []  # connected (or connecting) right now
        self.idents: list[int] = []  # every sender identity that ever joined this room


class LoadClient:
    """One simulated editor: its own Yjs client id, text clock and the tags it has seen."""

    __slots__ = (
        "aw_clock", "cid", "cid_enc", "clock", "closing", "connect_started", "gone", "ident", "join_ms",
        "keep", "own", "reconnects", "role", "room", "run", "seen", "seq", "step1_at", "step2_bytes",
        "sync_ms", "synced", "synced_at", "ws",
    )

    def __init__(self, run: Runner, room: _Room, role: str, keep: bool) -> None:
        self.run = run
        self.room = room
        self.role = role
        self.ident = run.new_ident(room)
        self.cid = random.getrandbits(31) + 1  # Yjs client ids are 32-bit
        self.cid_enc = write_varuint(self.cid)
        self.clock = 0
        self.seq = 0
        self.aw_clock = 0
        self.seen: dict[int, bytearray] = {}
        self.keep: list[bytes] | None = [] if keep else None
        self.own: list[bytes] | None = [] if keep else None
        self.ws: WSClient | None = None
        self.synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.synced_at = math.inf
        self.connect_started = 0.0
        self.step1_at = 0.0
        self.join_ms = 0.0
        self.sync_ms = 0.0
        self.step2_bytes = 0
        self.closing = False
        self.gone = False
        self.reconnects = 0

    # -- connecting -----------------------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        self.connect_started = time.perf_counter()
        await ws_connect(self.room.url, self._on_message, self._on_close, timeout, bind=self._bind)
        self.step1_at = time.perf_counter()
        self.ws.send(_STEP1_EMPTY)
        async with asyncio.timeout(timeout):
            await asyncio.shield(self.synced)

    def _bind(self, ws: WSClient) -> None:
        self.ws = ws

    @property
    def live(self) -> bool:
        return self.ws is not None and self.ws.open and self.synced_at != math.inf and not self.closing

    def _on_close(self, code: int, reason: str) -> None:
        self.gone = True
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(f"closed before sync: {code} {reason}".strip()))
            self.synced.exception()  # retrieved: the awaiting side reports it
        self.run.client_closed(self, code, reason)

    # -- receiving (the hot path) ---------------------------------------------------------

    def _on_message(self, data: bytes, now: float) -> None:
        if len(data) < 2:
            return
        kind = data[0]
        if kind == 0:
            sub = data[1]
            if sub == 2:
                self._on_update(data, now)
            elif sub == 1:
                self._on_step2(data, now)
            elif sub == 0:
                self.ws.send(_STEP2_EMPTY)  # type: ignore[union-attr]  # a fresh client has nothing
        elif kind == 1:
            self._on_awareness(data, now)
        elif kind == 2:
            self.run.error(f"permission denied: {data[2:][:120]!r}")

    def _on_update(self, data: bytes, now: float) -> None:
        run = self.run
        seen = self.seen
        sent_at = run.sent_at
        lat = run.lat
        new = 0
        own = self.ident
        for m in _TAG.finditer(data):
            ident = int(m[1])
            if ident == own:
                continue  # the reference server echoes updates to their sender too
            seq = int(m[2])
            arr = _seen_bits(seen, ident, seq)
            if not arr[seq]:
                arr[seq] = 1
                try:
                    lat.append(now - sent_at[ident][seq])
                except IndexError:
                    run.unknown_tags += 1
                    continue
                new += 1
        run.delivered += new
        if self.keep is not None:
            self.keep.append(data)

    def _on_step2(self, data: bytes, now: float) -> None:
        seen = self.seen
        for m in _TAG.finditer(data):
            ident = int(m[1])
            seq = int(m[2])
            _seen_bits(seen, ident, seq)[seq] = 1
        if self.keep is not None:
            self.keep.append(data)
        if not self.synced.done():
            self.synced_at = now
            self.sync_ms = (now - self.step1_at) * 1000
            self.join_ms = (now - self.connect_started) * 1000
            self.step2_bytes = len(data)
            self.synced.set_result(None)

    def _on_awareness(self, data: bytes, now: float) -> None:
        run = self.run
        synced_at = self.synced_at
        for m in _CURSOR_TAG.finditer(data):
            ident = int(m[1])
            if ident == self.ident:
                continue
            try:
                sent = run.cursor_sent_at[ident][int(m[2])]
            except IndexError:
                run.unknown_tags += 1
                continue
            if sent >= synced_at:
                run.cursor_lat.append(now - sent)

    # -- sending --------------------------------------------------------------------------

    def type_one(self) -> None:
        """Append one tagged string to this client's run of text and send it."""
        ws = self.ws
        if ws is None or not ws.open:
            return
        seq = self.seq
        self.seq = seq + 1
        text = b"\x02%d.%d\x03" % (self.ident, seq)
        clock = self.clock
        if clock == 0:
            body = b"\x04\x01\x07content" + bytes((len(text),)) + text
        else:
            body = b"\x84" + self.cid_enc + _varuint(clock - 1) + bytes((len(text),)) + text
        update = b"\x01\x01" + self.cid_enc + _varuint(clock) + body + b"\x00"
        self.clock = clock + len(text)
        size = len(update)  # ~40 bytes: one length byte
        frame = b"\x00\x02" + (bytes((size,)) if size < 0x80 else write_varuint(size)) + update
        self.run.sent_at[self.ident].append(time.perf_counter())
        ws.send(frame)
        if self.own is not None:
            self.own.append(frame)

    def move_cursor(self) -> None:
        ws = self.ws
        if ws is None or not ws.open:
            return
        seqs = self.run.cursor_sent_at[self.ident]
        self.aw_clock += 1
        state = b'{"user":{"name":"lt-%d"},"cursor":{"anchor":%d,"head":%d},"k":"%d.%d"}' % (
            self.ident, self.clock, self.clock, self.ident, len(seqs))
        entry = b"\x01" + self.cid_enc + write_varuint(self.aw_clock) + write_varuint(len(state)) + state
        seqs.append(time.perf_counter())
        ws.send(b"\x01" + write_varuint(len(entry)) + entry)

    def leave(self) -> None:
        self.closing = True
        if self.ws is not None:
            self.ws.close(1000, "")


# -- the runner ----------------------------------------------------------------------------


def _fmt_rate(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"


class Runner:
    """Runs one LoadConfig; `await Runner(config).run()` returns a LoadResult, always."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        probe: Callable[[], dict[str, Any]] | None = None,
        progress: TextIO | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.probe = probe
        self.progress_out = progress
        self.rng = random.Random(config.seed)
        self.prefix = config.prefix or f"lt-{os.urandom(4).hex()}"
        self.sent_at: list[array[float]] = []  # per sender identity, send time per seq
        self.cursor_sent_at: list[array[float]] = []
        self.ident_room: list[_Room] = []
        self.lat: array[float] = array("d")
        self.cursor_lat: array[float] = array("d")
        self.all_lat: list[array[float]] = []
        self.delivered = 0
        self.unknown_tags = 0
        self.rooms: list[_Room] = []
        self.checked: set[int] = set()
        self.result = LoadResult(config=asdict(config))
        self.close_codes: Counter[str] = Counter()
        self.finishing = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.churn_joins: list[float] = []
        self.late_syncs: list[float] = []
        self.step_errors = 0
        self.step_joins = 0
        self.step_leaves = 0
        self._status = ""
        self._started = 0.0
        self._deadline = math.inf
        self._planned = 0.0
        self._steps_started = 0.0

    # -- bookkeeping called by clients ----------------------------------------------------

    def new_ident(self, room: _Room) -> int:
        ident = len(self.sent_at)
        self.sent_at.append(array("d"))
        self.cursor_sent_at.append(array("d"))
        self.ident_room.append(room)
        room.idents.append(ident)
        return ident

    def error(self, message: str) -> None:
        self.result.errors += 1
        self.step_errors += 1
        if len(self.result.error_samples) < 20:
            self.result.error_samples.append(message[:300])

    def client_closed(self, client: LoadClient, code: int, reason: str) -> None:
        room = client.room
        if client in room.clients:
            room.clients.remove(client)
        if client.closing or self.finishing:
            return
        if client.synced_at == math.inf:
            return  # a failed join: reported by whoever awaited it
        self.close_codes[str(code)] += 1
        self.error(f"connection closed by the server: {code} {reason}".strip())
        if client.reconnects < self.config.max_reconnects and time.perf_counter() < self._deadline - 5:
            self._spawn(self._rejoin(room, client.role, client.reconnects + 1, delay=0.2))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _join(self, room: _Room, role: str, reconnects: int = 0) -> LoadClient | None:
        client = LoadClient(self, room, role, keep=room.index in self.checked)
        client.reconnects = reconnects
        room.clients.append(client)
        try:
            await client.connect(self.config.connect_timeout)
        except (OSError, TimeoutError, HandshakeError, ConnectionError) as exc:
            if client in room.clients:
                room.clients.remove(client)
            if client.ws is not None:
                client.ws.abort()
            client.closing = True
            self.error(f"join {room.name} failed: {exc.__class__.__name__}: {exc}")
            return None
        return client

    async def _rejoin(self, room: _Room, role: str, attempt: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.finishing:
            return
        self.result.reconnects += 1
        client = await self._join(room, role, attempt)
        if client is not None:
            self.churn_joins.append(client.join_ms / 1000)

    # -- phases ---------------------------------------------------------------------------

    async def run(self) -> LoadResult:
        cfg = self.config
        self._started = time.perf_counter()
        self._deadline = self._started + cfg.max_seconds
        cpu0 = time.process_time()
        raise_fd_limit(cfg.documents * (cfg.clients + 2) + 256)
        self._planned = len(cfg.rates) * (cfg.duration + cfg.drain)
        progress_task = asyncio.ensure_future(self._progress_loop()) if self.progress_out else None
        try:
            async with asyncio.timeout(cfg.max_seconds):
                await self._run_phases()
        except TimeoutError:
            self.result.aborted = f"stopped by --max-seconds ({cfg.max_seconds:g} s)"
        except LoadTestError as exc:
            self.result.aborted = str(exc)
        finally:
            self.finishing = True
            if progress_task is not None:
                progress_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress_task
                self._print_status(final=True)
            await self._close_all()
        self._check_convergence()
        self._finish(cpu0)
        return self.result

    async def _run_phases(self) -> None:
        cfg = self.config
        query = urlencode(cfg.params) if cfg.params else ""
        base = cfg.url.rstrip("/")
        for i in range(cfg.documents):
            name = f"{self.prefix}-{i}"
            self.rooms.append(_Room(i, name, f"{base}/{name}" + (f"?{query}" if query else "")))
        if cfg.check_rooms < 0 or cfg.check_rooms >= cfg.documents:
            self.checked = set(range(cfg.documents))
        elif cfg.check_rooms > 0:
            stride = cfg.documents / cfg.check_rooms
            self.checked = {int(i * stride) for i in range(cfg.check_rooms)}
        await self._connect_all()
        run_t0 = self._steps_started = time.perf_counter()
        total = len(cfg.rates) * cfg.duration
        late_at = run_t0 + cfg.late_at * total if "late" in cfg.mix else math.inf
        for index, rate in enumerate(cfg.rates):
            step = await self._step(index, rate, late_at)
            self.result.steps.append(step)
            late_at = math.inf if time.perf_counter() >= late_at else late_at
            past = step.lost or step.latency.p99_ms > cfg.stop_p99_ms
            if len(cfg.rates) > 1 and past and rate >= cfg.always_run_to:
                break  # past saturation: higher steps only pile up

    async def _connect_all(self) -> None:
        cfg = self.config
        self._status = "connecting"
        sem = asyncio.Semaphore(max(1, cfg.connect_concurrency))

        async def one(room: _Room) -> LoadClient | None:
            async with sem:
                return await self._join(room, "regular")

        t0 = time.perf_counter()
        order = [room for _ in range(cfg.clients) for room in self.rooms]
        clients = await asyncio.gather(*(one(room) for room in order))
        self.result.connect_seconds = round(time.perf_counter() - t0, 4)
        joined = [c for c in clients if c is not None]
        self.result.connected = len(joined)
        self.result.join_latency = LatencyStats.of(c.join_ms / 1000 for c in joined)
        if not joined:
            raise LoadTestError(f"no client could connect to {cfg.url} ({'; '.join(self.result.error_samples[:3])})")

    def _live_clients(self) -> list[LoadClient]:
        return [c for room in self.rooms for c in room.clients if c.live]

    async def _step(self, index: int, rate: float, late_at: float) -> StepResult:
        cfg = self.config
        step = StepResult(target_rate=rate, seconds=cfg.duration)
        typing = "typing" in cfg.mix
        type_rate = rate if typing else 0.0
        cursor_rate = (rate * cfg.cursor_ratio if typing else rate) if "cursor" in cfg.mix else 0.0
        seq_start = [len(a) for a in self.sent_at]
        self.lat = array("d")
        self.cursor_lat = array("d")
        self.delivered = 0
        self.step_errors = self.step_joins = self.step_leaves = 0
        probe0 = self.probe() if self.probe else None
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        end = t0 + cfg.duration
        sent = skipped = cursors = turn = 0
        lags = array("d")
        typists: list[list[Any]] = []
        live = self._live_clients()
        live_at = t0
        n_clients = cfg.documents * cfg.clients
        churn_rate = n_clients / cfg.churn_interval if "churn" in cfg.mix and cfg.churn_interval > 0 else 0.0
        next_churn = t0 + self.rng.expovariate(churn_rate) if churn_rate else math.inf
        catch_up = max(8, int(type_rate * 0.02))  # never burst more than 20 ms worth at once
        rng = self.rng
        self._status = f"step {index + 1}/{len(cfg.rates)} @ {_fmt_rate(rate)}/s"
        # One wake-up per millisecond at high rates; fewer when there is little to send.
        total_rate = type_rate + cursor_rate
        tick = max(cfg.tick, min(0.01, 1 / total_rate)) if total_rate > 0 else 0.05
        expected_wake = t0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            lags.append(now - expected_wake)
            if now - live_at > 0.25:  # refresh who is connected a few times a second
                live = self._live_clients()
                live_at = now
                typists = [t for t in typists if t[0].live]
            if live:
                due = int((now - t0) * type_rate) - sent - skipped
                if due > catch_up:
                    skipped += due - catch_up
                    due = catch_up
                want = max(1, int(len(live) * cfg.typists))
                for _ in range(due):
                    slot = None
                    for _attempt in range(4):  # a typist that left is replaced, not skipped
                        if len(typists) < want:
                            typists.append([rng.choice(live), rng.randint(*cfg.burst)])
                        slot = typists[turn % len(typists)]
                        turn += 1
                        if slot[0].live:
                            break
                        typists.remove(slot)
                        slot = None
                    if slot is None:
                        skipped += 1
                        continue
                    slot[0].type_one()
                    sent += 1
                    slot[1] -= 1
                    if slot[1] <= 0:
                        typists.remove(slot)
                if cursor_rate:
                    due_c = min(int((now - t0) * cursor_rate) - cursors, 64)
                    for _ in range(max(0, due_c)):
                        rng.choice(live).move_cursor()
                        cursors += 1
                if now >= next_churn:
                    next_churn = now + rng.expovariate(churn_rate)
                    if len(self.tasks) < 32:
                        self._spawn(self._churn_one(live))
                if now >= late_at:
                    late_at = math.inf
                    for room in self.rooms:
                        self._spawn(self._late_join(room))
            expected_wake = time.perf_counter() + tick
            await asyncio.sleep(tick)
        active = time.perf_counter() - t0
        cpu_active = time.process_time() - cpu0
        probe1 = self.probe() if self.probe else None  # CPU while under load (not the drain)
        # Drain: joins in flight finish, then wait until every update is everywhere (bounded).
        drain_t0 = time.perf_counter()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=cfg.drain)
        missing = self._missing(seq_start)
        while missing[1] and time.perf_counter() - drain_t0 < cfg.drain:
            await asyncio.sleep(0.05)
            missing = self._missing(seq_start)
        step.drain_seconds = round(time.perf_counter() - drain_t0, 3)
        step.seconds = round(active, 3)
        step.sent = sent
        step.skipped = skipped
        step.sent_per_second = round(sent / active, 1) if active > 0 else 0.0
        step.delivered = self.delivered
        step.delivered_per_second = round(self.delivered / active, 1) if active > 0 else 0.0
        step.expected, step.lost_deliveries, step.lost = missing
        step.latency = LatencyStats.of(self.lat)
        step.cursor_sent = cursors
        step.cursor_latency = LatencyStats.of(self.cursor_lat)
        step.generator_cpu = round(cpu_active / active, 3) if active > 0 else 0.0
        step.generator_lag_p99_ms = LatencyStats.of(lags).p99_ms
        step.joins, step.leaves, step.errors = self.step_joins, self.step_leaves, self.step_errors
        if probe0 is not None and probe1 is not None:
            step.server = _probe_delta(probe0, probe1, active)
        self.all_lat.append(self.lat)
        return step

    def _missing(self, seq_start: list[int]) -> tuple[int, int, int]:
        """(expected deliveries, missing deliveries, lost updates) for the updates of this step,
        over every client connected and synced now."""
        expected = missing = lost = 0
        sent_at = self.sent_at
        for room in self.rooms:
            receivers = [c for c in room.clients if c.live]
            for ident in room.idents:
                lo = seq_start[ident] if ident < len(seq_start) else 0
                hi = len(sent_at[ident])
                if hi <= lo:
                    continue
                lost_here: set[int] = set()
                for r in receivers:
                    if r.ident == ident:
                        continue
                    expected += hi - lo
                    arr = r.seen.get(ident)
                    segment = arr[lo:hi] if arr is not None else b""
                    gap = segment.count(0) + (hi - lo - len(segment))
                    if gap:
                        missing += gap
                        lost_here.update(s for s in range(lo, hi) if s - lo >= len(segment) or not segment[s - lo])
                lost += len(lost_here)
        return expected, missing, lost

    async def _churn_one(self, live: list[LoadClient]) -> None:
        candidates = [c for c in live if c.live and c.role != "late"]
        if not candidates:
            return
        client = self.rng.choice(candidates)
        room = client.room
        client.leave()
        self.step_leaves += 1
        if client in room.clients:
            room.clients.remove(client)
        joined = await self._join(room, "regular")
        if joined is not None:
            self.step_joins += 1
            self.churn_joins.append(joined.join_ms / 1000)

    async def _late_join(self, room: _Room) -> None:
        client = await self._join(room, "late")
        if client is not None:
            self.step_joins += 1
            self.late_syncs.append(client.sync_ms / 1000)
            self.result.late_step2_bytes = max(self.result.late_step2_bytes, client.step2_bytes)

    async def _close_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        clients = [c for room in self.rooms for c in room.clients]
        self._final = [c for c in clients if c.live]
        for c in clients:
            c.closing = True
            if c.ws is not None:
                c.ws.close(1000, "")
        waits = [c.ws.done for c in clients if c.ws is not None and not c.ws.done.done()]
        if waits:
            await asyncio.wait(waits, timeout=3)
        for c in clients:
            if c.ws is not None and not c.ws.done.done():
                c.ws.abort()

    # -- convergence ----------------------------------------------------------------------

    def _check_convergence(self) -> None:
        from pycrdt import Doc, Text

        final = getattr(self, "_final", [])
        by_room: dict[int, list[LoadClient]] = {}
        for c in final:
            by_room.setdefault(c.room.index, []).append(c)
        checked = diverged = applied = 0
        failures: list[str] = []
        t0 = time.perf_counter()
        for index in sorted(self.checked):
            clients = by_room.get(index, [])
            if not clients:
                continue
            texts = []
            for c in clients:
                doc = Doc()
                text = doc.get("content", type=Text)
                try:
                    with doc.transaction():
                        for frame in (*(c.own or ()), *(c.keep or ())):
                            doc.apply_update(decode(frame).payload)
                            applied += 1
                    texts.append(str(text))
                except (ProtocolError, ValueError) as exc:
                    failures.append(f"{self.rooms[index].name}: {exc}")
                    texts.append(None)
            checked += 1
            if len(set(texts)) != 1 or None in texts:
                diverged += 1
                if len(failures) < 5:
                    lengths = sorted({len(t) if t is not None else -1 for t in texts})
                    failures.append(f"{self.rooms[index].name}: {len(set(texts))} different texts, lengths {lengths}")
        # Every room, cheaply: every live client has seen every update of its room.
        tag_missing = 0
        for room in self.rooms:
            live = [c for c in final if c.room is room]
            for ident in room.idents:
                n = len(self.sent_at[ident])
                for r in live:
                    if r.ident != ident and n:
                        arr = r.seen.get(ident, b"")
                        tag_missing += arr[:n].count(0) + max(0, n - len(arr))
        self.result.convergence = {
            "rooms_checked": checked,
            "rooms_diverged": diverged,
            "updates_applied": applied,
            "seconds": round(time.perf_counter() - t0, 3),
            "missing_deliveries_all_rooms": tag_missing,
            "failures": failures,
        }
        self.result.converged = diverged == 0 and tag_missing == 0 and not failures

    def _finish(self, cpu0: float) -> None:
        r = self.result
        r.seconds = round(time.perf_counter() - self._started, 3)
        r.generator_cpu_seconds = round(time.process_time() - cpu0, 3)
        r.close_codes = dict(self.close_codes)
        r.churn_join_latency = LatencyStats.of(self.churn_joins)
        r.late_sync = LatencyStats.of(self.late_syncs)
        r.sent = sum(s.sent for s in r.steps)
        r.delivered = sum(s.delivered for s in r.steps)
        r.lost = sum(s.lost for s in r.steps)
        r.latency = LatencyStats.of(v for lat in self.all_lat for v in lat)
        if self.unknown_tags:
            self.error(f"{self.unknown_tags} delivered tag(s) matched no update sent")

    # -- progress -------------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        while True:
            self._print_status()
            await asyncio.sleep(0.5)

    def _print_status(self, final: bool = False) -> None:
        out = self.progress_out
        if out is None:
            return
        elapsed = time.perf_counter() - self._started
        since = elapsed - (self._steps_started - self._started) if self._steps_started else 0.0
        share = min(1.0, since / self._planned) if self._planned else 1.0
        width = 24
        filled = int(share * width)
        bar = "#" * filled + "-" * (width - filled)
        lat = self.lat
        p99 = ""
        if lat:
            tail = sorted(lat[-5000:])
            p99 = f" p99 {tail[min(len(tail) - 1, int(len(tail) * 0.99))] * 1000:.1f}ms"
        conns = sum(len(room.clients) for room in self.rooms)
        line = (f"[{bar}] {elapsed:5.1f}s {self._status}  conns {conns}  sent {sum(map(len, self.sent_at))}"
                f"  delivered {self.delivered}{p99}  errors {self.result.errors}")
        tty = out.isatty()
        with contextlib.suppress(OSError, ValueError):
            if tty:
                out.write("\r\x1b[K" + line + ("\n" if final else ""))
            elif final or int(elapsed * 2) % 10 == 0:  # not a terminal: a line every ~5 s
                out.write(line + "\n")
            out.flush()


def _probe_delta(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in after.items():
        if key.endswith("cpu_seconds") and isinstance(value, (int, float)) and key in before:
            delta = value - before[key]
            out[key] = round(delta, 3)
            out[key.replace("cpu_seconds", "cpu_percent")] = round(100 * delta / seconds, 1) if seconds else 0.0
        else:
            out[key] = value
    return out


async def run_load(config: LoadConfig, **kw: Any) -> LoadResult:
    return await Runner(config, **kw).run()


# -- single-purpose measurements (bench) ---------------------------------------------------


async def _connect_synced(url: str, timeout: float, keep: bool = False) -> tuple[WSClient, dict[str, Any]]:
    """Connect a fresh client, send step 1, wait for step 2; return it with timings (ms)."""
    info: dict[str, Any] = {"step2": None}
    loop = asyncio.get_running_loop()
    synced: asyncio.Future[None] = loop.create_future()
    frames: list[bytes] = []

    def on_message(data: bytes, now: float) -> None:
        if data[:2] == b"\x00\x01" and not synced.done():
            info["sync_ms"] = (now - info["step1_at"]) * 1000
            info["step2_bytes"] = len(data)
            if keep:
                info["step2"] = data
            synced.set_result(None)
        elif data[:2] == b"\x00\x00" and ws is not None:
            ws.send(_STEP2_EMPTY)
        elif keep:
            frames.append(data)

    def on_close(code: int, reason: str) -> None:
        info["close"] = (code, reason)
        if not synced.done():
            synced.set_exception(ConnectionError(f"closed before sync: {code} {reason}"))

    def bind(proto: WSClient) -> None:
        nonlocal ws
        ws = proto

    ws: WSClient | None = None
    t0 = time.perf_counter()
    await ws_connect(url, on_message, on_close, timeout, bind=bind)
    assert ws is not None
    info["step1_at"] = time.perf_counter()
    ws.send(_STEP1_EMPTY)
    try:
        async with asyncio.timeout(timeout):
            await synced
    except BaseException:
        ws.abort()
        raise
    info["join_ms"] = (time.perf_counter() - t0) * 1000
    info["frames"] = frames
    return ws, info


async def large_document(
    url: str,
    *,
    size: int = 1024 * 1024,
    edits: int = 10_000,
    joiners: int = 5,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Write a `size`-byte text then `edits` single-character inserts scattered through it
    (each splits an item, as real editing does), wait until an observer has them all, then
    time `joiners` late joiners one after another (step 1 sent -> step 2 received)."""
    check_loopback(url)
    rng = random.Random(7)
    writer, _ = await _connect_synced(url, timeout)
    observer, obs = await _connect_synced(url, timeout)
    got: set[tuple[int, int]] = set()
    done = asyncio.get_running_loop().create_future()
    want = edits + 1

    def on_obs(data: bytes, now: float) -> None:
        for tag in tags_in(data):
            got.add(tag)
        if len(got) >= want and not done.done():
            done.set_result(None)

    observer.on_message = on_obs
    try:
        cid = random.getrandbits(31) + 1
        filler = (b"lorem ipsum dolor sit amet " * (size // 27 + 1))[: max(0, size - 8)]
        head = b"\x020.0\x03"
        t0 = time.perf_counter()
        writer.send(_update_frame(encode_text_insert(cid, 0, head + filler)))
        length = len(head) + len(filler)
        editor = random.getrandbits(31) + 1
        clock = 0
        for i in range(edits):
            pos = rng.randrange(len(head), length - 1)  # inside the text: after char pos
            text = b"\x021.%d\x03" % i
            writer.send(_update_frame(encode_text_insert(editor, clock, text, (cid, pos), (cid, pos + 1))))
            clock += len(text)
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the socket drain
        async with asyncio.timeout(timeout):
            await done
        write_seconds = time.perf_counter() - t0
        syncs = []
        step2_bytes = 0
        for _ in range(joiners):
            ws, info = await _connect_synced(url, timeout)
            syncs.append(info["sync_ms"])
            step2_bytes = info["step2_bytes"]
            await ws.aclose()
        return {
            "document_bytes": length,
            "edits": edits,
            "write_and_relay_seconds": round(write_seconds, 3),
            "late_joiners": joiners,
            "sync_ms": [round(s, 3) for s in syncs],
            "sync_ms_median": round(sorted(syncs)[len(syncs) // 2], 3) if syncs else None,
            "sync_ms_max": round(max(syncs), 3) if syncs else None,
            "step2_bytes": step2_bytes,
            "observer_join_ms": round(obs["join_ms"], 3),
        }
    finally:
        await asyncio.gather(writer.aclose(), observer.aclose())


async def cold_rooms(
    url: str, names: list[str], *, timeout: float = 10.0, max_seconds: float = 300.0
) -> dict[str, Any]:
    """Open, sync and close each room in turn (one after another); rooms per second."""
    check_loopback(url)
    base = url.rstrip("/")
    times: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    for name in names:
        if time.perf_counter() > deadline:
            errors.append("stopped at max_seconds")
            break
        one = time.perf_counter()
        try:
            ws, _info = await _connect_synced(f"{base}/{name}", timeout)
            await ws.aclose(timeout)
        except (OSError, TimeoutError, ConnectionError) as exc:
            errors.append(f"{name}: {exc}"[:200])
            continue
        times.append(time.perf_counter() - one)
    total = time.perf_counter() - t0
    return {
        "rooms": len(times),
        "seconds": round(total, 3),
        "rooms_per_second": round(len(times) / total, 1) if total > 0 else 0.0,
        "open_sync_close": asdict(LatencyStats.of(times)),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def seed_rooms(url: str, names: list[str], *, text_bytes: int = 2048, edits: int = 20,
                     concurrency: int = 32, timeout: float = 10.0) -> int:
    """Give each room some content (a text and a few edits) so that loading it is real work."""
    check_loopback(url)
    base = url.rstrip("/")
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(name: str) -> None:
        nonlocal done
        async with sem:
            ws, _ = await _connect_synced(f"{base}/{name}", timeout)
            cid = random.getrandbits(31) + 1
            body = (b"seed text " * (text_bytes // 10 + 1))[:text_bytes]
            ws.send(_update_frame(encode_text_insert(cid, 0, body)))
            editor = random.getrandbits(31) + 1
            clock = 0
            for i in range(edits):
                pos = random.randrange(0, text_bytes - 1)
                text = b"e%d" % i
                ws.send(_update_frame(encode_text_insert(editor, clock, text, (cid, pos), (cid, pos + 1))))
                clock += len(text)
            # A step 1 round trip: once its answer arrives, the updates before it were applied.
            probe = asyncio.get_running_loop().create_future()
            ws.on_message = lambda data, now: (data[:2] == b"\x00\x01" and not probe.done()
                                               and probe.set_result(None))
            ws.send(_step1_frame(b"\x00"))
            async with asyncio.timeout(timeout):
                await probe
            await ws.aclose(timeout)
            done += 1

    await asyncio.gather(*(one(n) for n in names))
    return done


async def hold_connections(
    url: str, documents: int, per_document: int, *, concurrency: int = 200, timeout: float = 30.0,
    prefix: str | None = None,
) -> tuple[list[WSClient], dict[str, Any]]:
    """Open documents x per_document synced connections; return them (still open) and timings."""
    check_loopback(url)
    raise_fd_limit(documents * per_document + 256)
    base = url.rstrip("/")
    prefix = prefix or f"idle-{os.urandom(3).hex()}"
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    joins: list[float] = []

    async def one(i: int) -> WSClient | None:
        async with sem:
            try:
                ws, info = await _connect_synced(f"{base}/{prefix}-{i % documents}", timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors.append(str(exc)[:200])
                return None
            joins.append(info["join_ms"] / 1000)
            return ws

    t0 = time.perf_counter()
    opened = await asyncio.gather(*(one(i) for i in range(documents * per_document)))
    seconds = time.perf_counter() - t0
    clients = [ws for ws in opened if ws is not None]
    return clients, {
        "connections": len(clients),
        "open_and_sync_seconds": round(seconds, 3),
        "join_latency": asdict(LatencyStats.of(joins)),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def close_all(clients: list[WSClient], timeout: float = 5.0) -> None:
    for ws in clients:
        ws.close()
    waits = [ws.done for ws in clients if not ws.done.done()]
    if waits:
        await asyncio.wait(waits, timeout=timeout)
    for ws in clients:
        if not ws.done.done():
            ws.abort()


# -- the summary table ---------------------------------------------------------------------


def summary_table(result: LoadResult) -> str:
    cfg = result.config
    lines = [
        f"target   {cfg['url']}  documents {cfg['documents']} x clients {cfg['clients']}  "
        f"mix {','.join(cfg['mix']) or '-'}",
        f"connect  {result.connected} synced in {result.connect_seconds:.2f} s  "
        f"(join p50 {result.join_latency.p50_ms:.1f} ms, p99 {result.join_latency.p99_ms:.1f} ms)",
        "",
        f"{'rate/s':>8} {'sent/s':>9} {'dlv/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'lost':>6} {'gen cpu':>7} {'server cpu':>10}",
    ]
    for s in result.steps:
        server = s.server.get("server_cpu_percent")
        lines.append(
            f"{s.target_rate:>8.0f} {s.sent_per_second:>9.0f} {s.delivered_per_second:>9.0f} "
            f"{s.latency.p50_ms:>8.2f} {s.latency.p95_ms:>8.2f} {s.latency.p99_ms:>8.2f} {s.latency.max_ms:>8.2f} "
            f"{s.lost:>6} {s.generator_cpu * 100:>6.0f}% {'' if server is None else f'{server:.0f}%':>10}"
        )
    cursor = [s for s in result.steps if s.cursor_latency.count]
    if cursor:
        c = cursor[-1].cursor_latency
        lines.append(f"cursor   {sum(s.cursor_sent for s in cursor)} moves, last step p50 {c.p50_ms:.2f} ms "
                     f"p99 {c.p99_ms:.2f} ms")
    if result.churn_join_latency.count:
        j = result.churn_join_latency
        lines.append(f"rejoins  {j.count}, join p50 {j.p50_ms:.1f} ms p99 {j.p99_ms:.1f} ms")
    if result.late_sync.count:
        j = result.late_sync
        lines.append(f"late     {j.count} joiners, step 1 -> step 2 p50 {j.p50_ms:.1f} ms max {j.max_ms:.1f} ms "
                     f"({result.late_step2_bytes} bytes)")
    conv = result.convergence
    lines += [
        "",
        f"sent {result.sent}  delivered {result.delivered}  lost {result.lost}  "
        f"errors {result.errors}  reconnects {result.reconnects}"
        + (f"  close codes {result.close_codes}" if result.close_codes else ""),
        f"converged {'yes' if result.converged else 'NO'} ({conv.get('rooms_checked', 0)} rooms rebuilt with pycrdt, "
        f"{conv.get('missing_deliveries_all_rooms', 0)} deliveries missing over all rooms)",
    ]
    sat = result.saturation()
    if len(result.steps) > 1:
        lines.append(f"saturation (p99 < 100 ms, no loss): {'none' if sat is None else f'{sat:.0f}/s'}")
    if result.aborted:
        lines.append(f"ABORTED: {result.aborted}")
    for sample in result.error_samples[:5]:
        lines.append(f"error: {sample}")
    return "\n".join(lines)


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LoadTestError(f"--param expects k=v, got {pair!r}")
        out[key] = value
    return out


def parse_mix(text: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = set(items) - set(MIXES)
    if unknown:
        raise LoadTestError(f"unknown mix element(s) {', '.join(sorted(unknown))}; choose from {', '.join(MIXES)}")
    return items


def _seen_bits(seen: dict[int, bytearray], ident: int, seq: int) -> bytearray:
    """The delivered-flags of one sender, grown to hold `seq`."""
    arr = seen.get(ident)
    if arr is None:
        arr = seen[ident] = bytearray(max(256, seq + 256))
    elif seq >= len(arr):
        arr.extend(bytes(max(seq + 256, 2 * len(arr)) - len(arr)))
    return arr
