"""The Hocuspocus route against `@hocuspocus/server` (npm, in memory), same machine, same run.

    python -m bench.hocuspocus [--quick] [--only memory|fanout]

1. **memory per open document**: 10 documents sharing one socket vs one socket each, on a fresh
   server process per layout (Python's allocator does not give memory back, so layouts are never
   measured one after the other in the same process). The documents' rooms are opened first by one
   warm socket that stays, so what is measured is what an open document on a socket costs.
2. **fan-out saturation** through the Hocuspocus dialect: the `fanout` load of `bench.run`
   (documents x clients typing, stepped rates) with `--dialect hocuspocus`.

Pinned as in `bench.run`: each server (and our PostgreSQL + Redis) on CPU 0, the generator on
CPU 1; every step records the generator's CPU and schedule lag. Results: bench/results/hocuspocus.json
and a table on stdout (ratios = collab-server / hocuspocus in this run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from bench.run import RESULTS, aio, log
from bench.servers import Backing, HocuspocusServer, OurServer, ServerBase, cpus
from loadtest import LoadConfig, close_all, hold_documents, run_load

KIB = 1024
NAMES = {"ours": "collab-server", "ref": "hocuspocus"}


def make(which: str, backing: Backing | None, cpu: int | None, log_dir: Any) -> ServerBase:
    if which == "ours":
        assert backing is not None
        server: ServerBase = OurServer(backing, cpu, log_dir)
        return server
    return HocuspocusServer(cpu, log_dir)


def route(server: ServerBase) -> str:
    return f"ws://127.0.0.1:{server.port}/hocuspocus"


def memory(server: ServerBase, documents: int, opened: int, per_socket: int) -> dict[str, Any]:
    """RSS growth per open document with `per_socket` documents on each socket."""

    async def measure() -> dict[str, Any]:
        prefix = f"mem-{os.getpid()}-{time.time_ns() % 10**6}"
        warm, info = await hold_documents(route(server), 1, documents, documents, prefix=prefix)
        if info["errors"]:
            raise RuntimeError(f"warm-up failed: {info['error_samples']}")
        await asyncio.sleep(1.0)
        before = server.probe()
        clients, info = await hold_documents(route(server), opened // per_socket, per_socket, documents, prefix=prefix)
        if info["errors"]:
            raise RuntimeError(f"{info['errors']} sockets failed: {info['error_samples']}")
        await asyncio.sleep(2.0)
        after = server.probe()
        await close_all(clients)
        await close_all(warm)
        n = max(1, info["documents_open"])
        delta = after["server_rss_bytes"] - before["server_rss_bytes"]
        return {**info, "documents_per_socket": per_socket, "rss_before_bytes": before["server_rss_bytes"],
                "rss_after_bytes": after["server_rss_bytes"], "kib_per_open_document": round(delta / n / KIB, 2),
                "server_cpu_seconds_to_open": round(after["server_cpu_seconds"] - before["server_cpu_seconds"], 3)}

    return aio(measure)


def fanout(server: ServerBase, quick: bool) -> dict[str, Any]:
    steps = (200.0, 1000.0) if quick else (500.0, 1000.0, 2000.0, 4000.0, 8000.0, 12000.0, 16000.0, 20000.0)
    seconds, drain = (2.0, 1.5) if quick else (10.0, 3.0)
    config = LoadConfig(
        url=route(server), documents=10 if quick else 50, clients=4, steps=steps, duration=seconds, drain=drain,
        mix=("typing",), check_rooms=4, stop_p99_ms=1000.0, always_run_to=steps[-1] if quick else 8000.0,
        max_seconds=60 + len(steps) * (seconds + drain + 10), dialect="hocuspocus",
    )
    result = aio(lambda: run_load(config, probe=server.probe, progress=sys.stderr))
    data = result.as_dict()
    data["saturation_per_s"] = result.saturation()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: checks the plumbing, not the numbers")
    parser.add_argument("--only", choices=("memory", "fanout"), default=None)
    args = parser.parse_args(argv)
    available = cpus()
    server_cpu, generator_cpu = (available[0], available[1]) if len(available) >= 2 else (None, None)
    log_dir = RESULTS / "tmp" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    documents, opened = (20, 200) if args.quick else (100, 2000)
    backing = Backing(server_cpu).start()
    out: dict[str, Any] = {"server_cpu": server_cpu, "generator_cpu": generator_cpu, "quick": args.quick,
                           "memory": {}, "fanout": {}}
    try:
        if generator_cpu is not None:
            os.sched_setaffinity(0, {generator_cpu})
        for which in ("ours", "ref"):
            if args.only in (None, "memory"):
                for per_socket in (10, 1):
                    log(f"memory on {NAMES[which]}: {opened} open documents, {per_socket} per socket")
                    server = make(which, backing, server_cpu, log_dir).start()
                    try:
                        out["memory"].setdefault(which, {})[str(per_socket)] = memory(
                            server, documents, opened, per_socket)
                    finally:
                        server.stop()
            if args.only in (None, "fanout"):
                log(f"fan-out through the Hocuspocus dialect on {NAMES[which]}")
                server = make(which, backing, server_cpu, log_dir).start()
                try:
                    out["fanout"][which] = fanout(server, args.quick)
                finally:
                    server.stop()
    finally:
        backing.stop()
    out["finished"] = time.strftime("%Y-%m-%d %H:%M")
    (RESULTS / ("hocuspocus-quick.json" if args.quick else "hocuspocus.json")).write_text(
        json.dumps(out, indent=2, default=str) + "\n")
    print(table(out))
    return 0


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def table(out: dict[str, Any]) -> str:
    lines = ["| metric | collab-server | hocuspocus | ratio |", "| --- | ---: | ---: | ---: |"]
    mem = out["memory"]
    for per_socket in ("10", "1"):
        ours = mem.get("ours", {}).get(per_socket, {}).get("kib_per_open_document")
        ref = mem.get("ref", {}).get(per_socket, {}).get("kib_per_open_document")
        label = "10 documents per socket" if per_socket == "10" else "one socket per document"
        lines.append(f"| memory per open document, {label} (KiB) | {ours} | {ref} | {_ratio(ours, ref)} |")
    fan = out["fanout"]
    ours_sat = fan.get("ours", {}).get("saturation_per_s")
    ref_sat = fan.get("ref", {}).get("saturation_per_s")
    lines.append(f"| fan-out saturation, Hocuspocus dialect (updates/s) | {ours_sat} | {ref_sat} "
                 f"| {_ratio(ours_sat, ref_sat)} |")
    rows = ["", "| updates/s | p99 ms ours / ref | server CPU % ours / ref | gen CPU ours / ref "
                "| gen lag p99 ms ours / ref | lost ours / ref | valid ours / ref |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ours_steps = {s["target_rate"]: s for s in fan.get("ours", {}).get("steps", [])}
    ref_steps = {s["target_rate"]: s for s in fan.get("ref", {}).get("steps", [])}
    for rate in sorted(set(ours_steps) | set(ref_steps)):
        a, b = ours_steps.get(rate, {}), ref_steps.get(rate, {})

        def get(step: dict[str, Any], *path: str) -> Any:
            value: Any = step
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            return value

        rows.append(
            f"| {rate:,.0f} | {get(a, 'latency', 'p99_ms')} / {get(b, 'latency', 'p99_ms')} "
            f"| {get(a, 'server', 'server_cpu_percent')} / {get(b, 'server', 'server_cpu_percent')} "
            f"| {get(a, 'generator_cpu')} / {get(b, 'generator_cpu')} "
            f"| {get(a, 'generator_lag_p99_ms')} / {get(b, 'generator_lag_p99_ms')} "
            f"| {get(a, 'lost')} / {get(b, 'lost')} | {get(a, 'valid')} / {get(b, 'valid')} |"
        )
    return "\n".join(lines + rows)


if __name__ == "__main__":
    sys.exit(main())
