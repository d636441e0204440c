"""The documents -> sync_log trigger (log_document_change) and the version-number trigger under concurrency."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from .conftest import as_json

ONE_MIB = 1024 * 1024

# Columns of documents that log_document_change deliberately does not report (derived, or bookkeeping
# columns added by later migrations that a syncing client does not care about).
NOT_REPORTED = {"content_hash", "search_vector", "updated_at", "last_version_at"}


async def _log(db, doc):
    rows = await db.fetch("SELECT * FROM sync_log WHERE entity_id = $1 ORDER BY cursor", doc)
    return [dict(r, changes=as_json(r["changes"])) for r in rows]


async def _setup(mk):
    user = await mk.user()
    ws = await mk.workspace(user)
    return user, ws


async def test_insert_logs_one_small_create(db, mk):
    user, ws = await _setup(mk)
    doc = await mk.document(ws, user, "Fresh", "x" * ONE_MIB)
    [row] = await _log(db, doc)
    assert row["operation"] == "create" and row["entity_type"] == "document"
    assert row["workspace_id"] == ws and row["changed_by"] == user
    assert row["changes"] == {"title": "Fresh", "type": "markdown"}
    assert row["content_hash"] == await db.fetchval("SELECT content_hash FROM documents WHERE id = $1", doc)
    assert await db.fetchval("SELECT octet_length(changes::text) FROM sync_log WHERE entity_id = $1", doc) < 1024


async def test_compaction_update_writes_exactly_one_small_row(db, mk):
    """Exactly the statements the compaction code runs."""
    user, ws = await _setup(mk)
    doc = await mk.document(ws, user, "Big", "a" * ONE_MIB, yjs_state=b"\x01" * ONE_MIB)
    start = await db.fetchval("SELECT max(cursor) FROM sync_log")
    app_changes = {"kind": "compaction", "merged_updates": 17, "upto_seq": 12345}
    new_content = "b" * ONE_MIB + "é"
    async with db.transaction():
        await db.execute(
            "SELECT set_config('app.sync_changes', $1, true), set_config('app.device_id', $2, true), "
            "set_config('app.client_version', $3, true)", json.dumps(app_changes), "server-1", "collab/0.1")
        status = await db.execute(
            "UPDATE documents SET yjs_state = $2, yjs_clock = $3, content = $4, updated_by = $5, "
            "last_edited_at = now() WHERE id = $1", doc, b"\x02" * ONE_MIB, 42, new_content, user)
        assert status == "UPDATE 1"
        txid = await db.fetchval("SELECT pg_current_xact_id()::text")

    rows = await db.fetch("SELECT *, octet_length(changes::text) AS changes_size FROM sync_log WHERE cursor > $1",
                          start)
    assert len(rows) == 1
    row = rows[0]
    assert row["operation"] == "update" and row["entity_id"] == doc and row["workspace_id"] == ws
    assert row["changes_size"] < 1024
    changes = as_json(row["changes"])
    assert changes["columns"] == ["content", "yjs_state", "yjs_clock", "last_edited_at", "updated_by"]
    for key, value in app_changes.items():
        assert changes[key] == value
    assert row["device_id"] == "server-1" and row["client_version"] == "collab/0.1"
    assert row["changed_by"] == user
    assert str(row["txid"]) == txid
    assert row["content_hash"] == await db.fetchval("SELECT content_hash FROM documents WHERE id = $1", doc)

    # The settings were transaction-local: the next save carries none of them.
    await db.execute("UPDATE documents SET title = 'Renamed' WHERE id = $1", doc)
    last = (await _log(db, doc))[-1]
    assert last["changes"] == {"columns": ["title"]}
    assert last["device_id"] is None and last["client_version"] is None


async def test_view_tracking_update_is_not_logged(db, mk):
    user, ws = await _setup(mk)
    doc = await mk.document(ws, user, "Popular", "text")
    before = len(await _log(db, doc))
    await db.execute("UPDATE documents SET view_count = view_count + 1, last_viewed_at = now() WHERE id = $1", doc)
    await db.execute("UPDATE documents SET title = title WHERE id = $1", doc)  # no-op update
    assert len(await _log(db, doc)) == before
    await db.execute("UPDATE documents SET metadata = metadata || '{\"status\": \"final\"}' WHERE id = $1", doc)
    log = await _log(db, doc)
    assert len(log) == before + 1 and log[-1]["changes"] == {"columns": ["metadata"]}


async def test_soft_delete_and_hard_delete(db, mk):
    user, ws = await _setup(mk)
    other = await mk.user()
    await mk.member(ws, other)
    doc = await mk.document(ws, user, "Doomed", "text")
    await db.execute("UPDATE documents SET deleted = TRUE, deleted_at = now(), deleted_by = $2 WHERE id = $1",
                     doc, other)
    soft = (await _log(db, doc))[-1]
    assert soft["operation"] == "delete" and soft["changed_by"] == other
    assert soft["changes"] == {"soft": True, "columns": ["deleted", "deleted_at", "deleted_by"]}

    await db.execute("UPDATE documents SET deleted = FALSE, deleted_at = NULL, deleted_by = NULL WHERE id = $1", doc)
    assert (await _log(db, doc))[-1]["operation"] == "update"

    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", str(other))
        await db.execute("DELETE FROM documents WHERE id = $1", doc)
    hard = (await _log(db, doc))[-1]
    assert hard["operation"] == "delete" and hard["changes"] == {"soft": False}
    assert hard["changed_by"] == other
    assert [r["operation"] for r in await _log(db, doc)] == ["create", "delete", "update", "delete"]


async def test_actor_fallback_and_bad_settings(db, mk):
    user, ws = await _setup(mk)
    editor = await mk.user()
    await mk.member(ws, editor)
    doc = await mk.document(ws, user, "Shared", "text", updated_by=user)

    # updated_by unchanged -> app.current_user_id is the actor
    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", str(editor))
        await db.execute("UPDATE documents SET content = 'edited' WHERE id = $1", doc)
    assert (await _log(db, doc))[-1]["changed_by"] == editor

    # updated_by changed in the statement -> it wins
    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", str(user))
        await db.execute("UPDATE documents SET content = 'edited again', updated_by = $2 WHERE id = $1", doc, editor)
    assert (await _log(db, doc))[-1]["changed_by"] == editor

    # Garbage settings never break a save.
    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', 'not-a-uuid', true), "
                         "set_config('app.sync_changes', '{broken json', true), "
                         "set_config('app.device_id', $1, true)", "d" * 1000)
        await db.execute("UPDATE documents SET title = 'T2' WHERE id = $1", doc)
    last = (await _log(db, doc))[-1]
    assert last["changes"]["columns"] == ["title"] and last["changes"]["app"] == "{broken json"
    assert last["changed_by"] == editor  # falls back to updated_by
    assert len(last["device_id"]) == 255

    # A JSON value that is not an object is kept under "app"; trigger keys cannot be overridden.
    async with db.transaction():
        await db.execute("""SELECT set_config('app.sync_changes', '[1, 2]', true)""")
        await db.execute("UPDATE documents SET title = 'T3' WHERE id = $1", doc)
    assert (await _log(db, doc))[-1]["changes"] == {"columns": ["title"], "app": [1, 2]}
    async with db.transaction():
        await db.execute("""SELECT set_config('app.sync_changes', '{"columns": "lie", "x": 1}', true)""")
        await db.execute("UPDATE documents SET title = 'T4' WHERE id = $1", doc)
    assert (await _log(db, doc))[-1]["changes"] == {"columns": ["title"], "x": 1}

    # An actor that does not exist (any more) is stored as NULL instead of failing the FK.
    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', gen_random_uuid()::text, true)")
        await db.execute("DELETE FROM documents WHERE id = $1", doc)
    assert (await _log(db, doc))[-1]["changed_by"] is None


async def test_move_between_workspaces(db, mk):
    user, ws = await _setup(mk)
    ws2 = await mk.workspace(user)
    doc = await mk.document(ws, user, "Nomad", "text")
    await db.execute("UPDATE documents SET workspace_id = $2 WHERE id = $1", doc, ws2)
    log = await _log(db, doc)
    assert [(r["operation"], r["workspace_id"]) for r in log] == [
        ("create", ws), ("delete", ws), ("create", ws2)]
    assert log[1]["changes"] == {"moved_to": str(ws2)}
    assert log[2]["changes"] == {"columns": ["workspace_id"]}


async def test_every_document_column_is_tracked(db, mk):
    """Each column change is reported by name; columns added later must be handled deliberately."""
    cols = {r["attname"] for r in await db.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attnum > 0 "
        "AND NOT attisdropped")}
    user, ws = await _setup(mk)
    ws2 = await mk.workspace(user)
    doc = await mk.document(ws, user, "All columns", "text")
    changes = {
        "title": "'New title'", "type": "'mindmap'", "content": "'new content'",
        "metadata": """'{"tags": ["t"]}'""", "settings": "'{}'", "yjs_state": "'\\x01'::bytea",
        "yjs_clock": "7", "last_edited_at": "now()", "created_by": "NULL", "updated_by": f"'{user}'",
        "created_at": "now() - interval '1 day'", "deleted": "TRUE", "deleted_at": "now()",
        "deleted_by": f"'{user}'", "workspace_id": f"'{ws2}'",
    }
    # Every existing column is either reported or deliberately ignored.
    untracked = cols - set(changes) - NOT_REPORTED - {"id", "view_count", "last_viewed_at"}
    assert not untracked, f"document_changed_columns() does not know {untracked}: replace it in a migration"
    for col, expr in changes.items():
        before = await db.fetchval("SELECT max(cursor) FROM sync_log")
        await db.execute(f"UPDATE documents SET {col} = {expr} WHERE id = $1", doc)
        last = await db.fetchrow("SELECT changes FROM sync_log WHERE cursor > $1 AND entity_id = $2 "
                                 "ORDER BY cursor DESC LIMIT 1", before, doc)
        assert last is not None, col
        assert as_json(last["changes"])["columns"] == [col]


async def test_workspace_gone_means_no_log_row(db, mk):
    user, ws = await _setup(mk)
    doc = await mk.document(ws, user, "In a doomed workspace")
    # The trigger skips rows whose workspace is gone (here: being deleted by the cascade).
    await db.execute("DELETE FROM workspaces WHERE id = $1", ws)
    assert await _log(db, doc) == []


async def test_concurrent_version_inserts_are_numbered_1_to_12(db, db_url, mk):
    user, ws = await _setup(mk)
    doc = await mk.document(ws, user, "Hot document", "text")
    conns = await asyncio.gather(*(asyncpg.connect(db_url) for _ in range(12)))
    try:
        barrier = asyncio.Barrier(12)

        async def insert(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                await conn.execute("SELECT 1")  # transaction really started
                await barrier.wait()
                num = await conn.fetchval(
                    "INSERT INTO document_versions (document_id, title, content, created_by) "
                    "VALUES ($1, 'snap', 'c', $2) RETURNING version_number", doc, user)
                await asyncio.sleep(0.01)  # hold the transaction open so the others really queue up
                return num

        nums = await asyncio.gather(*(insert(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert sorted(nums) == list(range(1, 13))
    stored = [r[0] for r in await db.fetch(
        "SELECT version_number FROM document_versions WHERE document_id = $1 ORDER BY 1", doc)]
    assert stored == list(range(1, 13))
