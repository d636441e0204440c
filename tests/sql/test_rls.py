"""Row-level security on documents, comments and workspace_members, as a real non-superuser login."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import pytest


@dataclass
class World:
    alice: uuid.UUID  # owner of ws1
    bob: uuid.UUID  # owner of ws2
    carol: uuid.UUID  # INACTIVE member of ws1
    erin: uuid.UUID  # viewer in ws1
    mallory: uuid.UUID  # member of nothing
    ws1: uuid.UUID
    ws2: uuid.UUID
    d1: uuid.UUID
    d2: uuid.UUID


@pytest.fixture
async def world(mk) -> World:
    alice, bob, carol, erin, mallory = [await mk.user(n) for n in ("alice", "bob", "carol", "erin", "mallory")]
    ws1 = await mk.workspace(alice, "One")
    ws2 = await mk.workspace(bob, "Two")
    await mk.member(ws1, carol, is_active=False)
    await mk.member(ws1, erin, role="viewer")
    d1 = await mk.document(ws1, alice, "Doc one", "platypus notes")
    d2 = await mk.document(ws2, bob, "Doc two", "platypus secrets")
    for d, who in ((d1, alice), (d2, bob)):
        root = await mk.comment(d, who, content="root")
        await mk.comment(d, who, root, "reply")
    return World(alice, bob, carol, erin, mallory, ws1, ws2, d1, d2)


async def _as(conn: asyncpg.Connection, user: uuid.UUID | None, sql: str, *args):
    """Run one query in a transaction with app.current_user_id set transaction-locally (or not at all)."""
    async with conn.transaction():
        if user is not None:
            await conn.execute("SELECT set_config('app.current_user_id', $1, true)", str(user))
        return await conn.fetch(sql, *args)


async def _ids(conn, user, table, col="id"):
    return {r[0] for r in await _as(conn, user, f"SELECT {col} FROM {table}")}


async def test_unset_user_sees_nothing_and_no_error(world, login_roles):
    role = await login_roles.create("collab_user")
    conn = await login_roles.connect(role)
    assert not await conn.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
    for table in ("documents", "comments", "workspace_members"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    # After a transaction that set it, the custom setting reverts to '' (not NULL): still nothing, no error.
    assert await _ids(conn, world.alice, "documents") == {world.d1}
    assert await conn.fetchval("SELECT current_setting('app.current_user_id', true)") == ""
    for table in ("documents", "comments", "workspace_members"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_member_sees_only_their_workspaces(world, db, login_roles):
    role = await login_roles.create("collab_user")
    conn = await login_roles.connect(role)
    w = world

    assert await _ids(conn, w.alice, "documents") == {w.d1}
    assert await _ids(conn, w.bob, "documents") == {w.d2}
    assert await _ids(conn, w.erin, "documents") == {w.d1}
    assert await _ids(conn, w.carol, "documents") == set()  # inactive member
    assert await _ids(conn, w.mallory, "documents") == set()  # not a member

    assert await _ids(conn, w.alice, "comments", "document_id") == {w.d1}
    assert len(await _as(conn, w.alice, "SELECT id FROM comments")) == 2
    assert await _ids(conn, w.carol, "comments") == set()

    # Memberships: all of the workspaces one is an active member of; inactive members only see their own row.
    assert await _ids(conn, w.alice, "workspace_members", "user_id") == {w.alice, w.carol, w.erin}
    assert await _ids(conn, w.bob, "workspace_members", "user_id") == {w.bob}
    assert await _ids(conn, w.carol, "workspace_members", "user_id") == {w.carol}
    assert await _ids(conn, w.mallory, "workspace_members", "user_id") == set()

    # Helper functions run with the caller's rights, so RLS applies to them too.
    found = await _as(conn, w.alice, "SELECT id FROM search_documents($1, 'platypus')", w.ws2)
    assert found == []
    found = await _as(conn, w.bob, "SELECT id FROM search_documents($1, 'platypus')", w.ws2)
    assert [r["id"] for r in found] == [w.d2]
    rows = await _as(conn, w.alice, "SELECT workspace_id, member_count FROM get_user_workspaces($1)", w.alice)
    assert [(r["workspace_id"], r["member_count"]) for r in rows] == [(w.ws1, 2)]

    # A soft-deleted workspace grants nothing.
    await db.execute("UPDATE workspaces SET deleted_at = now() WHERE id = $1", w.ws1)
    assert await _ids(conn, w.alice, "documents") == set()
    assert await _ids(conn, w.alice, "workspace_members", "user_id") == {w.alice}


async def test_writes_are_checked(world, db, login_roles):
    role = await login_roles.create("collab_user")
    conn = await login_roles.connect(role)
    w = world

    async def as_user(user, sql, *args):
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.current_user_id', $1, true)", str(user))
            return await conn.execute(sql, *args)

    ins_doc = "INSERT INTO documents (workspace_id, title, created_by) VALUES ($1, 'new', $2)"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # new row violates row-level security policy
        await as_user(w.alice, ins_doc, w.ws2, w.alice)
    assert await as_user(w.alice, ins_doc, w.ws1, w.alice) == "INSERT 0 1"
    # The SECURITY DEFINER triggers still did their bookkeeping.
    assert await db.fetchval("SELECT count(*) FROM sync_log WHERE workspace_id = $1 AND operation = 'create' "
                             "AND changed_by = $2", w.ws1, w.alice) == 2
    assert await as_user(w.alice, "UPDATE documents SET title = 'hijacked' WHERE id = $1", w.d2) == "UPDATE 0"
    assert await as_user(w.alice, "DELETE FROM documents WHERE id = $1", w.d2) == "DELETE 0"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # cannot move a document out of reach
        await as_user(w.alice, "UPDATE documents SET workspace_id = $2 WHERE id = $1", w.d1, w.ws2)

    assert await as_user(w.alice, "INSERT INTO document_versions (document_id, title, content, created_by) "
                                  "VALUES ($1, 't', 'c', $2)", w.d1, w.alice) == "INSERT 0 1"

    ins_comment = "INSERT INTO comments (document_id, author_id, content) VALUES ($1, $2, 'hi')"
    assert await as_user(w.erin, ins_comment, w.d1, w.erin) == "INSERT 0 1"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_user(w.erin, ins_comment, w.d2, w.erin)

    # Memberships: only active owners/admins manage them; anyone may leave.
    ins_member = "INSERT INTO workspace_members (workspace_id, user_id) VALUES ($1, $2)"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_user(w.erin, ins_member, w.ws1, w.mallory)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_user(w.mallory, ins_member, w.ws1, w.mallory)
    assert await as_user(w.erin, "UPDATE workspace_members SET role = 'owner' WHERE user_id = $1", w.erin) == (
        "UPDATE 0")
    assert await as_user(w.alice, ins_member, w.ws1, w.mallory) == "INSERT 0 1"
    assert await as_user(w.erin, "DELETE FROM workspace_members WHERE user_id = $1", w.erin) == "DELETE 1"
    assert await as_user(w.mallory, "DELETE FROM workspace_members WHERE user_id = $1", w.alice) == "DELETE 0"


async def test_views_respect_rls(world, login_roles):
    role = await login_roles.create("collab_user")
    conn = await login_roles.connect(role)
    if await conn.fetchval("SELECT current_setting('server_version_num')::int") < 150000:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no security_invoker: not granted at all
            await conn.fetch("SELECT * FROM active_documents")
        return
    assert await _ids(conn, None, "active_documents") == set()
    assert await _ids(conn, world.alice, "active_documents") == {world.d1}
    assert await _ids(conn, world.bob, "user_workspace_summary", "workspace_id") == {world.ws2}
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # analytics are for the service role
        await conn.fetch("SELECT * FROM workspace_activity_summary")


async def test_set_local_role_from_the_server_connection(world, db):
    """The server's pattern: SET LOCAL ROLE collab_user + app.current_user_id for user-scoped queries."""
    assert await db.fetchval("SELECT count(*) FROM documents") == 2  # superuser: everything
    async with db.transaction():
        await db.execute("SET LOCAL ROLE collab_user")
        assert await db.fetchval("SELECT count(*) FROM documents") == 0
        await db.execute("SELECT set_config('app.current_user_id', $1, true)", str(world.bob))
        assert await db.fetchval("SELECT array_agg(id) FROM documents") == [world.d2]
    async with db.transaction():
        await db.execute("SET LOCAL ROLE collab_service")
        assert await db.fetchval("SELECT count(*) FROM documents") == 2
        assert await db.fetchval("SELECT count(*) FROM comments") == 4
        assert await db.fetchval("SELECT count(*) FROM workspace_members") == 4
        # Internal work such as compaction is not blocked, and its sync row is written.
        assert await db.execute("UPDATE documents SET content = 'compacted', yjs_clock = 9") == "UPDATE 2"
    assert await db.fetchval("SELECT current_user") == await db.fetchval("SELECT session_user")


async def test_service_role_member_login(world, login_roles):
    role = await login_roles.create("collab_service")
    conn = await login_roles.connect(role)
    assert await conn.fetchval("SELECT count(*) FROM documents") == 2
    assert await conn.fetchval("SELECT count(*) FROM workspace_members") == 4
    assert await conn.execute("UPDATE documents SET yjs_clock = yjs_clock + 1") == "UPDATE 2"


async def test_table_owner_does_not_bypass(world, db, login_roles):
    """FORCE ROW LEVEL SECURITY: even the owner of the tables is filtered (unless it is a superuser)."""
    owner = await login_roles.create()
    for table in ("documents", "comments", "workspace_members"):
        await db.execute(f"ALTER TABLE {table} OWNER TO {owner}")
    conn = await login_roles.connect(owner)
    assert await conn.fetchval("SELECT count(*) FROM documents") == 0
    assert await conn.fetchval("SELECT count(*) FROM comments") == 0
    assert await conn.fetchval("SELECT count(*) FROM workspace_members") == 0
    assert await _ids(conn, world.alice, "documents") == {world.d1}
    # Control: without FORCE the owner would see every row.
    await db.execute("ALTER TABLE documents NO FORCE ROW LEVEL SECURITY")
    assert await conn.fetchval("SELECT count(*) FROM documents") == 2
