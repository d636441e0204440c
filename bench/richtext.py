"""What rich-text content conversion costs, and that it stays off the relay path.

    python -m bench.richtext [--size-kib 1024] [--rate 4000] [--duration 10]

1. Conversion of a ~1 MiB rich-text document (headings, paragraphs with marks and links,
   nested lists, task lists, code, tables) in this process: Markdown -> Y.XmlFragment,
   Y.XmlFragment -> Markdown, a compaction (merge + conversion), and a one-paragraph Markdown
   write as a minimal edit. Median of 3.
2. Relay latency while that document is edited and compacted (and so converted) every few
   updates: `collab-loadtest` at --rate updates/s on other documents, with conversion in
   a worker process (COLLAB_CONVERSION_PROCESSES=1, the default) and, in the same run, in a
   thread beside the event loop (=0, how v1 ran compaction). The server, PostgreSQL and Redis
   share one CPU; the load generator runs on the other; its CPU use is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
from pycrdt import Doc, XmlFragment, XmlText

from collab_server.client import YClient
from collab_server.content import read_markdown, write_markdown
from collab_server.storage import ydoc

from .servers import cpus, our_server, pin_prefix

SECTION = """## Section {i}

A paragraph with **bold**, *italic*, `code`, ~~strike~~ and [a link](https://example.com/{i}) about item {i}.
It goes on for a while so that the document has realistic paragraph lengths, number {i}.

- first point {i}
- second point with *emphasis*
  - nested detail {i}
- [ ] a task {i}

```python
def f{i}(x):
    return x * {i}
```

| name | value |
| --- | --- |
| row {i} | **{i}** |
"""


def big_markdown(size: int) -> str:
    parts, total, i = [], 0, 0
    while total < size:
        part = SECTION.format(i=i)
        parts.append(part)
        total += len(part.encode())
        i += 1
    return "\n".join(parts)


def timed(fn: Callable[[], Any], runs: int = 3) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def conversion(size: int) -> dict[str, Any]:
    source = big_markdown(size)

    def to_fragment() -> Doc:
        doc = Doc()
        with doc.transaction():
            write_markdown(doc, source, "markdown")
        return doc

    doc = to_fragment()
    state = doc.get_update()
    sv = doc.get_state()
    with doc.transaction():
        para = list(doc.get("default", type=XmlFragment).children)[1]
        next(c for c in para.children if isinstance(c, XmlText)).insert(0, "typed ")
    small = doc.get_update(sv)
    edited = source.replace("about item 7.", "about item seven.", 1)
    stored = read_markdown(doc, "markdown")  # what the previous compaction left in documents.content

    def minimal_edit() -> None:
        copy = Doc()
        copy.apply_update(state)
        with copy.transaction():
            write_markdown(copy, edited, "markdown")

    return {
        "markdown_bytes": len(source.encode()),
        "yjs_state_bytes": len(state),
        "blocks": len(list(doc.get("default", type=XmlFragment).children)),
        "markdown_to_fragment_ms": timed(to_fragment),
        "fragment_to_markdown_ms": timed(lambda: read_markdown(doc, "markdown")),
        "compaction_ms": timed(lambda: ydoc.compact(state, [small], "markdown", stored)),
        "minimal_edit_ms": timed(minimal_edit),
    }


async def edit_big_document(base: str, name: str, stop: asyncio.Event) -> int:
    """Type into the big document's first paragraphs until told to stop; returns edits sent."""
    client = await YClient(f"{base}/{name}").connect()
    sent = 0
    try:
        fragment = client.doc.get("default", type=XmlFragment)
        texts = [t for block in list(fragment.children)[:400] if block.tag == "paragraph"
                 for t in block.children if isinstance(t, XmlText)]
        assert texts, "the big document did not arrive"
        while not stop.is_set():
            texts[sent % len(texts)].insert(0, "x")
            sent += 1
            await asyncio.sleep(0.01)
    finally:
        await client.close()
    return sent


async def relay_run(server: Any, rate: float, duration: float, load_cpu: int | None, size: int,
                    big: bool) -> dict[str, Any]:
    name = f"big-{os.getpid()}-{time.monotonic_ns()}"
    http = f"http://127.0.0.1:{server.port}"
    stop = asyncio.Event()
    editor: asyncio.Task[int] | None = None
    if big:
        async with httpx.AsyncClient(timeout=120) as api:
            put = await api.put(f"{http}/api/documents/{name}/content", content=big_markdown(size).encode(),
                                headers={"Content-Type": "text/markdown"})
            put.raise_for_status()
        editor = asyncio.create_task(edit_big_document(server.ws_url, name, stop))
    cmd = [*pin_prefix(load_cpu), sys.executable, "-m", "loadtest", "--url", server.ws_url,
           "--rate", str(rate), "--duration", str(duration), "--documents", "50", "--clients", "4",
           "--mix", "typing", "--json", "--no-progress"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    ps.cpu_percent()
    out, _ = await proc.communicate()
    stop.set()
    edits = await editor if editor is not None else 0
    with contextlib.suppress(psutil.Error):
        ps.cpu_percent()
    report = json.loads(out)
    async with httpx.AsyncClient(timeout=10) as api:
        compactions = sum(
            float(line.split()[-1]) for line in (await api.get(f"{http}/metrics")).text.splitlines()
            if line.startswith("collab_compactions_total"))
    return {"loadtest": report, "big_document_edits": edits, "compactions": compactions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--rate", type=float, default=4000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--skip-relay", action="store_true")
    args = parser.parse_args()
    size = args.size_kib * 1024
    results: dict[str, Any] = {"conversion": conversion(size)}
    c = results["conversion"]
    print(f"1 MiB-class rich-text document: {c['markdown_bytes']:,} B of Markdown, {c['blocks']:,} blocks, "
          f"Yjs state {c['yjs_state_bytes']:,} B")
    for key in ("markdown_to_fragment_ms", "fragment_to_markdown_ms", "compaction_ms", "minimal_edit_ms"):
        print(f"  {key:<26} {c[key]:8.1f} ms")
    if not args.skip_relay:
        available = cpus()
        server_cpu, load_cpu = (available[0], available[1]) if len(available) > 1 else (None, None)
        modes = {"baseline": ("1", False, "no rich-text document (baseline)"),
                 "worker": ("1", True, "1 MiB rich-text document converted in a worker process"),
                 "thread": ("0", True, "1 MiB rich-text document converted in a thread beside the loop")}
        for mode, (processes, big, where) in modes.items():
            env = {"COLLAB_CONVERSION_PROCESSES": processes, "COLLAB_COMPACT_MAX_UPDATES": "50"}
            with our_server(server_cpu, env) as server:
                run = asyncio.run(relay_run(server, args.rate, args.duration, load_cpu, size, big))
            results[f"relay_{mode}"] = run
            step = run["loadtest"]["steps"][0]
            lat = step["latency"]
            print(f"relay at {step['sent_per_second']:.0f}/s, {where}: p50 {lat['p50_ms']:.1f} ms, "
                  f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms, lost {step['lost']}; generator CPU "
                  f"{step['generator_cpu']:.0%}, send lag p99 {step['generator_lag_p99_ms']:.1f} ms; "
                  f"big-document edits {run['big_document_edits']}, compactions {run['compactions']:.0f}")
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
