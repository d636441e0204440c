"""The stepped schedule: connect, send at the target rate, measure deliveries, drain, check convergence."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TextIO
from urllib.parse import urlencode

from collab_server.core.protocol import (
    ProtocolError,
    decode,
)

from .client import HandshakeError, raise_fd_limit
from .config import LoadConfig, LoadTestError
from .report import LatencyStats, LoadResult, StepResult, fmt_rate
from .workload import LoadClient, RoomSlot

# -- the runner ----------------------------------------------------------------------------


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
        self.ident_room: list[RoomSlot] = []
        self.lat: array[float] = array("d")
        self.cursor_lat: array[float] = array("d")
        self.all_lat: list[array[float]] = []
        self.delivered = 0
        self.unknown_tags = 0
        self.rooms: list[RoomSlot] = []
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

    def new_ident(self, room: RoomSlot) -> int:
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

    async def _join(self, room: RoomSlot, role: str, reconnects: int = 0) -> LoadClient | None:
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

    async def _rejoin(self, room: RoomSlot, role: str, attempt: int, delay: float) -> None:
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
            path = base if cfg.dialect == "hocuspocus" else f"{base}/{name}"  # Hocuspocus: names in messages
            self.rooms.append(RoomSlot(i, name, path + (f"?{query}" if query else "")))
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

        async def one(room: RoomSlot) -> LoadClient | None:
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
        self._status = f"step {index + 1}/{len(cfg.rates)} @ {fmt_rate(rate)}/s"
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

    async def _late_join(self, room: RoomSlot) -> None:
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
            texts: list[str | None] = []
            for c in clients:
                doc: Doc[Any] = Doc()
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


