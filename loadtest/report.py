"""What a run measured: latency statistics, per-step and whole-run results, the summary table."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


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

    @property
    def valid(self) -> bool:
        """The generator kept its schedule, so the step measured the server, not the generator:
        it sent ≥ 95 % of the target, used < 90 % of its core, and woke up < 10 ms late (p99)."""
        return (self.sent_per_second >= 0.95 * self.target_rate and self.generator_cpu < 0.9
                and self.generator_lag_p99_ms < 10.0)


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
            if (step.lost == 0 and step.latency.count and step.latency.p99_ms < p99_ms and step.valid
                    and step.sent_per_second >= min_share * step.target_rate):
                best = step.target_rate if best is None else max(best, step.target_rate)
        return best

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for step, data in zip(self.steps, out["steps"], strict=True):
            data["valid"] = step.valid
        out["ok"] = self.ok
        out["saturation_rate"] = self.saturation()
        return out




def fmt_rate(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"




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


