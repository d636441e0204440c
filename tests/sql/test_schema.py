"""Exercise every object of sql/001_schema.sql with real operations."""

from __future__ import annotations

import hashlib
import pathlib
import re
import uuid

import asyncpg
import pytest

from .conftest import as_json

SQL_DIR = pathlib.Path(__file__).resolve().parents[2] / "sql"

TABLES = {
    "users", "workspaces", "workspace_members", "documents", "document_versions", "attachments",
    "comments", "presence", "sync_log", "invitations", "mindmaps", "api_keys", "usage_metrics",
}
ENUMS = {"workspace_role", "document_type", "sync_operation", "invitation_status", "ai_provider", "metric_type"}
VIEWS = {"active_documents", "user_workspace_summary"}
MATVIEWS = {"daily_active_users", "workspace_activity_summary"}
FUNCTIONS = {
    "auto_version_number", "set_comment_thread_id", "update_updated_at_column", "log_document_change",
    "update_workspace_storage", "cleanup_expired_presence", "cleanup_expired_invitations",
    "get_user_workspaces", "search_documents", "archive_old_versions", "cleanup_old_sync_log",
}
TRIGGERS = {
    ("document_versions", "trigger_auto_version_number"), ("comments", "trigger_comment_thread_id"),
    ("users", "update_users_updated_at"), ("workspaces", "update_workspaces_updated_at"),
    ("documents", "update_documents_updated_at"), ("comments", "update_comments_updated_at"),
    ("mindmaps", "update_mindmaps_updated_at"), ("documents", "trigger_log_document_change"),
    ("attachments", "trigger_update_workspace_storage"), ("api_keys", "update_api_keys_updated_at"),
}
SEED_INDEXES = {
    "idx_users_email", "idx_users_cognito_sub", "idx_users_last_seen", "idx_users_subscription",
    "idx_workspaces_owner", "idx_workspaces_slug", "idx_workspaces_updated", "idx_workspaces_team",
    "idx_workspace_members_user", "idx_workspace_members_role", "idx_workspace_members_active",
    "idx_documents_workspace", "idx_documents_workspace_updated", "idx_documents_created_by",
    "idx_documents_updated_by", "idx_documents_content_hash", "idx_documents_search", "idx_documents_type",
    "idx_documents_metadata", "idx_documents_title_trgm", "idx_versions_document", "idx_versions_created_at",
    "idx_versions_author", "idx_attachments_document", "idx_attachments_workspace", "idx_attachments_uploader",
    "idx_attachments_s3_key", "idx_attachments_processing", "idx_comments_document", "idx_comments_thread",
    "idx_comments_author", "idx_comments_mentions", "idx_comments_resolved", "idx_presence_document_active",
    "idx_presence_user_document", "idx_presence_expires", "idx_presence_connection",
    "idx_sync_log_workspace_cursor", "idx_sync_log_entity", "idx_sync_log_timestamp", "idx_sync_log_cursor",
    "idx_invitations_workspace", "idx_invitations_email", "idx_invitations_token", "idx_invitations_expires",
    "idx_mindmaps_document", "idx_api_keys_user_provider", "idx_usage_metrics_user_period",
    "idx_usage_metrics_workspace", "idx_usage_metrics_period", "idx_dau_date",
    "idx_workspace_activity_workspace", "idx_invitations_pending_unique",
}
POLICIES = {
    ("documents", "documents_access_policy"), ("comments", "comments_access_policy"),
    ("workspace_members", "workspace_members_select_policy"),
    ("documents", "documents_service_policy"), ("comments", "comments_service_policy"),
    ("workspace_members", "workspace_members_service_policy"),
}


async def _later(db: asyncpg.Connection) -> None:
    """Make sure the next statement's now() is strictly later (each statement is its own transaction)."""
    await db.execute("SELECT pg_sleep(0.002)")


# ----------------------------------------------------------------------------------------------------------
# Catalog / migration file
# ----------------------------------------------------------------------------------------------------------


async def test_every_seed_object_exists(db):
    tables = {r["relname"] for r in await db.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'")}
    assert tables >= TABLES
    enums = {r["typname"] for r in await db.fetch("SELECT typname FROM pg_type WHERE typtype = 'e'")}
    assert enums >= ENUMS
    views = {r["relname"] for r in await db.fetch("SELECT relname FROM pg_class WHERE relkind = 'v'")}
    assert views >= VIEWS
    matviews = {r["relname"] for r in await db.fetch("SELECT relname FROM pg_class WHERE relkind = 'm'")}
    assert matviews >= MATVIEWS
    funcs = {r["proname"] for r in await db.fetch(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")}
    assert funcs >= FUNCTIONS
    triggers = {(r["relname"], r["tgname"]) for r in await db.fetch(
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal")}
    assert triggers >= TRIGGERS
    indexes = {r["relname"] for r in await db.fetch("SELECT relname FROM pg_class WHERE relkind = 'i'")}
    assert indexes >= SEED_INDEXES
    policies = {(r["tablename"], r["policyname"]) for r in await db.fetch(
        "SELECT tablename, policyname FROM pg_policies")}
    assert policies >= POLICIES
    forced = {r["relname"] for r in await db.fetch(
        "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity")}
    assert forced >= {"documents", "comments", "workspace_members"}
    exts = {r["extname"] for r in await db.fetch("SELECT extname FROM pg_extension")}
    assert "pg_trgm" in exts
    assert not exts & {"uuid-ossp", "pgcrypto"}
    roles = {r["rolname"]: r for r in await db.fetch(
        "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname IN ('collab_user','collab_service')")}
    assert set(roles) == {"collab_user", "collab_service"}
    assert not any(r["rolcanlogin"] or r["rolbypassrls"] for r in roles.values())
    txid_type = await db.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'sync_log'::regclass AND attname = 'txid' AND attnotnull")
    assert txid_type == "xid8"


def test_migration_file_is_runner_friendly():
    text = (SQL_DIR / "001_schema.sql").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    assert not re.search(r"^\s*\\", code, re.M), "psql meta-command"
    assert not re.search(r"\bCONCURRENTLY\b", code, re.I)
    assert not re.search(r"^\s*(BEGIN|COMMIT|ROLLBACK)\s*;", code, re.I | re.M)
    for banned in ("uuid_generate_v4", "gen_random_bytes", "digest(", "uuid-ossp", "pgcrypto"):
        assert banned not in code


async def test_migration_applies_in_one_transaction_via_simple_protocol(db, db_url):
    """Re-apply 001 into an empty database exactly like the runner does (roles already exist)."""
    name = "t_sql_mig_" + uuid.uuid4().hex[:12]
    await db.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    try:
        conn = await asyncpg.connect(db_url.rsplit("/", 1)[0] + "/" + name)
        try:
            async with conn.transaction():
                await conn.execute((SQL_DIR / "001_schema.sql").read_text())
            assert await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'sync_log'") == 1
            # pg_stat_statements is optional: present iff the server ships it.
            available = await conn.fetchval(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
            installed = await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
            assert installed == available
        finally:
            await conn.close()
    finally:
        await db.execute(f"DROP DATABASE {name}")


# ----------------------------------------------------------------------------------------------------------
# Tables: insert with defaults / update / delete
# ----------------------------------------------------------------------------------------------------------


async def test_users_defaults_update_delete(db, mk):
    uid = await mk.user("alice")
    row = await db.fetchrow("SELECT * FROM users WHERE id = $1", uid)
    assert row["id"].version == 4
    assert row["email_verified"] is False
    assert row["subscription_tier"] == "free" and row["subscription_status"] == "active"
    assert as_json(row["settings"])["theme"] == "system"
    assert as_json(row["features"])["collaboration"] is True
    assert row["created_at"] is not None and row["updated_at"] == row["created_at"]
    assert row["last_seen_at"] is not None and row["deleted_at"] is None

    with pytest.raises(asyncpg.CheckViolationError):
        await mk.user(email="not-an-email")
    with pytest.raises(asyncpg.CheckViolationError):
        await mk.user(email="a@b.c|m")
    with pytest.raises(asyncpg.UniqueViolationError):
        await mk.user(email=row["email"])

    await _later(db)
    await db.execute("UPDATE users SET display_name = 'Alice' WHERE id = $1", uid)
    updated = await db.fetchrow("SELECT display_name, updated_at FROM users WHERE id = $1", uid)
    assert updated["display_name"] == "Alice" and updated["updated_at"] > row["updated_at"]

    assert await db.execute("DELETE FROM users WHERE id = $1", uid) == "DELETE 1"


async def test_workspaces_defaults_update_delete(db, mk):
    owner = await mk.user()
    ws = await mk.workspace(owner, "Team", member_role=None)
    row = await db.fetchrow("SELECT * FROM workspaces WHERE id = $1", ws)
    assert row["is_personal"] is True and row["is_team"] is False
    assert row["storage_used_bytes"] == 0 and row["storage_limit_bytes"] == 1073741824
    assert row["member_limit"] == 10
    assert as_json(row["settings"])["default_permissions"] == "editor"

    with pytest.raises(asyncpg.CheckViolationError):
        await mk.workspace(owner, "   ", member_role=None)
    await mk.workspace(owner, "Other", member_role=None, slug="team")
    with pytest.raises(asyncpg.UniqueViolationError):
        await mk.workspace(owner, "Other2", member_role=None, slug="team")

    await _later(db)
    await db.execute("UPDATE workspaces SET description = 'd' WHERE id = $1", ws)
    assert await db.fetchval("SELECT updated_at FROM workspaces WHERE id = $1", ws) > row["updated_at"]
    assert await db.execute("DELETE FROM workspaces WHERE id = $1", ws) == "DELETE 1"


async def test_workspace_members_defaults_update_delete(db, mk):
    owner, inviter, u = await mk.user(), await mk.user(), await mk.user()
    ws = await mk.workspace(owner)
    await db.execute("INSERT INTO workspace_members (workspace_id, user_id, invited_by) VALUES ($1, $2, $3)",
                     ws, u, inviter)
    row = await db.fetchrow("SELECT * FROM workspace_members WHERE workspace_id = $1 AND user_id = $2", ws, u)
    assert row["role"] == "viewer" and row["is_active"] is True and row["joined_at"] is not None
    assert as_json(row["permissions"])["can_comment"] is True
    with pytest.raises(asyncpg.UniqueViolationError):
        await mk.member(ws, u)
    with pytest.raises(asyncpg.NotNullViolationError):
        await db.execute("UPDATE workspace_members SET is_active = NULL WHERE user_id = $1", u)

    # Deleting the inviter must not be blocked by invited_by.
    await db.execute("DELETE FROM users WHERE id = $1", inviter)
    assert await db.fetchval("SELECT invited_by FROM workspace_members WHERE user_id = $1", u) is None

    await db.execute("UPDATE workspace_members SET role = 'admin', is_active = FALSE WHERE user_id = $1", u)
    assert await db.fetchval("SELECT role::text FROM workspace_members WHERE user_id = $1", u) == "admin"
    assert await db.execute("DELETE FROM workspace_members WHERE user_id = $1", u) == "DELETE 1"


async def test_documents_defaults_generated_columns_update_delete(db, mk):
    owner = await mk.user()
    ws = await mk.workspace(owner)
    content = "Grüße, Welt — 你好 🎉"
    doc = await mk.document(ws, owner, "Greeting", content,
                            metadata={"tags": ["zebracorn", "quokka-stripe", "tab\tseparated"], "status": "draft"})
    row = await db.fetchrow("SELECT * FROM documents WHERE id = $1", doc)
    assert row["type"] == "markdown" and row["deleted"] is False
    assert row["view_count"] == 0 and row["yjs_clock"] == 0 and row["yjs_state"] is None
    assert as_json(row["settings"])["auto_save"] is True
    assert as_json(row["metadata"])["tags"] == ["zebracorn", "quokka-stripe", "tab\tseparated"]
    assert row["content_hash"] == hashlib.sha256(content.encode()).hexdigest()
    # Tags are a jsonb array: its string elements are indexed (weight C), not the JSON punctuation.
    lexemes = await db.fetchval("SELECT array_to_string(tsvector_to_array(search_vector), ' ') "
                                "FROM documents WHERE id = $1", doc)
    assert "zebracorn" in lexemes and "quokka" in lexemes
    # metadata->>'tags' would index the JSON text, where the tab is the two characters "\t" -> 'tsepar'.
    assert "separ" in lexemes.split() and "tsepar" not in lexemes.split()
    assert await db.fetchval("SELECT search_vector @@ to_tsquery('english', 'zebracorn:C') "
                             "FROM documents WHERE id = $1", doc)
    assert await db.fetchval("SELECT search_vector @@ to_tsquery('english', 'greeting:A') "
                             "FROM documents WHERE id = $1", doc)

    # Empty default content, non-array tags and NULL metadata are all fine.
    d2 = await mk.document(ws, owner, "Empty")
    assert await db.fetchval("SELECT content_hash FROM documents WHERE id = $1", d2) == hashlib.sha256(b"").hexdigest()
    await mk.document(ws, owner, "Tagged", metadata={"tags": "single-tag"})
    await mk.document(ws, owner, "NullMeta", metadata=None)

    with pytest.raises(asyncpg.CheckViolationError):
        await mk.document(ws, owner, "  ")
    with pytest.raises(asyncpg.GeneratedAlwaysError):
        await db.execute("UPDATE documents SET content_hash = 'x' WHERE id = $1", doc)

    await _later(db)
    await db.execute("UPDATE documents SET content = 'new words', updated_by = $2 WHERE id = $1", doc, owner)
    row2 = await db.fetchrow("SELECT * FROM documents WHERE id = $1", doc)
    assert row2["content_hash"] == hashlib.sha256(b"new words").hexdigest()
    assert row2["updated_at"] > row["updated_at"]
    assert await db.fetchval("SELECT search_vector @@ to_tsquery('english', 'word') FROM documents WHERE id = $1",
                             doc)

    assert await db.execute("DELETE FROM documents WHERE id = $1", doc) == "DELETE 1"


async def test_document_updated_at_ignores_view_tracking(db, mk):
    owner = await mk.user()
    ws = await mk.workspace(owner)
    doc = await mk.document(ws, owner, "Viewed", "body")
    before = await db.fetchval("SELECT updated_at FROM documents WHERE id = $1", doc)
    await _later(db)
    await db.execute("UPDATE documents SET view_count = view_count + 1, last_viewed_at = now() WHERE id = $1", doc)
    row = await db.fetchrow("SELECT view_count, updated_at FROM documents WHERE id = $1", doc)
    assert row["view_count"] == 1 and row["updated_at"] == before
    await _later(db)
    await db.execute("UPDATE documents SET view_count = view_count + 1, title = 'Renamed' WHERE id = $1", doc)
    assert await db.fetchval("SELECT updated_at FROM documents WHERE id = $1", doc) > before


async def test_document_versions_numbering_size_hash_update_delete(db, mk):
    owner = await mk.user()
    ws = await mk.workspace(owner)
    doc = await mk.document(ws, owner, "Versioned", "x")
    other = await mk.document(ws, owner, "Other", "y")
    content = "héllo"  # 5 characters, 6 bytes
    v1 = await mk.version(doc, owner, content, yjs_state=b"\x01\x02\x00", version_number=99)
    v2 = await mk.version(doc, owner, "second")
    o1 = await mk.version(other, owner, "first of other")
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM document_versions")}
    assert rows[v1]["version_number"] == 1 and rows[v2]["version_number"] == 2
    assert rows[o1]["version_number"] == 1
    assert rows[v1]["size_bytes"] == 6
    assert rows[v1]["content_hash"] == hashlib.sha256(content.encode()).hexdigest()
    assert rows[v1]["yjs_state"] == b"\x01\x02\x00"
    assert rows[v1]["created_at"] is not None

    v3 = await mk.version(doc, owner, "third", content_hash="supplied")
    assert await db.fetchval("SELECT content_hash FROM document_versions WHERE id = $1", v3) == "supplied"

    await db.execute("UPDATE document_versions SET change_description = 'fixed typo' WHERE id = $1", v2)
    assert await db.fetchval("SELECT change_description FROM document_versions WHERE id = $1", v2) == "fixed typo"
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("UPDATE document_versions SET version_number = 1 WHERE id = $1", v2)
    # Deleting the author keeps the version.
    author = await mk.user()
    v4 = await mk.version(doc, author, "by author")
    await db.execute("DELETE FROM users WHERE id = $1", author)
    assert await db.fetchval("SELECT created_by FROM document_versions WHERE id = $1", v4) is None
    assert await db.execute("DELETE FROM document_versions WHERE id = $1", v1) == "DELETE 1"
    assert await mk.version(doc, owner, "next") is not None
    assert await db.fetchval("SELECT max(version_number) FROM document_versions WHERE document_id = $1", doc) == 5


async def test_attachments_storage_accounting(db, mk):
    owner = await mk.user()
    ws1, ws2 = await mk.workspace(owner), await mk.workspace(owner)
    doc = await mk.document(ws1, owner, "With files")

    async def used(ws):
        return await db.fetchval("SELECT storage_used_bytes FROM workspaces WHERE id = $1", ws)

    a = await mk.attachment(ws1, owner, 1000, doc)
    b = await mk.attachment(ws1, owner, 500)
    row = await db.fetchrow("SELECT * FROM attachments WHERE id = $1", a)
    assert row["s3_region"] == "us-east-1" and row["processing_status"] == "pending"
    assert row["download_count"] == 0 and as_json(row["metadata"]) == {} and row["uploaded_at"] is not None
    assert await used(ws1) == 1500

    await db.execute("UPDATE attachments SET size_bytes = 1200 WHERE id = $1", a)
    assert await used(ws1) == 1700
    await db.execute("UPDATE attachments SET processing_status = 'complete' WHERE id = $1", a)
    assert await used(ws1) == 1700

    # Move b to another workspace: subtract from the old one, add to the new one.
    await db.execute("UPDATE attachments SET workspace_id = $2 WHERE id = $1", b, ws2)
    assert (await used(ws1), await used(ws2)) == (1200, 500)
    # Move and resize in one statement.
    await db.execute("UPDATE attachments SET workspace_id = $2, size_bytes = 800 WHERE id = $1", b, ws1)
    assert (await used(ws1), await used(ws2)) == (2000, 0)

    with pytest.raises(asyncpg.NotNullViolationError):
        await mk.attachment(ws1, owner, None)
    with pytest.raises(asyncpg.CheckViolationError):
        await mk.attachment(ws1, owner, -5)
    with pytest.raises(asyncpg.UniqueViolationError):
        await mk.attachment(ws1, owner, 1, s3_key=row["s3_key"])
    assert await used(ws1) == 2000

    await db.execute("DELETE FROM attachments WHERE id = $1", b)
    assert await used(ws1) == 1200
    # Cascade from the document removes its attachment and its bytes.
    await db.execute("DELETE FROM documents WHERE id = $1", doc)
    assert await used(ws1) == 0
    assert await db.fetchval("SELECT count(*) FROM attachments") == 0


async def test_comment_threads(db, mk):
    owner = await mk.user()
    ws = await mk.workspace(owner)
    doc = await mk.document(ws, owner, "Discussed")
    other = await mk.document(ws, owner, "Elsewhere")
    root = await mk.comment(doc, owner, content="root")
    reply = await mk.comment(doc, owner, root, "reply")
    reply2 = await mk.comment(doc, owner, reply, "reply to reply")
    root2 = await mk.comment(doc, owner, content="another root", thread_id=uuid.uuid4(), depth=7)
    rows = {r["id"]: r for r in await db.fetch("SELECT id, thread_id, depth FROM comments")}
    assert (rows[root]["thread_id"], rows[root]["depth"]) == (root, 0)
    assert (rows[reply]["thread_id"], rows[reply]["depth"]) == (root, 1)
    assert (rows[reply2]["thread_id"], rows[reply2]["depth"]) == (root, 2)
    assert (rows[root2]["thread_id"], rows[root2]["depth"]) == (root2, 0)

    row = await db.fetchrow("SELECT * FROM comments WHERE id = $1", root)
    assert row["resolved"] is False and row["edited"] is False
    assert as_json(row["reactions"]) == [] and as_json(row["edit_history"]) == []

    with pytest.raises(asyncpg.CheckViolationError):
        await mk.comment(other, owner, root, "reply on another document")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await mk.comment(doc, owner, uuid.uuid4(), "orphan reply")
    with pytest.raises(asyncpg.CheckViolationError):
        await mk.comment(doc, owner, content="  ")

    await _later(db)
    await db.execute("UPDATE comments SET resolved = TRUE, resolved_by = $2, resolved_at = now() WHERE id = $1",
                     root, owner)
    assert await db.fetchval("SELECT updated_at FROM comments WHERE id = $1", root) > row["updated_at"]
    # Deleting the root removes the whole thread.
    await db.execute("DELETE FROM comments WHERE id = $1", root)
    assert await db.fetchval("SELECT count(*) FROM comments") == 1


async def test_presence_defaults_and_cleanup(db, mk):
    u = await mk.user()
    ws = await mk.workspace(u)
    doc = await mk.document(ws, u, "Live")
    ins = "INSERT INTO presence (user_id, document_id, connection_id) VALUES ($1, $2, $3) RETURNING *"
    fresh = await db.fetchrow(ins, u, doc, "c-fresh")
    assert fresh["is_active"] is True and fresh["is_typing"] is False
    delta = (fresh["expires_at"] - fresh["connected_at"]).total_seconds()
    assert 299 <= delta <= 301
    expired = await db.fetchrow(ins, u, doc, "c-expired")
    gone = await db.fetchrow(ins, u, doc, "c-gone")
    recent = await db.fetchrow(ins, u, doc, "c-recently-gone")
    await db.execute("UPDATE presence SET expires_at = now() - interval '1 second' WHERE id = $1", expired["id"])
    await db.execute("UPDATE presence SET disconnected_at = now() - interval '2 hours', is_active = FALSE "
                     "WHERE id = $1", gone["id"])
    await db.execute("UPDATE presence SET disconnected_at = now() - interval '5 minutes' WHERE id = $1",
                     recent["id"])
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(ins, u, doc, "c-fresh")

    assert await db.fetchval("SELECT cleanup_expired_presence()") == 2
    left = {r["connection_id"] for r in await db.fetch("SELECT connection_id FROM presence")}
    assert left == {"c-fresh", "c-recently-gone"}
    assert await db.fetchval("SELECT cleanup_expired_presence()") == 0
    assert await db.execute("DELETE FROM presence WHERE id = $1", fresh["id"]) == "DELETE 1"


async def test_sync_log_defaults_and_retention(db, mk):
    u = await mk.user()
    ws = await mk.workspace(u)
    ins = ("INSERT INTO sync_log (entity_type, entity_id, workspace_id, operation) "
           "VALUES ('attachment', gen_random_uuid(), $1, 'create') RETURNING *")
    async with db.transaction():
        a = await db.fetchrow(ins, ws)
        b = await db.fetchrow(ins, ws)
        xid = await db.fetchval("SELECT pg_current_xact_id()::text")
    assert b["cursor"] > a["cursor"]
    assert str(a["txid"]) == xid == str(b["txid"])
    assert a["timestamp"] is not None and a["changed_by"] is None
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("UPDATE sync_log SET cursor = $1 WHERE id = $2", a["cursor"], b["id"])

    await db.execute("UPDATE sync_log SET timestamp = now() - interval '100 days' WHERE id = $1", a["id"])
    await db.execute("UPDATE sync_log SET timestamp = now() - interval '10 days' WHERE id = $1", b["id"])
    total = await db.fetchval("SELECT count(*) FROM sync_log")
    assert await db.fetchval("SELECT cleanup_old_sync_log()") == 1
    assert await db.fetchval("SELECT count(*) FROM sync_log") == total - 1
    assert await db.fetchval("SELECT cleanup_old_sync_log(interval '1 day')") == 1
    assert await db.fetchval("SELECT count(*) FROM sync_log WHERE id = $1", b["id"]) == 0


async def test_invitations(db, mk):
    owner = await mk.user()
    ws, ws2 = await mk.workspace(owner), await mk.workspace(owner)
    ins = "INSERT INTO invitations (workspace_id, invited_by, email) VALUES ($1, $2, $3) RETURNING *"
    first = await db.fetchrow(ins, ws, owner, "Bob@Example.com")
    assert first["status"] == "pending" and first["role"] == "viewer"
    assert re.fullmatch(r"[0-9a-f]{64}", first["token"])
    days = (first["expires_at"] - first["created_at"]).total_seconds() / 86400
    assert 6.99 < days < 7.01

    # Second pending invitation for the same workspace and email (any case) fails ...
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.fetchrow(ins, ws, owner, "bob@example.com")
    # ... but is fine in another workspace,
    other = await db.fetchrow(ins, ws2, owner, "bob@example.com")
    assert other["token"] != first["token"]
    # ... and once the first one is accepted.
    await db.execute("UPDATE invitations SET status = 'accepted', accepted_at = now() WHERE id = $1", first["id"])
    again = await db.fetchrow(ins, ws, owner, "bob@example.com")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("UPDATE invitations SET status = 'pending' WHERE id = $1", first["id"])
    with pytest.raises(asyncpg.NotNullViolationError):
        await db.execute("UPDATE invitations SET status = NULL WHERE id = $1", again["id"])

    tokens = await db.fetch("INSERT INTO invitations (workspace_id, invited_by, email) "
                            "SELECT $1, $2, 'u' || g || '@example.com' FROM generate_series(1, 50) g "
                            "RETURNING token", ws, owner)
    assert len({t["token"] for t in tokens}) == 50

    await db.execute("UPDATE invitations SET expires_at = now() - interval '1 minute' WHERE id = ANY($1::uuid[])",
                     [again["id"], first["id"]])
    assert await db.fetchval("SELECT cleanup_expired_invitations()") == 1  # the accepted one stays accepted
    statuses = dict(await db.fetch("SELECT id, status::text FROM invitations WHERE id = ANY($1::uuid[])",
                                   [again["id"], first["id"]]))
    assert statuses == {again["id"]: "expired", first["id"]: "accepted"}
    # An expired invitation no longer blocks a new pending one.
    await db.fetchrow(ins, ws, owner, "BOB@example.com")

    # Deleting the inviter keeps the invitation.
    inviter = await mk.user()
    inv = await db.fetchrow(ins, ws, inviter, "carol@example.com")
    await db.execute("DELETE FROM users WHERE id = $1", inviter)
    assert await db.fetchval("SELECT invited_by FROM invitations WHERE id = $1", inv["id"]) is None
    assert await db.execute("DELETE FROM invitations WHERE id = $1", inv["id"]) == "DELETE 1"


async def test_mindmaps(db, mk):
    u = await mk.user()
    ws = await mk.workspace(u)
    doc = await mk.document(ws, u, "Map", type="mindmap")
    row = await db.fetchrow("INSERT INTO mindmaps (document_id) VALUES ($1) RETURNING *", doc)
    assert as_json(row["nodes"]) == [] and as_json(row["edges"]) == [] and row["layout_type"] == "tree"
    assert row["ai_generated"] is False and as_json(row["layout_settings"]) == {}
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO mindmaps (document_id) VALUES ($1)", doc)
    await _later(db)
    await db.execute("""UPDATE mindmaps SET nodes = '[{"id": 1}]' WHERE id = $1""", row["id"])
    assert await db.fetchval("SELECT updated_at FROM mindmaps WHERE id = $1", row["id"]) > row["updated_at"]
    await db.execute("DELETE FROM documents WHERE id = $1", doc)
    assert await db.fetchval("SELECT count(*) FROM mindmaps") == 0


async def test_api_keys(db, mk):
    u = await mk.user()
    ins = ("INSERT INTO api_keys (user_id, provider, encrypted_key, key_hash) VALUES ($1, 'openai', 'enc', $2) "
           "RETURNING *")
    row = await db.fetchrow(ins, u, "h1")
    assert row["is_active"] is True and row["is_valid"] is True and row["usage_count"] == 0
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.fetchrow(ins, u, "h1")
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await db.execute("INSERT INTO api_keys (user_id, provider, encrypted_key, key_hash) "
                         "VALUES ($1, 'nope', 'e', 'h')", u)
    await _later(db)
    await db.execute("UPDATE api_keys SET usage_count = usage_count + 1, last_used_at = now() WHERE id = $1",
                     row["id"])
    upd = await db.fetchrow("SELECT usage_count, updated_at FROM api_keys WHERE id = $1", row["id"])
    assert upd["usage_count"] == 1 and upd["updated_at"] > row["updated_at"]
    await db.execute("DELETE FROM users WHERE id = $1", u)
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_usage_metrics(db, mk):
    u = await mk.user()
    ws = await mk.workspace(u)
    row = await db.fetchrow(
        "INSERT INTO usage_metrics (user_id, workspace_id, metric_type, value, period_start, period_end) "
        "VALUES ($1, $2, 'ai_token', 42, now() - interval '1 hour', now()) RETURNING *", u, ws)
    assert as_json(row["metadata"]) == {} and row["recorded_at"] is not None
    await db.execute("UPDATE usage_metrics SET value = value + 8 WHERE id = $1", row["id"])
    assert await db.fetchval("SELECT value FROM usage_metrics WHERE id = $1", row["id"]) == 50
    await db.execute("DELETE FROM workspaces WHERE id = $1", ws)
    assert await db.fetchval("SELECT count(*) FROM usage_metrics") == 0


# ----------------------------------------------------------------------------------------------------------
# Deleting parents
# ----------------------------------------------------------------------------------------------------------


async def test_hard_delete_workspace_with_content(db, mk):
    owner, editor = await mk.user(), await mk.user()
    ws = await mk.workspace(owner)
    keep = await mk.workspace(owner)
    await mk.member(ws, editor)
    docs = [await mk.document(ws, owner, f"d{i}", "text") for i in range(3)]
    for d in docs:
        await mk.version(d, owner, "snap")
        c = await mk.comment(d, editor)
        await mk.comment(d, owner, c, "reply")
        await mk.attachment(ws, owner, 10, d)
    await db.execute("INSERT INTO presence (user_id, document_id, connection_id) VALUES ($1, $2, 'p1')",
                     editor, docs[0])
    await db.execute("INSERT INTO invitations (workspace_id, invited_by, email) VALUES ($1, $2, 'x@example.com')",
                     ws, owner)
    kept_doc = await mk.document(keep, owner, "kept")
    await db.execute("UPDATE documents SET deleted = TRUE WHERE id = $1", docs[2])
    before_keep = await db.fetchval("SELECT count(*) FROM sync_log WHERE workspace_id = $1", keep)

    assert await db.execute("DELETE FROM workspaces WHERE id = $1", ws) == "DELETE 1"

    for table in ("documents", "attachments", "invitations", "workspace_members", "sync_log"):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE workspace_id = $1", ws) == 0, table
    assert await db.fetchval("SELECT count(*) FROM document_versions") == 0
    assert await db.fetchval("SELECT count(*) FROM comments") == 0
    assert await db.fetchval("SELECT count(*) FROM presence") == 0
    orphans = await db.fetchval(
        "SELECT count(*) FROM sync_log s WHERE NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.workspace_id)")
    assert orphans == 0
    assert await db.fetchval("SELECT count(*) FROM sync_log WHERE workspace_id = $1", keep) == before_keep
    assert await db.fetchval("SELECT count(*) FROM documents WHERE id = $1", kept_doc) == 1


async def test_hard_delete_user_everywhere(db, mk):
    """A user who owns a workspace and authored things in someone else's workspace can be deleted."""
    alice, bob = await mk.user("alice"), await mk.user("bob")
    ws_alice = await mk.workspace(alice)
    await mk.member(ws_alice, bob)
    await mk.document(ws_alice, bob, "bob in alice's ws", updated_by=alice, deleted_by=alice)
    await mk.document(ws_alice, alice, "alice in her own ws", updated_by=alice)
    ws_bob = await mk.workspace(bob)
    await mk.member(ws_bob, alice, invited_by=bob)
    doc = await mk.document(ws_bob, alice, "alice in bob's ws", "content", updated_by=alice)
    await db.execute("UPDATE documents SET deleted = TRUE, deleted_by = $2 WHERE id = $1",
                     await mk.document(ws_bob, alice, "soft deleted"), alice)
    await mk.version(doc, alice, "snap")
    await mk.attachment(ws_bob, alice, 5, doc)
    c = await mk.comment(doc, bob, content="question")
    await mk.comment(doc, bob, c, "resolved by alice", resolved=True, resolved_by=alice)
    await db.execute("INSERT INTO invitations (workspace_id, invited_by, email, user_id) "
                     "VALUES ($1, $2, 'z@example.com', $2)", ws_bob, alice)
    async with db.transaction():
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", str(alice))
        await db.execute("UPDATE documents SET title = 'edited by alice' WHERE id = $1", doc)

    assert await db.execute("DELETE FROM users WHERE id = $1", alice) == "DELETE 1"

    assert await db.fetchval("SELECT count(*) FROM workspaces WHERE id = $1", ws_alice) == 0
    row = await db.fetchrow("SELECT created_by, updated_by FROM documents WHERE id = $1", doc)
    assert (row["created_by"], row["updated_by"]) == (None, None)
    assert await db.fetchval("SELECT deleted_by FROM documents WHERE title = 'soft deleted'") is None
    assert await db.fetchval("SELECT created_by FROM document_versions") is None
    assert await db.fetchval("SELECT uploaded_by FROM attachments") is None
    assert await db.fetchval("SELECT resolved_by FROM comments WHERE parent_id IS NOT NULL") is None
    assert await db.fetchval("SELECT count(*) FROM sync_log WHERE changed_by = $1", alice) == 0
    assert await db.fetchval("SELECT count(*) FROM sync_log WHERE workspace_id = $1", ws_alice) == 0
    assert await db.fetchval("SELECT count(*) FROM workspace_members WHERE user_id = $1", alice) == 0


# ----------------------------------------------------------------------------------------------------------
# Views and materialized views
# ----------------------------------------------------------------------------------------------------------


async def test_active_documents_view(db, mk):
    owner, ghost = await mk.user("owner"), await mk.user("ghost")
    ws = await mk.workspace(owner, "Main")
    await mk.member(ws, ghost)
    gone_ws = await mk.workspace(owner, "Gone")
    doc = await mk.document(ws, owner, "Visible", "c", yjs_state=b"\x00" * 10)
    await mk.comment(doc, owner)
    deleted_comment = await mk.comment(doc, owner)
    await db.execute("UPDATE comments SET deleted_at = now() WHERE id = $1", deleted_comment)
    await mk.version(doc, owner)
    await mk.version(doc, owner)
    await db.execute("UPDATE documents SET deleted = TRUE WHERE id = $1", await mk.document(ws, owner, "Trash"))
    await mk.document(gone_ws, owner, "In deleted workspace")
    await db.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", gone_ws)
    orphan = await mk.document(ws, ghost, "Creator deleted")
    await db.execute("DELETE FROM users WHERE id = $1", ghost)

    rows = {r["title"]: r for r in await db.fetch("SELECT * FROM active_documents")}
    assert set(rows) == {"Visible", "Creator deleted"}
    v = rows["Visible"]
    assert v["creator_name"] == "owner" and v["workspace_name"] == "Main"
    assert v["comment_count"] == 1 and v["version_count"] == 2
    assert v["content_hash"] == hashlib.sha256(b"c").hexdigest()
    assert "yjs_state" not in v.keys() and "search_vector" not in v.keys()
    assert rows["Creator deleted"]["id"] == orphan and rows["Creator deleted"]["creator_name"] is None


async def test_user_workspace_summary_view(db, mk):
    a, b = await mk.user(), await mk.user()
    ws = await mk.workspace(a, "Shared")
    await mk.member(ws, b, is_active=False)
    await mk.document(ws, a, "one")
    await mk.document(ws, a, "two")
    await db.execute("UPDATE documents SET deleted = TRUE WHERE title = 'two'")
    empty = await mk.workspace(a, "Empty")
    rows = {(r["user_id"], r["workspace_id"]): r for r in await db.fetch("SELECT * FROM user_workspace_summary")}
    assert set(rows) == {(a, ws), (a, empty)}  # inactive membership of b not listed
    assert rows[(a, ws)]["document_count"] == 1 and rows[(a, ws)]["role"] == "owner"
    assert rows[(a, empty)]["document_count"] == 0 and rows[(a, empty)]["last_activity"] is None
    assert rows[(a, ws)]["storage_limit_bytes"] == 1073741824


async def test_materialized_views_refresh_plain_and_concurrently(db, mk):
    a, b, c = await mk.user(), await mk.user(), await mk.user()
    await db.execute("UPDATE users SET last_seen_at = now() - interval '3 days' WHERE id = $1", c)
    await db.execute("UPDATE users SET last_seen_at = now() - interval '200 days' WHERE id IN ($1)", b)
    ws = await mk.workspace(a, "Busy")
    await mk.member(ws, b)
    await mk.member(ws, c, is_active=False)
    month_ago = await db.fetchval("SELECT now() - interval '30 days'")
    docs = [await mk.document(ws, a, "d0", updated_at=month_ago)]
    docs += [await mk.document(ws, a, f"d{i}") for i in (1, 2)]
    await db.execute("UPDATE documents SET deleted = TRUE WHERE id = $1", docs[2])
    for _ in range(2):
        await mk.comment(docs[0], b)
    await mk.comment(docs[1], b)
    await mk.comment(docs[2], b)  # on a deleted document
    quiet = await mk.workspace(b, "Quiet")
    gone = await mk.workspace(b, "Gone")
    await db.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", gone)

    for concurrently in ("", "CONCURRENTLY"):
        await db.execute(f"REFRESH MATERIALIZED VIEW {concurrently} daily_active_users")
        await db.execute(f"REFRESH MATERIALIZED VIEW {concurrently} workspace_activity_summary")

        dau = {r["activity_date"]: r["active_users"] for r in await db.fetch("SELECT * FROM daily_active_users")}
        today = await db.fetchval("SELECT current_date")
        three_days = await db.fetchval("SELECT (now() - interval '3 days')::date")
        assert dau[today] >= 1 and dau[three_days] == 1 and sum(dau.values()) == 2

        rows = {r["workspace_id"]: r for r in await db.fetch("SELECT * FROM workspace_activity_summary")}
        assert set(rows) == {ws, quiet}
        busy = rows[ws]
        assert busy["workspace_name"] == "Busy" and busy["owner_id"] == a
        assert busy["total_documents"] == 2
        assert busy["recent_documents"] == 1
        assert busy["member_count"] == 2
        assert busy["total_comments"] == 3
        assert busy["last_activity"] is not None
        assert (rows[quiet]["total_documents"], rows[quiet]["member_count"], rows[quiet]["total_comments"]) == (0, 1, 0)

        if not concurrently:
            # A concurrent refresh picks up changes made after a plain one.
            await mk.document(quiet, b, "new in quiet")
            await db.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY workspace_activity_summary")
            assert await db.fetchval("SELECT total_documents FROM workspace_activity_summary "
                                     "WHERE workspace_id = $1", quiet) == 1
            await db.execute("DELETE FROM documents WHERE title = 'new in quiet'")

    uniques = await db.fetch("SELECT indexrelid::regclass::text AS name FROM pg_index "
                             "WHERE indisunique AND indrelid IN ('daily_active_users'::regclass, "
                             "'workspace_activity_summary'::regclass)")
    assert {r["name"] for r in uniques} == {"idx_dau_date", "idx_workspace_activity_workspace"}


# ----------------------------------------------------------------------------------------------------------
# API helper functions
# ----------------------------------------------------------------------------------------------------------


async def test_search_documents(db, mk):
    u = await mk.user()
    ws, other_ws = await mk.workspace(u), await mk.workspace(u)
    in_body = await mk.document(ws, u, "Meeting notes", "we discussed the kangaroo migration at length")
    in_title = await mk.document(ws, u, "Kangaroo facts", "marsupials hop around")
    await mk.document(ws, u, "Unrelated", "nothing to see")
    trashed = await mk.document(ws, u, "Kangaroo trash", "kangaroo")
    await db.execute("UPDATE documents SET deleted = TRUE WHERE id = $1", trashed)
    await mk.document(other_ws, u, "Kangaroo elsewhere", "kangaroo")
    tagged = await mk.document(ws, u, "Tagged", "plain", metadata={"tags": ["wombat"]})

    rows = await db.fetch("SELECT * FROM search_documents($1, 'kangaroos')", ws)
    assert [r["id"] for r in rows] == [in_title, in_body]  # title (A) ranks above body (B)
    assert rows[0]["rank"] > rows[1]["rank"]
    assert rows[0]["title"] == "Kangaroo facts" and "marsupials" in rows[0]["content"]
    assert rows[0]["created_at"] is not None and rows[0]["updated_at"] is not None

    assert [r["id"] for r in await db.fetch("SELECT * FROM search_documents($1, 'migration')", ws)] == [in_body]
    assert [r["id"] for r in await db.fetch("SELECT * FROM search_documents($1, 'wombat')", ws)] == [tagged]
    assert [r["id"] for r in await db.fetch("SELECT * FROM search_documents($1, 'kangaroo', 1, 1)", ws)] == [in_body]
    assert [r["id"] for r in await db.fetch("SELECT * FROM search_documents($1, 'kangaroo -hop')", ws)] == [in_body]
    assert [r["id"] for r in await db.fetch("SELECT * FROM search_documents($1, '\"kangaroo facts\"')", ws)] == [
        in_title]
    assert await db.fetch("SELECT * FROM search_documents($1, 'platypus')", ws) == []


async def test_get_user_workspaces(db, mk):
    a, b, c, d = await mk.user(), await mk.user(), await mk.user(), await mk.user()
    ws = await mk.workspace(a, "Alpha")
    await mk.member(ws, b, role="editor")
    await mk.member(ws, c, is_active=False)
    for i in range(3):
        await mk.document(ws, a, f"doc{i}")
    await db.execute("UPDATE documents SET deleted = TRUE WHERE title = 'doc0'")
    ws_b = await mk.workspace(b, "Beta")
    await mk.member(ws_b, a, role="viewer")
    gone = await mk.workspace(a, "Gone")
    await db.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", gone)

    rows = await db.fetch("SELECT * FROM get_user_workspaces($1)", a)
    by_ws = {r["workspace_id"]: r for r in rows}
    assert set(by_ws) == {ws, ws_b}
    alpha = by_ws[ws]
    assert alpha["workspace_name"] == "Alpha" and alpha["role"] == "owner" and alpha["is_owner"] is True
    assert alpha["document_count"] == 2  # deleted one excluded, not multiplied by members
    assert alpha["member_count"] == 2  # inactive member c excluded
    assert as_json(alpha["permissions"])["can_comment"] is True
    beta = by_ws[ws_b]
    assert (beta["role"], beta["is_owner"], beta["document_count"], beta["member_count"]) == ("viewer", False, 0, 2)

    assert await db.fetch("SELECT * FROM get_user_workspaces($1)", c) == []  # inactive
    assert await db.fetch("SELECT * FROM get_user_workspaces($1)", d) == []  # not a member


async def test_archive_old_versions(db, mk):
    u = await mk.user()
    ws = await mk.workspace(u)
    big, small = await mk.document(ws, u, "big"), await mk.document(ws, u, "small")
    for i in range(13):
        await mk.version(big, u, f"v{i}")
    for i in range(3):
        await mk.version(small, u, f"v{i}")
    assert await db.fetchval("SELECT archive_old_versions()") == 3
    nums = [r[0] for r in await db.fetch(
        "SELECT version_number FROM document_versions WHERE document_id = $1 ORDER BY 1", big)]
    assert nums == list(range(4, 14))
    assert await db.fetchval("SELECT count(*) FROM document_versions WHERE document_id = $1", small) == 3
    assert await db.fetchval("SELECT archive_old_versions()") == 0
    assert await db.fetchval("SELECT archive_old_versions(2)") == 9
    # Numbering continues after the kept maximum.
    await mk.version(big, u, "next")
    assert await db.fetchval("SELECT max(version_number) FROM document_versions WHERE document_id = $1", big) == 14
