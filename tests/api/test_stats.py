"""/api/me (the name beside a caret) and /api/stats (the console): who may see what."""

from __future__ import annotations

import uuid
from typing import Any

from pycrdt import Text

from collab_server.client import YClient

from .conftest import World, error_of, eventually


async def test_me_names_the_token_owner(world: World) -> None:
    me = (await world.api("editor").get("/api/me")).json()
    assert me == {"user_id": str(world.demo.users["editor"]), "email": "editor@demo.collab.dev", "name": "Demo Editor"}
    missing = await world.api(None).get("/api/me")
    assert missing.status_code == 401 and error_of(missing)["code"] == "unauthorized"


async def test_stats_are_for_owners_and_admins_and_list_only_their_rooms(world: World, db) -> None:  # type: ignore[no-untyped-def]
    for role in ("editor", "viewer", "commenter", "outsider"):
        refused = await world.api(role).get("/api/stats")
        assert refused.status_code == 403 and "owners and admins" in error_of(refused)["message"], role
    # The outsider owns a workspace of its own, with a document it has open.
    outsider, theirs = world.demo.users["outsider"], uuid.uuid4()
    other_ws = await db.fetchval(
        "INSERT INTO workspaces (owner_id, name, slug) VALUES ($1, 'Elsewhere', $2) RETURNING id",
        outsider, f"elsewhere-{theirs.hex[:8]}",
    )
    await db.execute("INSERT INTO workspace_members (workspace_id, user_id, role) VALUES ($1, $2, 'owner')",
                     other_ws, outsider)
    await db.execute("INSERT INTO documents (id, workspace_id, title, created_by) VALUES ($1, $2, 'Theirs', $3)",
                     theirs, other_ws, outsider)
    editor = YClient(world.ws_url("editor"))
    editor.local_state = {"user": {"name": "Demo Editor", "color": "#123"}}
    await editor.connect()
    stranger = await YClient(f"{world.server.ws_base}/{theirs}?token={world.demo.tokens['outsider']}").connect()

    async def reading() -> dict[str, Any]:
        return (await world.api("admin").get("/api/stats")).json()  # type: ignore[no-any-return]

    stats = await reading()
    assert stats["rooms"] == 2 and stats["connections"] == 2  # the process's totals
    assert [r["id"] for r in stats["room_list"]] == [world.doc()]  # only the rooms of workspaces it manages
    room = stats["room_list"][0]
    assert room["title"] == "Welcome" and room["type"] == "markdown" and room["connections"] == 1
    assert room["presence"] == ["Demo Editor"]
    assert stats["write_ahead"]["healthy"] is True and stats["bus"]["enabled"] is True
    assert set(stats["loop_lag"]) == {"last_second_max_ms", "max_ms"}
    before = stats["totals"]["updates"]
    editor.doc.get("content", type=Text).insert(0, "counted")
    await eventually(reading, lambda s: s["totals"]["updates"] > before, what="the update counted")
    owner = await world.api("outsider").get("/api/stats")
    assert [r["id"] for r in owner.json()["room_list"]] == [str(theirs)]  # an owner sees its own
    for client in (editor, stranger):
        await client.close()
