"""Process-wide counters in Prometheus text format.

A dict increment per event is all the hot path can afford (prometheus_client takes a lock
and a label lookup per call); the exposition format is simple enough to write here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

_HELP = {
    "collab_connections_opened_total": "WebSocket connections accepted",
    "collab_connections_closed_total": "WebSocket connections closed, by close code",
    "collab_messages_in_total": "y-protocols messages received, by kind",
    "collab_messages_out_total": "frames queued to clients",
    "collab_bytes_in_total": "bytes received in binary frames",
    "collab_bytes_out_total": "bytes queued to clients",
    "collab_rejected_frames_total": "frames rejected, by reason",
    "collab_send_queue_overflows_total": "clients closed because their send queue overflowed",
    "collab_awareness_dropped_total": "awareness entries dropped (invalid JSON or not owned)",
    "collab_wal_commits_total": "write-ahead group commits",
    "collab_wal_updates_total": "updates written ahead",
    "collab_wal_retries_total": "write-ahead attempts retried because PostgreSQL was unavailable",
    "collab_wal_refused_total": "updates refused because the write-ahead backlog was full",
    "collab_wal_dropped_total": "updates dropped because their document no longer exists",
    "collab_compactions_total": "compactions committed",
    "collab_compaction_failures_total": "compactions that failed and will be retried",
    "collab_rooms_loaded_total": "rooms loaded",
    "collab_rooms_unloaded_total": "rooms unloaded",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, float] = defaultdict(float)
        self.labelled: dict[tuple[str, str, str], float] = defaultdict(float)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.commit_batches = 0
        self.commit_updates = 0
        self.commit_seconds = 0.0

    def inc(self, name: str, value: float = 1) -> None:
        self.counters[name] += value

    def inc_label(self, name: str, label: str, value: str, amount: float = 1) -> None:
        self.labelled[(name, label, value)] += amount

    def gauge(self, name: str, fn: Callable[[], float]) -> None:
        self.gauges[name] = fn

    def observe_commit(self, updates: int, seconds: float) -> None:
        self.commit_batches += 1
        self.commit_updates += updates
        self.commit_seconds += seconds

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()

        def head(name: str, kind: str) -> None:
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {_HELP.get(name, name)}")
                lines.append(f"# TYPE {name} {kind}")

        for name in sorted(self.counters):
            head(name, "counter")
            lines.append(f"{name} {self.counters[name]:g}")
        for (name, label, value), amount in sorted(self.labelled.items()):
            head(name, "counter")
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name}{{{label}="{escaped}"}} {amount:g}')
        for name in sorted(self.gauges):
            head(name, "gauge")
            try:
                lines.append(f"{name} {float(self.gauges[name]()):g}")
            except Exception:  # a gauge must never break the scrape
                continue
        head("collab_wal_commit_batches", "counter")
        lines.append(f"collab_wal_commit_batches {self.commit_batches}")
        head("collab_wal_commit_seconds_total", "counter")
        lines.append(f"collab_wal_commit_seconds_total {self.commit_seconds:.6f}")
        return "\n".join(lines) + "\n"


METRICS = Metrics()
