"""Time to load a document whose state is 1 MiB of text plus 10,000 pending write-ahead updates.

    python -m bench.load_time [--updates 10000] [--runs 5]

Uses an embedded PostgreSQL in a temp dir (or DATABASE_URL): writes the document with pycrdt,
stores its state in documents.yjs_state and 10,000 further small updates in document_updates,
then times DocumentStore.load (one query + merge) plus applying the result to a room's Doc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from pycrdt import Doc, Text

from collab_server.core.room import Room
from collab_server.runtime.embedded import EmbeddedPostgres
from collab_server.storage import db
from collab_server.storage.migrate import migrate
from collab_server.storage.postgres import DocumentStore


async def run(url: str, updates: int, runs: int) -> None:
    conn = await db.connect(url)
    await migrate(conn)
    user, ws, doc_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO users (id, cognito_sub, email) VALUES ($1, $2, $3)", user, str(user), f"{user}@x.io"
    )
    await conn.execute("INSERT INTO workspaces (id, owner_id, name) VALUES ($1, $2, 'bench')", ws, user)
    doc = Doc()
    text = doc.get("content", type=Text)
    text += ("lorem ipsum dolor sit amet " * 40000)[: 1024 * 1024]
    state = doc.get_update()
    await conn.execute(
        "INSERT INTO documents (id, workspace_id, title, created_by, yjs_state) VALUES ($1, $2, 'big', $3, $4)",
        doc_id, ws, user, state,
    )
    rows = []
    sv = doc.get_state()
    for i in range(updates):
        text.insert((i * 7919) % len(text), "x")
        rows.append((doc_id, doc.get_update(sv)))
        sv = doc.get_state()
    await conn.copy_records_to_table("document_updates", records=rows, columns=["document_id", "payload"])
    await conn.close()
    pool = await db.create_pool(url)
    store = DocumentStore(pool, 600)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        loaded = await store.load(doc_id)
        assert loaded is not None
        room = Room(doc_id)
        room.load_state(loaded.state)
        timings.append((time.perf_counter() - started) * 1000)
        assert len(str(room.doc.get("content", type=Text))) == 1024 * 1024 + updates
    await pool.close()
    print(f"load of a 1 MiB state + {updates} pending updates: median {statistics.median(timings):.0f} ms "
          f"(runs: {', '.join(f'{t:.0f}' for t in timings)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    pg = None
    if not url:
        pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="collab-load-")) / "pg").start()
        url = pg.url
    try:
        asyncio.run(run(url, args.updates, args.runs))
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
