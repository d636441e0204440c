"""The standard benchmark: this server against the y-websocket reference server, same load.

    python -m bench.run [--scenarios fanout,idle,large,cold,crash] [--servers ours,ref] [--quick]

Each server runs alone, pinned to CPU 0 (`taskset -c 0`, with our PostgreSQL and Redis); the
load generator (this process) is pinned to CPU 1. Results go to bench/results/<scenario>.json,
bench/results/summary.json and bench/results/chart.png, and the table in bench/README.md is
rewritten. See bench/README.md for what each scenario measures. `--quick` is a smoke run
(seconds per scenario; its numbers mean nothing). Every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.servers import ROOT, Backing, OurServer, RefServer, ServerBase, cpus
from loadtest import (
    LoadConfig,
    close_all,
    cold_rooms,
    hold_connections,
    large_document,
    run_load,
    seed_rooms,
)
from loadtest.report import LoadResult

T = TypeVar("T")
SCENARIOS = ("fanout", "idle", "large", "cold", "crash")
SERVERS = {"ours": "collab-server", "ref": "y-websocket"}
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
KIB = 1024

# The absolute bars (2 cores: the server on one, the load generator on the other); the rest of
# issue 14's targets are ratios to the reference in the same run, in `headline`.
TARGETS = {
    "fanout_saturation_per_s": 16_000,
    "crash_window_ms": 10.0,
}


@dataclass
class Plan:
    quick: bool
    fanout_docs: int = 50
    fanout_clients: int = 4
    fanout_steps: tuple[float, ...] = (500, 1000, 2000, 4000, 8000, 12000, 16000, 20000)
    fanout_seconds: float = 10.0
    fanout_drain: float = 3.0
    cpu_compare_rate: float = 8000.0
    idle_docs: int = 100
    idle_per_doc: int = 50
    idle_rounds: int = 3
    large_bytes: int = 1024 * 1024
    large_edits: int = 10_000
    large_joiners: int = 5
    cold_rooms: int = 1000
    cold_parallel: int = 8
    cold_rounds: int = 3
    crash_kills: int = 20

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True, fanout_docs=10, fanout_steps=(200, 1000), fanout_seconds=2.0, fanout_drain=1.5,
            cpu_compare_rate=1000.0, idle_docs=10, idle_per_doc=20, idle_rounds=1, large_bytes=64 * 1024,
            large_edits=500, large_joiners=3, cold_rooms=50, cold_rounds=1, crash_kills=2,
        )


@dataclass
class Context:
    plan: Plan
    server_cpu: int | None
    generator_cpu: int | None
    servers: tuple[str, ...]
    log_dir: Path
    backing: Backing | None = None
    notes: list[str] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)

    def make_server(self, which: str) -> ServerBase:
        if which == "ours":
            assert self.backing is not None
            return OurServer(self.backing, self.server_cpu, self.log_dir, self.server_env)
        return RefServer(self.server_cpu, self.log_dir)


def aio(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop

        return uvloop.run(fn())
    except ImportError:  # pragma: no cover
        return asyncio.run(fn())


class Generator:
    """The load generator's (this process's) share of its core since creation: near 1.0 it, not
    the server, set the pace, and the figure measured the generator."""

    BOUND = 0.9

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def share(self) -> float:
        wall = time.perf_counter() - self.wall
        return round((time.process_time() - self.cpu) / wall, 2) if wall > 0 else 0.0


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def running(ctx: Context, which: str):  # type: ignore[no-untyped-def]
    server = ctx.make_server(which).start()
    try:
        yield server
    finally:
        server.stop()


# -- scenarios -----------------------------------------------------------------------------


def each_server(ctx: Context, one: Callable[[Context, str], dict[str, Any]]) -> dict[str, Any]:
    """Run `one` for every server; a failure is recorded for that server and the others still run."""
    out: dict[str, Any] = {}
    for which in ctx.servers:
        try:
            out[which] = one(ctx, which)
        except Exception as exc:
            log(f"{one.__name__} on {SERVERS[which]} failed: {exc.__class__.__name__}: {exc}")
            out[which] = {"error": f"{exc.__class__.__name__}: {exc}"}
    return out


def settle(server: ServerBase, quiet: float = 0.02, window: float = 0.5, limit: float = 20.0) -> float:
    """Wait until the server (and its PostgreSQL and Redis) use under `quiet` of a core: what one
    server still does after its step (a compaction, an unload) must not be measured against the other."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = server.probe()
        time.sleep(window)
        after = server.probe()
        busy = sum(after.get(k, 0.0) - before.get(k, 0.0) for k in ("server_cpu_seconds", "database_cpu_seconds"))
        if busy / window < quiet:
            break
    return round(time.monotonic() - t0, 1)


def fanout(ctx: Context) -> dict[str, Any]:
    """Both servers run side by side (idle between their turns) and take each step in turn, the
    order swapped at every step: the machine drifts (the same step differs by a fifth between runs
    minutes apart here), and a step measured on both within half a minute keeps the ratio honest."""
    p = ctx.plan
    log(f"fan-out: {p.fanout_docs} x {p.fanout_clients}, steps {p.fanout_steps}, servers interleaved per step")
    servers: dict[str, ServerBase] = {}
    merged: dict[str, LoadResult] = {}
    out: dict[str, Any] = {}
    done: set[str] = set()
    try:
        for which in ctx.servers:
            try:
                servers[which] = ctx.make_server(which).start()
            except Exception as exc:
                log(f"fan-out: {SERVERS[which]} did not start: {exc}")
                out[which] = {"error": f"{exc.__class__.__name__}: {exc}"}
        for index, rate in enumerate(p.fanout_steps):
            order = list(servers) if index % 2 == 0 else list(reversed(servers))
            for which in order:
                if which in done or which in out:
                    continue
                server = servers[which]
                settled = settle(server)
                config = LoadConfig(
                    url=server.ws_url, documents=p.fanout_docs, clients=p.fanout_clients, steps=(rate,),
                    duration=p.fanout_seconds, drain=p.fanout_drain, mix=("typing",), check_rooms=4,
                    stop_p99_ms=1000.0, always_run_to=p.cpu_compare_rate,
                    max_seconds=60 + p.fanout_seconds + p.fanout_drain,
                )
                log(f"fan-out on {SERVERS[which]}: {rate:,.0f} updates/s (settled in {settled} s)")
                try:
                    result = aio(lambda config=config, server=server: run_load(
                        config, probe=server.probe, progress=sys.stderr))
                except Exception as exc:
                    log(f"fan-out on {SERVERS[which]} failed: {exc.__class__.__name__}: {exc}")
                    out[which] = {"error": f"{exc.__class__.__name__}: {exc}"}
                    continue
                if which not in merged:
                    merged[which] = result
                else:
                    total = merged[which]
                    total.steps += result.steps
                    total.lost += result.lost
                    total.errors += result.errors
                    total.converged = total.converged and result.converged
                    total.aborted = total.aborted or result.aborted
                step = result.steps[-1] if result.steps else None
                if step is None or (rate >= p.cpu_compare_rate and (step.lost or step.latency.p99_ms > 1000.0)):
                    done.add(which)  # past saturation: higher steps only pile up
    finally:
        for server in servers.values():
            server.stop()
    for which, result in merged.items():
        data = result.as_dict()
        at = [s for s in result.steps if s.target_rate == p.cpu_compare_rate]
        data["headline"] = {
            "saturation_per_s": result.saturation(),
            "cpu_compare_rate": p.cpu_compare_rate,
            "server_cpu_percent_at_compare_rate": at[0].server.get("server_cpu_percent") if at else None,
            "database_cpu_percent_at_compare_rate": at[0].server.get("database_cpu_percent") if at else None,
            "max_generator_cpu": max((s.generator_cpu for s in result.steps), default=0.0),
        }
        out[which] = data
    return out


def idle(ctx: Context) -> dict[str, Any]:
    """`idle_rounds` rounds alternating the servers, each on a fresh process; each server's median
    round is reported (every round is in idle.json), as for cold rooms."""
    p = ctx.plan
    rounds: dict[str, list[dict[str, Any]]] = {which: [] for which in ctx.servers}
    out: dict[str, Any] = {}
    for round_ in range(p.idle_rounds):
        for which in ctx.servers if round_ % 2 == 0 else tuple(reversed(ctx.servers)):
            if which in out:
                continue
            log(f"idle connections on {SERVERS[which]}, round {round_ + 1}/{p.idle_rounds}: "
                f"{p.idle_docs} documents x {p.idle_per_doc}")
            try:
                rounds[which].append(idle_round(ctx, which))
            except Exception as exc:
                log(f"idle on {SERVERS[which]} failed: {exc.__class__.__name__}: {exc}")
                out[which] = {"error": f"{exc.__class__.__name__}: {exc}"}
    for which, measured in rounds.items():
        if which in out or not measured:
            continue
        median = _median_round(measured, "open_and_sync_seconds")
        out[which] = {**median, "rounds": measured,
                      "open_and_sync_seconds_rounds": [r["open_and_sync_seconds"] for r in measured],
                      "kib_per_connection_rounds": [r["kib_per_connection"] for r in measured]}
    return out


def idle_round(ctx: Context, which: str) -> dict[str, Any]:
    p = ctx.plan
    with running(ctx, which) as server:

        async def measure() -> dict[str, Any]:
            # Warm up (the first connections import and allocate), then take the baseline.
            warm, _ = await hold_connections(server.ws_url, 1, 2, prefix=f"warm-{os.getpid()}")
            await close_all(warm)
            await asyncio.sleep(1.0)
            before = server.probe()
            gen = Generator()
            clients, info = await hold_connections(server.ws_url, p.idle_docs, p.idle_per_doc)
            generator_cpu = gen.share()
            await asyncio.sleep(2.0)  # let the server settle (writers idle, garbage collected)
            after = server.probe()
            await close_all(clients)
            n = max(1, info["connections"])
            delta = after["server_rss_bytes"] - before["server_rss_bytes"]
            return {
                **info,
                "rss_before_bytes": before["server_rss_bytes"],
                "rss_after_bytes": after["server_rss_bytes"],
                "bytes_per_connection": round(delta / n),
                "kib_per_connection": round(delta / n / KIB, 2),
                "server_cpu_seconds_to_open": round(after["server_cpu_seconds"] - before["server_cpu_seconds"], 3),
                "generator_cpu": generator_cpu,
            }

        return aio(measure)


def large_one(ctx: Context, which: str) -> dict[str, Any]:
    p = ctx.plan
    log(f"large document on {SERVERS[which]}: {p.large_bytes} bytes + {p.large_edits} edits")
    with running(ctx, which) as server:

        async def measure() -> dict[str, Any]:
            before = server.probe()
            info = await large_document(
                f"{server.ws_url}/large-{os.getpid()}", size=p.large_bytes, edits=p.large_edits,
                joiners=p.large_joiners, timeout=120,
            )
            after = server.probe()
            return {**info, "rss_before_bytes": before["server_rss_bytes"],
                    "rss_after_bytes": after["server_rss_bytes"]}

        return aio(measure)


def cold(ctx: Context) -> dict[str, Any]:
    """Rounds that alternate the servers (one after another, then `cold_parallel` at a time, each
    from a fresh process), reported as each server's median round: single passes of a second or
    two on this machine vary by 2x from one run to the next, and alternating spreads any drift."""
    p = ctx.plan
    names = {which: [f"cold-{os.getpid()}-{which}-{i}" for i in range(p.cold_rooms)] for which in ctx.servers}
    servers: dict[str, ServerBase] = {}
    out: dict[str, Any] = {}
    try:
        for which in ctx.servers:
            server = servers[which] = ctx.make_server(which).start()
            out[which] = {"rounds": [], "parallel": {"rounds": []},
                          "note": "rooms are created empty (in memory, nothing to load)"}
            if which == "ours":
                log(f"cold rooms on {SERVERS[which]}: seeding {len(names[which])} documents")
                seeded = aio(lambda url=server.ws_url: seed_rooms(url, names["ours"]))
                out[which]["note"] = (f"{seeded} documents seeded (2 KiB text + 20 edits each); every pass "
                                      "starts a fresh process, so every room loads from PostgreSQL")
        for round_ in range(p.cold_rounds):
            for which, server in servers.items():
                for parallel, into in ((1, out[which]["rounds"]), (p.cold_parallel, out[which]["parallel"]["rounds"])):
                    server.stop()
                    server.start()  # cold: a fresh process has no room loaded
                    log(f"cold rooms on {SERVERS[which]}, round {round_ + 1}/{p.cold_rounds}: "
                        f"{len(names[which])} opened {parallel} at a time")
                    into.append(_cold_pass(server, names[which], parallel))
    finally:
        for server in servers.values():
            server.stop()
    for data in out.values():
        for holder in (data, data["parallel"]):
            rounds = holder["rounds"]
            if rounds:
                median = _median_round(rounds, "rooms_per_second")
                holder.update({k: v for k, v in median.items() if k not in ("rounds", "parallel")})
                holder["workers"] = median["parallel"]
                holder["rooms_per_second_rounds"] = [r["rooms_per_second"] for r in rounds]
    return out


def _cold_pass(server: ServerBase, names: list[str], parallel: int) -> dict[str, Any]:
    before = server.probe()
    gen = Generator()
    info = aio(lambda: cold_rooms(server.ws_url, names, parallel=parallel, max_seconds=300))
    info["generator_cpu"] = gen.share()
    after = server.probe()
    info["server_cpu_seconds"] = round(after["server_cpu_seconds"] - before["server_cpu_seconds"], 3)
    if "database_cpu_seconds" in after:
        info["database_cpu_seconds"] = round(after["database_cpu_seconds"] - before["database_cpu_seconds"], 3)
    return info


def large(ctx: Context) -> dict[str, Any]:
    return each_server(ctx, large_one)


def crash(ctx: Context) -> dict[str, Any]:
    script = ROOT / "bench" / "crash_window.py"
    if "ours" not in ctx.servers:
        return {"ours": {"status": "not run", "reason": "only meaningful for collab-server"}}
    if not script.exists():
        return {"ours": {"status": "not run", "reason": "bench/crash_window.py is not present"}}
    kills = ctx.plan.crash_kills
    log(f"crash window: python -m bench.crash_window --kills {kills} --json")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.crash_window", "--kills", str(kills), "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=120 + kills * 30, check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {"ours": {"status": "failed", "reason": "timed out"}}
    summary = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                summary = json.loads(line)
                break
    if proc.returncode != 0 or summary is None:
        return {"ours": {"status": "failed", "exit": proc.returncode, "stderr": proc.stderr[-1500:],
                         "stdout": proc.stdout[-1500:]}}
    return {"ours": {"status": "ok", "kills": kills, **summary}}


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fanout": fanout, "idle": idle, "large": large, "cold": cold, "crash": crash,
}


# -- summary, chart and README table -------------------------------------------------------


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _step(results: dict[str, Any], which: str, rate: float) -> dict[str, Any]:
    for step in _get(results, which, "steps") or []:
        if step.get("target_rate") == rate:
            return step  # type: ignore[no-any-return]
    return {}


def _bound(*shares: Any) -> bool:
    """Whether the load generator may have set a figure: it used nearly all of its core."""
    return any(isinstance(s, (int, float)) and s >= Generator.BOUND for s in shares)


def _median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]


def headline(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per measured quantity: ours, the reference, the ratio, issue 14's target and whether it is met.

    A target is either a ratio to the reference in the same run ("×") or an absolute bar (the unit's)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, unit: str, ours: Any, ref: Any, better: str, target: tuple[str, float] | None = None) -> None:
        numbers = isinstance(ours, (int, float)) and isinstance(ref, (int, float)) and ref
        ratio = round(ours / ref, 2) if numbers else None
        met = None
        if target is not None:
            kind, bar = target
            value = ratio if kind == "×" else ours
            if isinstance(value, (int, float)):
                met = value >= bar if better == "higher" else value <= bar
        rows.append({"metric": name, "unit": unit, "collab-server": ours, "y-websocket": ref, "ratio": ratio,
                     "target": target, "better": better, "met": met})

    def paced_row(name: str, unit: str, data: dict[str, Any], path: tuple[str, ...], key: str, better: str,
                  target: tuple[str, float]) -> None:
        """A figure the load generator may have paced, and the generator's share of its core under it:
        past `Generator.BOUND` the figure is marked not valid and meets no target."""
        gens = _get(data, "ours", *path, "generator_cpu"), _get(data, "ref", *path, "generator_cpu")
        bound = _bound(*gens)
        note = f" (generator ≥ {Generator.BOUND:.0%} of its core: bound by it, not valid)" if bound else ""
        row(name + note, unit, _get(data, "ours", *path, key), _get(data, "ref", *path, key), better,
            None if bound else target)
        row("  load generator CPU meanwhile", "share of its core", *gens, "lower")

    f = results.get("fanout", {})
    if f:
        rate = _get(f, "ours", "headline", "cpu_compare_rate") or _get(f, "ref", "headline", "cpu_compare_rate") or 0
        row(f"server CPU at {rate:,.0f} updates/s (process only)", "% of a core",
            _get(f, "ours", "headline", "server_cpu_percent_at_compare_rate"),
            _get(f, "ref", "headline", "server_cpu_percent_at_compare_rate"), "lower", ("×", 1.0))
        row(f"  + PostgreSQL/Redis CPU at {rate:,.0f} updates/s", "% of a core",
            _get(f, "ours", "headline", "database_cpu_percent_at_compare_rate"), None, "lower")
        ours, ref = _step(f, "ours", rate), _step(f, "ref", rate)
        row(f"relay p99 at {rate:,.0f} updates/s", "ms", _get(ours, "latency", "p99_ms"),
            _get(ref, "latency", "p99_ms"), "lower", ("ms", 5.0))
        ours, ref = _step(f, "ours", 2 * rate), _step(f, "ref", 2 * rate)
        lossless = all(step.get("lost") == 0 for step in _get(f, "ours", "steps") or [])
        row(f"relay p50 at {2 * rate:,.0f} updates/s" + ("" if lossless else " (a step LOST updates)"), "ms",
            _get(ours, "latency", "p50_ms") if lossless else "lossy", _get(ref, "latency", "p50_ms"), "lower",
            ("ms", 2.0))
        row("fan-out saturation (p99 < 100 ms, no loss, generator keeping up)", "updates/s",
            _get(f, "ours", "headline", "saturation_per_s"), _get(f, "ref", "headline", "saturation_per_s"),
            "higher", ("updates/s", TARGETS["fanout_saturation_per_s"]))
    i = results.get("idle", {})
    if i:
        row("memory per idle synced connection", "KiB", _get(i, "ours", "kib_per_connection"),
            _get(i, "ref", "kib_per_connection"), "lower", ("×", 0.8))
        n = _get(i, "ours", "connections") or _get(i, "ref", "connections")
        paced_row(f"{n} connections open + synced", "s", i, (), "open_and_sync_seconds", "lower", ("×", 0.8))
    g = results.get("large", {})
    if g:
        row("late joiner of the large document: step 2 received", "ms (median)",
            _get(g, "ours", "sync_ms_median"), _get(g, "ref", "sync_ms_median"), "lower", ("×", 1.0))
        ours_rss, ref_rss = _get(g, "ours", "rss_after_bytes"), _get(g, "ref", "rss_after_bytes")
        row("server RSS with the large document", "MiB", round(ours_rss / KIB / KIB, 1) if ours_rss else None,
            round(ref_rss / KIB / KIB, 1) if ref_rss else None, "lower")
    c = results.get("cold", {})
    if c:
        paced_row("cold rooms open+sync+close, one after another", "rooms/s", c, (), "rooms_per_second", "higher",
                  ("×", 1.0))
        n = _get(c, "ours", "parallel", "workers") or _get(c, "ref", "parallel", "workers")
        paced_row(f"cold rooms open+sync+close, {n} in parallel", "rooms/s", c, ("parallel",), "rooms_per_second",
                  "higher", ("×", 1.2))
    k = results.get("crash", {})
    if k:
        window = _get(k, "ours", "window_ms_max")
        row("crash-loss window (kill -9), max over kills", "ms",
            window if window is not None else _get(k, "ours", "status"), "n/a", "lower",
            ("ms", TARGETS["crash_window_ms"]))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fanout_steps_table(results: dict[str, Any]) -> str:
    """Every fan-out step of both servers side by side, with the ratios and the generator's own
    CPU and schedule lag: a step where the generator fell behind measured itself and is marked."""
    fanout = results.get("fanout", {})
    ours, ref = fanout.get("ours"), fanout.get("ref")
    if not ours:
        return ""
    ref_steps = {s["target_rate"]: s for s in (ref or {}).get("steps", [])}
    lines = ["", "", "Fan-out per step (ratio = collab-server ÷ y-websocket, same run; gen = the load generator's "
             "CPU share / p99 schedule lag; a step is valid when the generator kept up):", "",
             "| updates/s | p50 ms ours / ref | p99 ms ours / ref | p99 ratio | server CPU % ours / ref | CPU ratio "
             "| DB+Redis CPU % | gen CPU ours / ref | gen lag ms ours / ref | lost | valid |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for s in ours["steps"]:
        r = ref_steps.get(s["target_rate"], {})
        so, sr = s.get("server", {}), r.get("server", {})

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}×" if a is not None and b else "—"

        p99o, p99r = s["latency"]["p99_ms"], (r.get("latency") or {}).get("p99_ms")
        cpuo, cpur = so.get("server_cpu_percent"), sr.get("server_cpu_percent")
        valid = s.get("valid", True) and r.get("valid", True)
        p50r = (r.get("latency") or {}).get("p50_ms")
        lines.append(
            f"| {s['target_rate']:,.0f} | {s['latency']['p50_ms']:.2f} / {_fmt(p50r)} "
            f"| {p99o:.2f} / {_fmt(p99r)} | {ratio(p99o, p99r)} | {_fmt(cpuo)} / {_fmt(cpur)} | {ratio(cpuo, cpur)} "
            f"| {_fmt(so.get('database_cpu_percent'))} | {s['generator_cpu']:.2f} / {_fmt(r.get('generator_cpu'))} "
            f"| {s['generator_lag_p99_ms']:.1f} / {_fmt(r.get('generator_lag_p99_ms'))} "
            f"| {s['lost']} / {_fmt(r.get('lost'))} | {'yes' if valid else '**no**'} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Run {meta['finished']} ({'QUICK smoke run: not a measurement' if meta['quick'] else 'full run'}; "
        f"server on CPU {meta['server_cpu']}, load generator on CPU {meta['generator_cpu']}).",
        "",
        "| metric | unit | collab-server | y-websocket | ratio | target | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        target = r["target"]
        shown = "" if target is None else (
            f"{'≥' if r['better'] == 'higher' else '≤'} {_fmt(target[1])}{'×' if target[0] == '×' else ''}")
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        lines.append(f"| {r['metric']} | {r['unit']} | {_fmt(r['collab-server'])} | {_fmt(r['y-websocket'])} "
                     f"| {ratio} | {shown} | {met} |")
    if meta.get("notes"):
        lines += ["", *(f"Note: {note}" for note in meta["notes"])]
    return "\n".join(lines)


def chart(results: dict[str, dict[str, Any]], path: Path, quick: bool) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    colors = {"ours": "#2b7bb9", "ref": "#e07b39"}
    panels = [s for s in ("fanout", "idle", "large", "cold", "crash") if s in results]
    n = len(panels) + (1 if "fanout" in results else 0)
    cols = 3 if n > 2 else n
    rows_n = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.0 * rows_n), squeeze=False)
    flat = list(axes.flat)
    ax_iter = iter(flat)

    def bars(ax: Any, title: str, unit: str, values: dict[str, Any], target: float | None) -> None:
        names = [k for k in ("ours", "ref") if isinstance(values.get(k), (int, float))]
        ax.bar([SERVERS[k] for k in names], [values[k] for k in names], color=[colors[k] for k in names])
        for idx, k in enumerate(names):
            ax.annotate(_fmt(values[k]), (idx, values[k]), ha="center", va="bottom", fontsize=9)
        if target is not None:
            ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {_fmt(target)}")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        if not names:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)

    if "fanout" in results:
        ax = next(ax_iter)
        cpu_ax = next(ax_iter)
        for k, data in results["fanout"].items():
            steps = [s for s in data.get("steps", []) if s["latency"]["count"]]
            rates = [s["target_rate"] for s in steps]
            ax.plot(rates, [s["latency"]["p99_ms"] for s in steps], "o-", color=colors[k], label=f"{SERVERS[k]} p99")
            ax.plot(rates, [s["latency"]["p50_ms"] for s in steps], "o:", color=colors[k], alpha=0.6,
                    label=f"{SERVERS[k]} p50")
            cpu_ax.plot(rates, [s["server"].get("server_cpu_percent", 0) for s in steps], "o-", color=colors[k],
                        label=f"{SERVERS[k]} server")
            if any("database_cpu_percent" in s["server"] for s in steps):
                cpu_ax.plot(rates, [s["server"].get("database_cpu_percent", 0) for s in steps], "s:",
                            color=colors[k], alpha=0.6, label=f"{SERVERS[k]} PostgreSQL+Redis")
        ax.axhline(100, color="gray", linestyle="--", linewidth=1, label="100 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("aggregate updates/s")
        ax.set_ylabel("ms (send → each receiver)")
        ax.set_title("fan-out latency (50 docs × 4 clients)" if not quick else "fan-out latency (quick)", fontsize=10)
        ax.legend(fontsize=7)
        cpu_ax.set_xscale("log")
        cpu_ax.set_xlabel("aggregate updates/s")
        cpu_ax.set_ylabel("% of one core")
        cpu_ax.set_title("fan-out: server CPU", fontsize=10)
        cpu_ax.legend(fontsize=7)
    def of_ref(values: dict[str, Any], ratio: float) -> float | None:
        ref = values.get("ref")
        return ratio * ref if isinstance(ref, (int, float)) else None

    for scenario, title, unit, key, ratio in (
        ("idle", "memory per idle synced connection", "KiB", "kib_per_connection", 0.8),
        ("large", "late joiner of the large doc: step 2", "ms (median)", "sync_ms_median", 1.0),
        ("cold", "cold rooms, one after another", "rooms/s", "rooms_per_second", 1.0),
    ):
        if scenario in results:
            values = {k: v.get(key) for k, v in results[scenario].items()}
            bars(next(ax_iter), title, unit, values, of_ref(values, ratio))
    if "crash" in results:
        bars(next(ax_iter), "crash-loss window (max over kills)", "ms",
             {"ours": _get(results["crash"], "ours", "window_ms_max")}, TARGETS["crash_window_ms"])
    for ax in ax_iter:
        ax.axis("off")
    fig.suptitle("collab-server vs y-websocket reference server" + (" — QUICK smoke run" if quick else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def update_readme(table: str) -> bool:
    try:
        text = README.read_text()
    except OSError:
        return False
    pattern = re.compile(r"(<!-- results:start -->\n).*?(\n<!-- results:end -->)", re.S)
    if not pattern.search(text):
        return False
    README.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text))
    return True


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}")
    p.add_argument("--servers", default="ours,ref", help="ours (collab-server), ref (y-websocket), or both")
    p.add_argument("--quick", action="store_true", help="a much shorter smoke run (numbers mean nothing)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the table in bench/README.md")
    p.add_argument("--server-env", action="append", default=[], metavar="K=V",
                   help="extra environment for collab-server (repeatable), e.g. COLLAB_BUS=off")
    args = p.parse_args(argv)
    args.env = {}
    for pair in args.server_env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            p.error(f"--server-env expects K=V, got {pair!r}")
        args.env[key] = value
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.server_list = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    bad = [s for s in args.scenario_list if s not in SCENARIOS]
    if bad:
        p.error(f"unknown scenario(s) {bad}; choose from {', '.join(SCENARIOS)}")
    if not args.server_list or any(s not in SERVERS for s in args.server_list):
        p.error("--servers takes ours, ref or ours,ref")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.make(args.quick)
    available = cpus()
    server_cpu = generator_cpu = None
    notes = []
    if len(available) >= 2:
        server_cpu, generator_cpu = available[0], available[1]
    else:
        notes.append("fewer than 2 CPUs: nothing pinned, the server and the load generator share a core")
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "tmp" / "logs"  # bench/results/tmp/ is not committed
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(plan, server_cpu, generator_cpu, args.server_list, log_dir, notes=notes, server_env=args.env)
    if args.env:
        notes.append("collab-server environment: " + " ".join(f"{k}={v}" for k, v in sorted(args.env.items())))
    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    needs_db = "ours" in ctx.servers and any(s in args.scenario_list for s in ("fanout", "idle", "large", "cold"))
    try:
        if needs_db:
            log("starting PostgreSQL and Redis" + (f" on CPU {server_cpu}" if server_cpu is not None else ""))
            ctx.backing = Backing(server_cpu).start()
            ctx.notes += ctx.backing.notes
        if generator_cpu is not None:
            os.sched_setaffinity(0, {generator_cpu})
        for scenario in args.scenario_list:
            t0 = time.perf_counter()
            try:
                data = RUNNERS[scenario](ctx)
            except Exception as exc:  # one broken scenario must not lose the others
                log(f"{scenario} failed: {exc.__class__.__name__}: {exc}")
                data = {"error": f"{exc.__class__.__name__}: {exc}"}
            body = {"scenario": scenario, "quick": plan.quick, "seconds": round(time.perf_counter() - t0, 1),
                    "plan": asdict(plan), "server_cpu": server_cpu, "generator_cpu": generator_cpu, "results": data}
            (out_dir / f"{scenario}.json").write_text(json.dumps(body, indent=2, default=str) + "\n")
            results[scenario] = {k: v for k, v in data.items() if k in SERVERS}
            log(f"{scenario} done in {body['seconds']} s -> {out_dir / (scenario + '.json')}")
    finally:
        if ctx.backing is not None:
            ctx.backing.stop()
    rows = headline(results)
    meta = {"finished": time.strftime("%Y-%m-%d %H:%M", time.localtime()), "quick": plan.quick,
            "server_cpu": server_cpu, "generator_cpu": generator_cpu, "seconds": round(time.time() - started, 1),
            "scenarios": args.scenario_list, "servers": [SERVERS[s] for s in ctx.servers], "notes": ctx.notes}
    (out_dir / "summary.json").write_text(json.dumps({**meta, "targets": TARGETS, "rows": rows}, indent=2) + "\n")
    problem = chart(results, out_dir / "chart.png", plan.quick)
    if problem:
        log(problem)
    table = markdown_table(rows, meta) + fanout_steps_table(results)
    print(table)
    if not args.no_readme and out_dir.resolve() == RESULTS.resolve() and update_readme(table):
        log("updated the results table in bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
