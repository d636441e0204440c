"""Desktop sync of a large folder: first sync of N files (upload, then download on a second machine) and the
steady-state cost of one changed file.

    python -m bench.folder_sync --files 1000

A `collab-server serve` child (open mode) on embedded PostgreSQL and Redis in a temporary directory; the
sync runs in this process (`FolderSync`, as `collab-server sync` does). Prints seconds and this process's
CPU for each phase, and per change the median and p90 of a pass that carries one edited file each way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.crash_window import Server, prepare_database
from collab_server.client import ApiClient
from collab_server.client.folder import FolderSync
from collab_server.runtime.embedded import EmbeddedPostgres, EmbeddedRedis


def note(i: int) -> str:
    return (f"# Note {i}\n\nA paragraph of note {i} with some *emphasis* and a [link](https://example.com/{i}).\n\n"
            + "".join(f"* item {j} of note {i}\n" for j in range(8)) + "\nThe end of the note.\n")


async def measure(phase: str, figures: dict[str, Any], action: Any) -> None:
    cpu = psutil.Process().cpu_times()
    started = time.perf_counter()
    await action()
    wall = time.perf_counter() - started
    after = psutil.Process().cpu_times()
    figures[phase] = {"seconds": round(wall, 2), "client_cpu_seconds": round(after.user + after.system
                                                                            - cpu.user - cpu.system, 2)}
    print(f"{phase}: {wall:.2f} s (sync process CPU {figures[phase]['client_cpu_seconds']} s)", flush=True)


async def run(args: argparse.Namespace, base: str, tmp: Path) -> dict[str, Any]:
    api = ApiClient(base)
    workspace = (await api.workspaces())[0]["id"]
    first, second = tmp / "machine-a", tmp / "machine-b"
    first.mkdir()
    for i in range(args.files):
        (first / f"Note {i}.md").write_text(note(i))
    a = FolderSync(first, ApiClient(base), workspace)
    b = FolderSync(second, ApiClient(base), workspace)
    figures: dict[str, Any] = {"files": args.files}
    await measure("first sync, upload", figures, a.once)
    await measure("first sync, download on a second machine", figures, b.once)
    assert len(list(second.glob("*.md"))) == args.files
    await measure("a pass with nothing changed", figures, a.once)
    passes: list[float] = []
    for n in range(args.changes):
        path = first / f"Note {n}.md"
        path.write_text(path.read_text() + f"\nEdited {n}.\n")
        started = time.perf_counter()
        await a.once()  # sends it
        sent = time.perf_counter()
        for _ in range(50):  # the other machine's next pass brings it (the feed is immediate for HTTP writes)
            await b.once()
            if f"Edited {n}." in (second / f"Note {n}.md").read_text():
                break
        else:
            raise AssertionError(f"edit {n} never reached the second machine")
        passes.append(sent - started)
        passes.append(time.perf_counter() - sent)
    figures["pass_with_one_change_ms"] = {
        "median": round(statistics.median(passes) * 1000, 1),
        "p90": round(sorted(passes)[int(0.9 * len(passes))] * 1000, 1),
    }
    print(f"a pass carrying one changed file (send or receive), over {len(passes)} passes: median "
          f"{figures['pass_with_one_change_ms']['median']} ms, p90 {figures['pass_with_one_change_ms']['p90']} ms")
    state = (first / ".collab-sync.json").stat().st_size
    figures["state_file_mib"] = round(state / 2**20, 2)
    print(f"state file: {figures['state_file_mib']} MiB for {args.files} documents")
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.folder_sync", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--changes", type=int, default=20, help="edited files carried one at a time")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collab-folder-sync-") as tmp_name:
        tmp = Path(tmp_name)
        pg = EmbeddedPostgres(tmp / "pg").start()
        redis = EmbeddedRedis(tmp / "redis").start()
        env = {**os.environ, "DATABASE_URL": pg.url, "REDIS_URL": redis.url, "COLLAB_AUTH": "off",
               "COLLAB_DATA_DIR": str(tmp), "COLLAB_LOG_LEVEL": "warning"}
        server = Server(env, tmp / "server.log")
        try:
            asyncio.run(prepare_database(pg.url))
            server.start()
            figures = asyncio.run(run(args, f"http://127.0.0.1:{server.port}", tmp))
        finally:
            server.terminate()
            redis.stop()
            pg.stop()
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
