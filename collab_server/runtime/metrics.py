"""The metrics extension: counts hub events and writes `/metrics` in Prometheus text format.

The exposition format is simple enough to write here; the counters it reads are plain dict
increments made by their owners (hub, rooms, write-ahead, bus), one shared `Counters` per
process handed to each by the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from functools import partial

from collab_server.core.connection import Connection
from collab_server.core.counters import Counters
from collab_server.core.extension import Extension
from collab_server.core.hub import Hub
from collab_server.core.room import Room

_HELP = {
    "collab_connections_opened_total": "WebSocket connections accepted",
    "collab_connections_closed_total": "WebSocket connections closed, by close code",
    "collab_messages_out_total": "frames queued to clients",
    "collab_bytes_in_total": "bytes received in binary frames",
    "collab_rejected_frames_total": "frames rejected, by reason",
    "collab_send_queue_overflows_total": "clients closed because their send queue overflowed",
    "collab_awareness_dropped_total": "awareness entries dropped (invalid JSON or not owned)",
    "collab_wal_commits_total": "write-ahead group commits",
    "collab_wal_updates_total": "updates written ahead",
    "collab_wal_commit_seconds_total": "time spent in write-ahead commits",
    "collab_wal_retries_total": "write-ahead attempts retried because PostgreSQL was unavailable",
    "collab_wal_refused_total": "updates refused because the write-ahead backlog was full",
    "collab_wal_dropped_total": "updates dropped because their document no longer exists",
    "collab_compactions_total": "compactions committed",
    "collab_compaction_failures_total": "compactions that failed and will be retried",
    "collab_rooms_loaded_total": "rooms loaded",
    "collab_rooms_unloaded_total": "rooms unloaded",
    "collab_bus_published_total": "entries published to the cross-process bus",
    "collab_bus_received_total": "entries received from other processes",
    "collab_rooms": "rooms open on this process",
    "collab_connections": "connections open on this process",
    "collab_wal_backlog_bytes": "bytes waiting for the next write-ahead commit",
    "collab_loop_lag_seconds": "event-loop lag: how late a 50 ms timer fired",
    "collab_gc_frozen_objects": "objects frozen out of the cyclic collector's scans at start",
    "collab_gc_collections_gen0": "cyclic collections of the youngest generation since start",
    "collab_gc_collections_gen1": "cyclic collections of the middle generation since start",
    "collab_gc_collections_gen2": "full cyclic collections since start",
}

LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LAG_PROBE_SECONDS = 0.05


class LoopLag:
    """How late the event loop runs a timer: the stall every connection feels at that moment."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.total = 0.0
        self.max = 0.0
        self.recent: deque[float] = deque(maxlen=int(1 / LAG_PROBE_SECONDS))  # the last second's probes
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def observe(self, lag: float) -> None:
        self.counts[bisect_left(LAG_BUCKETS, lag)] += 1
        self.total += lag
        self.max = max(self.max, lag)
        self.recent.append(lag)

    def summary(self) -> dict[str, float]:
        """For the console: the last second's worst stall beside the all-time one, in milliseconds."""
        return {"last_second_max_ms": round(max(self.recent, default=0.0) * 1000, 2),
                "max_ms": round(self.max * 1000, 2)}

    async def _probe(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.observe(max(0.0, time.perf_counter() - started - LAG_PROBE_SECONDS))

    def render(self, lines: list[str]) -> None:
        name = "collab_loop_lag_seconds"
        lines.append(f"# HELP {name} {_HELP[name]}")
        lines.append(f"# TYPE {name} histogram")
        cumulative = 0
        for bound, count in zip(LAG_BUCKETS, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        cumulative += self.counts[-1]
        lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {cumulative}")


def _gc_collections(generation: int) -> float:
    return float(gc.get_stats()[generation]["collections"])


class Metrics(Extension):
    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.gauges: dict[str, Callable[[], float]] = {}
        self.lag = LoopLag()

    async def on_stop(self) -> None:
        await self.lag.stop()

    async def on_start(self, hub: Hub) -> None:
        self.lag.start()
        self.gauges["collab_rooms"] = lambda: hub.room_count
        self.gauges["collab_connections"] = lambda: hub.connections
        self.gauges["collab_wal_backlog_bytes"] = lambda: hub.storage.backlog_bytes
        self.gauges["collab_gc_frozen_objects"] = gc.get_freeze_count
        for generation in range(3):
            self.gauges[f"collab_gc_collections_gen{generation}"] = partial(_gc_collections, generation)

    def on_loaded(self, room: Room) -> None:
        self.counters.inc("collab_rooms_loaded_total")

    def on_unloaded(self, room: Room) -> None:
        self.counters.inc("collab_rooms_unloaded_total")

    def on_join(self, room: Room, conn: Connection) -> None:
        self.counters.inc("collab_connections_opened_total")

    def on_leave(self, room: Room, conn: Connection) -> None:
        self.counters.inc_label("collab_connections_closed_total", "code", str(conn.close_code or 1000))

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()

        def head(name: str, kind: str) -> None:
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {_HELP.get(name, name)}")
                lines.append(f"# TYPE {name} {kind}")

        for name in sorted(self.counters.values):
            head(name, "counter")
            lines.append(f"{name} {self.counters.values[name]:g}")
        for (name, label, value), amount in sorted(self.counters.labelled.items()):
            head(name, "counter")
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name}{{{label}="{escaped}"}} {amount:g}')
        for name in sorted(self.gauges):
            try:
                reading = float(self.gauges[name]())
            except Exception:  # a gauge must never break the scrape
                continue
            head(name, "gauge")
            lines.append(f"{name} {reading:g}")
        self.lag.render(lines)
        return "\n".join(lines) + "\n"
