"""A server with access control, the demo workspace (editor, viewer, commenter, outsider), and an
HTTP client per role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from collab_server.runtime.demo import Demo
from tests.conftest import RunningServer
from tests.test_auth import SECRET, setup_demo
from tests.waiting import eventually as eventually  # re-exported for the API tests

ROLES = ("editor", "viewer", "commenter", "outsider")


@dataclass
class World:
    server: RunningServer
    demo: Demo
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    @property
    def ws(self) -> str:
        return str(self.demo.workspace)

    def doc(self, index: int = 0) -> str:
        return str(self.demo.documents[index])

    def api(self, role: str | None = "editor") -> httpx.AsyncClient:
        """A client sending `role`'s token (None: no token)."""
        key = role or "anonymous"
        if key not in self.clients:
            headers = {"Authorization": f"Bearer {self.demo.tokens[role]}"} if role else {}
            self.clients[key] = httpx.AsyncClient(base_url=self.server.http, headers=headers, timeout=20)
        return self.clients[key]

    def ws_url(self, role: str, index: int = 0) -> str:
        return f"{self.server.ws_base}/{self.doc(index)}?token={self.demo.tokens[role]}"

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


@pytest.fixture
async def world(make_server, db) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    server = await make_server(auth="on", jwt_secret=SECRET, compact_max_age_seconds=0.2)
    w = World(server, await setup_demo(db, server))
    yield w
    await w.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


