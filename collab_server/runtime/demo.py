"""Demo data: a workspace, an editor, a viewer, an outsider and five documents (idempotent)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from collab_server.access.auth import TokenVerifier

DEMO_NS = uuid.UUID("3b8e4a2c-5d7f-4e61-8a9b-0c1d2e3f4a5b")
DEMO_TOKEN_TTL = 7 * 24 * 3600
USERS = {
    "editor": ("demo-editor", "editor@demo.collab.dev", "Demo Editor", "editor"),
    "viewer": ("demo-viewer", "viewer@demo.collab.dev", "Demo Viewer", "viewer"),
    "outsider": ("demo-outsider", "outsider@demo.collab.dev", "Demo Outsider", None),
    "admin": ("demo-admin", "admin@demo.collab.dev", "Demo Admin", "admin"),  # the console's operator
}
DOCUMENTS = [
    ("Welcome", "markdown"),
    ("Meeting notes", "markdown"),
    ("Roadmap", "mindmap"),
    ("Quarterly review", "presentation"),
    ("Scratchpad", "mixed"),
]


def _id(kind: str) -> uuid.UUID:
    return uuid.uuid5(DEMO_NS, kind)


@dataclass
class Demo:
    workspace: uuid.UUID
    documents: list[uuid.UUID]
    users: dict[str, uuid.UUID]
    tokens: dict[str, str]

    def as_json(self, host: str, port: int) -> dict[str, Any]:
        return {
            "ws_url": f"ws://{host}:{port}/ws/{self.documents[0]}?token={self.tokens['editor']}",
            "http_url": f"http://{host}:{port}",
            # One click opens the first document in the page's editor, signed in as the demo editor.
            "app_url": f"http://{host}:{port}/?token={self.tokens['editor']}#/d/{self.documents[0]}",
            "console_url": f"http://{host}:{port}/console?token={self.tokens['admin']}",
            "workspace": str(self.workspace),
            "documents": [str(d) for d in self.documents],
            "tokens": self.tokens,
        }


async def create_demo(conn: asyncpg.Connection, tokens: TokenVerifier) -> Demo:
    workspace = _id("workspace")
    users = {role: _id(f"user:{role}") for role in USERS}
    documents = [_id(f"document:{title}") for title, _ in DOCUMENTS]
    async with conn.transaction():
        for role, (sub, email, name, _member_role) in USERS.items():
            await conn.execute(
                """
                INSERT INTO users (id, cognito_sub, email, display_name, email_verified)
                VALUES ($1, $2, $3, $4, true) ON CONFLICT (id) DO NOTHING
                """,
                users[role], sub, email, name,
            )
        await conn.execute(
            """
            INSERT INTO workspaces (id, owner_id, name, slug, is_personal, is_team)
            VALUES ($1, $2, 'Demo workspace', 'demo', false, true) ON CONFLICT (id) DO NOTHING
            """,
            workspace, users["editor"],
        )
        for role, (*_, member_role) in USERS.items():
            if member_role is None:
                continue
            await conn.execute(
                """
                INSERT INTO workspace_members (workspace_id, user_id, role)
                VALUES ($1, $2, $3::workspace_role)
                ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role, is_active = true
                """,
                workspace, users[role], member_role,
            )
        for doc_id, (title, doc_type) in zip(documents, DOCUMENTS, strict=True):
            await conn.execute(
                """
                INSERT INTO documents (id, workspace_id, title, type, created_by)
                VALUES ($1, $2, $3, $4::document_type, $5)
                ON CONFLICT (id) DO UPDATE SET deleted = false, deleted_at = NULL
                WHERE documents.deleted
                """,
                doc_id, workspace, title, doc_type, users["editor"],
            )
    minted = {role: tokens.mint(str(users[role]), DEMO_TOKEN_TTL) for role in USERS}
    return Demo(workspace, documents, users, minted)
