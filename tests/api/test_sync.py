"""Binary sync over HTTP: state, diffs, ETag/304, state vector, pushed updates, Markdown; open mode."""

from __future__ import annotations

import base64

import httpx
from pycrdt import Doc, Text

from collab_server.client import YClient
from collab_server.storage.postgres import open_document_id

from .conftest import World, error_of, eventually

OCTET = {"Content-Type": "application/octet-stream"}


def text(doc: Doc) -> str:
    return str(doc.get("content", type=Text))


def doc_of(update: bytes) -> Doc:
    doc = Doc()
    doc.apply_update(update)
    return doc


async def test_state_diff_etag_and_state_vector(world: World) -> None:
    api, path = world.api("viewer"), f"/api/documents/{world.doc()}"
    web = await YClient(world.ws_url("editor")).connect()
    try:
        web.doc.get("content", type=Text).insert(0, "# Plan\n")
        await eventually(lambda: _has_text(world, "# Plan\n"))
        full = await api.get(f"{path}/state")
        assert full.status_code == 200 and full.headers["content-type"] == "application/octet-stream"
        local = doc_of(full.content)
        assert text(local) == "# Plan\n"
        etag = full.headers["etag"]
        assert base64.b64decode(full.headers["x-yjs-state-vector"]) == local.get_state()
        assert (await api.get(f"{path}/state-vector")).content == local.get_state()

        unchanged = await api.get(f"{path}/state", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag
        assert (await api.get(f"{path}/state", headers={"If-None-Match": f'W/"x", {etag}'})).status_code == 304

        web.doc.get("content", type=Text).insert(7, "- ship it\n")
        await eventually(lambda: _has_text(world, "# Plan\n- ship it\n"))
        changed = await api.get(f"{path}/state", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        # Only what the local copy lacks, in URL-safe base64 without padding as well.
        sv = base64.urlsafe_b64encode(local.get_state()).decode().rstrip("=")
        diff = await api.get(f"{path}/state", params={"sv": sv})
        assert diff.status_code == 200 and len(diff.content) < len(changed.content)
        local.apply_update(diff.content)
        assert text(local) == "# Plan\n- ship it\n"

        content = await api.get(f"{path}/content")
        assert content.status_code == 200 and content.headers["content-type"].startswith("text/markdown")
        assert content.text == "# Plan\n- ship it\n"
        assert (await api.get(f"{path}/content", headers={"If-None-Match": content.headers["etag"]})).status_code == 304
    finally:
        await web.close()


async def _has_text(world: World, expected: str) -> bool:
    response = await world.api().get(f"/api/documents/{world.doc()}/content")
    return response.text == expected


async def test_pushed_update_reaches_live_clients_and_is_persisted(world: World) -> None:
    path = f"/api/documents/{world.doc()}"
    web = await YClient(world.ws_url("viewer")).connect()
    try:
        local = doc_of((await world.api().get(f"{path}/state")).content)
        before = local.get_state()
        local.get("content", type=Text).insert(0, "written offline")
        update = local.get_update(before)
        pushed = await world.api().post(f"{path}/updates", content=update, headers=OCTET)
        assert pushed.status_code == 200, pushed.text
        assert base64.b64decode(pushed.json()["state_vector"]) == local.get_state()
        await web.wait_for(lambda: text(web.doc) == "written offline")
        # Written ahead before the reply, then compacted into the document row.
        assert world.server.ctx.wal.backlog_bytes == 0
        rows = await world.server.ctx.pool.fetchval(
            "SELECT count(*) FROM document_updates WHERE document_id = $1", world.demo.documents[0])
        stored = await world.server.ctx.pool.fetchval(
            "SELECT content FROM documents WHERE id = $1", world.demo.documents[0])
        assert rows >= 1 or stored == "written offline"
        await eventually(lambda: world.server.ctx.pool.fetchval(
            "SELECT content = 'written offline' FROM documents WHERE id = $1", world.demo.documents[0]))
        # Pushing the same update again changes nothing (CRDT updates are idempotent).
        again = await world.api().post(f"{path}/updates", content=update, headers=OCTET)
        assert again.status_code == 200 and again.json()["state_vector"] == pushed.json()["state_vector"]

        # Refusals change nothing: an invalid update, a viewer, a commenter.
        etag = (await world.api().get(f"{path}/state")).headers["etag"]
        invalid = await world.api().post(f"{path}/updates", content=b"\x01\x02garbage", headers=OCTET)
        assert invalid.status_code == 400 and error_of(invalid)["message"] == "invalid Yjs update"
        for role in ("viewer", "commenter"):
            refused = await world.api(role).post(f"{path}/updates", content=local.get_update(), headers=OCTET)
            assert refused.status_code == 403, refused.text
        assert (await world.api().get(f"{path}/state")).headers["etag"] == etag
        assert text(web.doc) == "written offline"
    finally:
        await web.close()


async def test_open_mode_uses_room_names(server) -> None:  # type: ignore[no-untyped-def]
    local = Doc()
    local.get("content", type=Text).insert(0, "from a script")
    pushed = await _post(server, "/api/documents/scratch/updates", local.get_update())
    assert pushed.status_code == 200, pushed.text  # created on first use, like a WebSocket room
    web = await YClient(server.ws_url("scratch")).connect()
    try:
        assert text(web.doc) == "from a script"
        state = await server.get("/api/documents/scratch/state")
        assert text(doc_of(state.content)) == "from a script"
        meta = await server.get(f"/api/documents/{open_document_id('scratch')}")
        assert meta.status_code == 200 and meta.json()["title"] == "scratch"
        assert (await server.get("/api/documents/never-opened/state")).status_code == 404
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as api:  # as the local user
            assert (await api.post("/api/documents/scratch/versions")).status_code == 201
            assert (await api.post("/api/documents/scratch/comments", json={"content": "ok"})).status_code == 201
            [workspace] = (await api.get("/api/workspaces")).json()["workspaces"]
            changes = (await api.get(f"/api/workspaces/{workspace['id']}/changes")).json()["changes"]
            assert str(open_document_id("scratch")) in {c["entity_id"] for c in changes}
    finally:
        await web.close()


async def _post(server, path: str, body: bytes):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        return await client.post(path, content=body, headers=OCTET)


async def test_reply_comes_after_the_write_ahead_commit(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(commit_window_ms=300)  # a slow group commit makes an early reply visible
    local = Doc()
    local.get("content", type=Text).insert(0, "durable")
    assert (await _post(server, "/api/documents/wal/updates", local.get_update())).status_code == 200
    rows = await server.ctx.pool.fetchval(
        "SELECT count(*) FROM document_updates WHERE document_id = $1", open_document_id("wal"))
    assert rows == 1
