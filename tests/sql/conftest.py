"""Helpers for the schema tests in tests/sql.

The ``db`` / ``db_url`` fixtures (fresh database with every migration applied,
superuser connection) come from tests/conftest.py.  This file only adds small
factories to create rows and a fixture that creates throw-away LOGIN roles.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest


@dataclass
class Factory:
    """Creates rows with sensible defaults; every helper returns the new id."""

    db: asyncpg.Connection
    counter: int = 0

    def _n(self) -> int:
        self.counter += 1
        return self.counter

    async def user(self, name: str | None = None, **cols) -> uuid.UUID:
        n = self._n()
        name = name or f"user{n}"
        values = {
            "cognito_sub": f"sub-{name}-{uuid.uuid4().hex[:8]}",
            "email": f"{name}-{uuid.uuid4().hex[:6]}@example.com",
            "display_name": name,
        }
        values.update(cols)
        return await self._insert("users", values)

    async def workspace(self, owner: uuid.UUID, name: str | None = None, member_role: str | None = "owner",
                        **cols) -> uuid.UUID:
        values = {"owner_id": owner, "name": name or f"ws{self._n()}"}
        values.update(cols)
        ws = await self._insert("workspaces", values)
        if member_role is not None:
            await self.member(ws, owner, role=member_role)
        return ws

    async def member(self, ws: uuid.UUID, user: uuid.UUID, role: str = "editor", **cols) -> None:
        values = {"workspace_id": ws, "user_id": user, "role": role}
        values.update(cols)
        await self._insert("workspace_members", values, returning=None)

    async def document(self, ws: uuid.UUID, author: uuid.UUID, title: str | None = None,
                       content: str = "", **cols) -> uuid.UUID:
        values = {"workspace_id": ws, "created_by": author, "title": title or f"doc{self._n()}",
                  "content": content}
        values.update(cols)
        return await self._insert("documents", values)

    async def version(self, doc: uuid.UUID, author: uuid.UUID | None, content: str = "v", **cols) -> uuid.UUID:
        values = {"document_id": doc, "created_by": author, "title": "snapshot", "content": content}
        values.update(cols)
        return await self._insert("document_versions", values)

    async def comment(self, doc: uuid.UUID, author: uuid.UUID, parent: uuid.UUID | None = None,
                      content: str = "a comment", **cols) -> uuid.UUID:
        values = {"document_id": doc, "author_id": author, "parent_id": parent, "content": content}
        values.update(cols)
        return await self._insert("comments", values)

    async def attachment(self, ws: uuid.UUID, user: uuid.UUID, size: int, doc: uuid.UUID | None = None,
                         **cols) -> uuid.UUID:
        values = {"workspace_id": ws, "document_id": doc, "uploaded_by": user, "size_bytes": size,
                  "file_name": "f.png", "s3_bucket": "bucket", "s3_key": f"k/{uuid.uuid4().hex}"}
        values.update(cols)
        return await self._insert("attachments", values)

    async def _insert(self, table: str, values: dict, returning: str | None = "id"):
        # dict/list values are jsonb: sent as text so that this works with and without a json codec.
        args = [json.dumps(v) if isinstance(v, dict | list) else v for v in values.values()]
        params = ", ".join(
            f"${i}::text::jsonb" if isinstance(v, dict | list) else f"${i}"
            for i, v in enumerate(values.values(), start=1)
        )
        sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({params})"
        if returning:
            return await self.db.fetchval(sql + f" RETURNING {returning}", *args)
        await self.db.execute(sql, *args)
        return None


def as_json(value):
    """A json/jsonb value as Python data, whether or not the connection has a json codec."""
    return json.loads(value) if isinstance(value, str) else value


@pytest.fixture
def mk(db: asyncpg.Connection) -> Factory:
    return Factory(db)


@dataclass
class LoginRoles:
    """Creates uniquely named LOGIN roles (cluster-wide) and drops them afterwards."""

    db: asyncpg.Connection
    db_url: str
    names: list[str] = field(default_factory=list)
    conns: list[asyncpg.Connection] = field(default_factory=list)
    password: str = field(default_factory=lambda: uuid.uuid4().hex)

    async def create(self, *grants: str) -> str:
        name = "t_sql_" + uuid.uuid4().hex[:16]
        await self.db.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{self.password}'")
        self.names.append(name)
        for g in grants:
            await self.db.execute(f"GRANT {g} TO {name}")
        return name

    async def connect(self, name: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.db_url, user=name, password=self.password)
        self.conns.append(conn)
        return conn

    async def cleanup(self) -> None:
        for conn in self.conns:
            if not conn.is_closed():
                await conn.close()
        me = await self.db.fetchval("SELECT current_user")
        for name in self.names:
            # Objects possibly handed to the role by a test go back to the superuser.
            await self.db.execute(f'REASSIGN OWNED BY {name} TO "{me}"')
            await self.db.execute(f"DROP OWNED BY {name}")
            await self.db.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
async def login_roles(db: asyncpg.Connection, db_url: str) -> AsyncIterator[LoginRoles]:
    roles = LoginRoles(db, db_url)
    try:
        yield roles
    finally:
        await roles.cleanup()
