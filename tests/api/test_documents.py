"""Documents: create, read, list (paged, newest first, by type), rename/update, soft delete, search."""

from __future__ import annotations

from pycrdt import Doc, XmlFragment

from .conftest import World, error_of


async def test_create_read_update_delete(world: World, db) -> None:  # type: ignore[no-untyped-def]
    api = world.api()
    created = await api.post(f"/api/workspaces/{world.ws}/documents",
                             json={"title": "Launch plan", "content": "# Launch\nthe quick brown fox\n",
                                   "metadata": {"tags": ["launch"], "status": "draft"}})
    assert created.status_code == 201, created.text
    doc = created.json()
    assert created.headers["location"] == f"/api/documents/{doc['id']}"
    assert doc["type"] == "markdown" and doc["created_by"] == str(world.demo.users["editor"])
    # The initial content is real Yjs state, readable through the sync routes: a rich-text
    # document (editor_mode wysiwyg, the default), so the Markdown comes back normalised.
    assert (await api.get(f"/api/documents/{doc['id']}/content")).text == "# Launch\n\nthe quick brown fox"
    fragment = Doc()
    fragment.apply_update((await api.get(f"/api/documents/{doc['id']}/state")).content)
    assert str(fragment.get("default", type=XmlFragment)) == (
        '<heading level="1">Launch</heading><paragraph>the quick brown fox</paragraph>')
    # A source-editor document keeps the text as it is, in the Y.Text `content`.
    source = (await api.post(f"/api/workspaces/{world.ws}/documents", json={
        "title": "Notes", "content": "# Launch\nthe quick brown fox\n", "settings": {"editor_mode": "source"}})).json()
    assert (await api.get(f"/api/documents/{source['id']}/content")).text == "# Launch\nthe quick brown fox\n"

    meta = (await world.api("viewer").get(f"/api/documents/{doc['id']}")).json()
    assert meta["title"] == "Launch plan" and meta["role"] == "viewer" and meta["comment_count"] == 0

    patched = await api.patch(f"/api/documents/{doc['id']}",
                              json={"title": "Launch plan v2", "metadata": {"status": "review", "tags": None}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "Launch plan v2"
    assert patched.json()["metadata"] == {"status": "review"}
    assert (await world.api("viewer").patch(f"/api/documents/{doc['id']}", json={"title": "x"})).status_code == 403

    # Editors delete their own documents; the viewer and commenter may not.
    for role in ("viewer", "commenter"):
        assert (await world.api(role).delete(f"/api/documents/{doc['id']}")).status_code == 403
    deleted = await api.delete(f"/api/documents/{doc['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    for path in ("", "/state", "/content", "/versions", "/comments"):
        assert (await api.get(f"/api/documents/{doc['id']}{path}")).status_code == 404
    assert (await api.delete(f"/api/documents/{doc['id']}")).status_code == 404

    # Someone else's document: only with the membership's can_delete_documents (or as owner/admin).
    await db.execute("UPDATE documents SET created_by = $2 WHERE id = $1", world.demo.documents[4],
                     world.demo.users["viewer"])
    refused = await api.delete(f"/api/documents/{world.doc(4)}")
    assert refused.status_code == 403 and "delete" in error_of(refused)["message"]
    await db.execute(
        "UPDATE workspace_members SET permissions = permissions || '{\"can_delete_documents\": true}' "
        "WHERE user_id = $1", world.demo.users["editor"])
    assert (await api.delete(f"/api/documents/{world.doc(4)}")).status_code == 200


async def test_list_is_paged_newest_first_and_filters_by_type(world: World) -> None:
    api = world.api("viewer")
    await world.api().patch(f"/api/documents/{world.doc(1)}", json={"title": "Meeting notes (latest)"})
    seen: list[str] = []
    cursor = None
    while True:
        page = await api.get(f"/api/workspaces/{world.ws}/documents", params={"limit": 2, "cursor": cursor})
        assert page.status_code == 200, page.text
        seen += [d["id"] for d in page.json()["documents"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5 and seen[0] == world.doc(1)
    mindmaps = (await api.get(f"/api/workspaces/{world.ws}/documents", params={"type": "mindmap"})).json()
    assert [d["title"] for d in mindmaps["documents"]] == ["Roadmap"]
    bad = await api.get(f"/api/workspaces/{world.ws}/documents", params={"type": "spreadsheet"})
    assert bad.status_code == 400
    assert (await api.get(f"/api/workspaces/{world.ws}/documents", params={"cursor": "zzz"})).status_code == 400


async def test_search_full_text_and_fuzzy_titles(world: World) -> None:
    created = await world.api().post(f"/api/workspaces/{world.ws}/documents",
                                     json={"title": "Animals", "content": "The quick brown foxes jumped"})
    assert created.status_code == 201
    api = world.api("viewer")
    full_text = (await api.get(f"/api/workspaces/{world.ws}/search", params={"q": "fox"})).json()["results"]
    assert [r["title"] for r in full_text] == ["Animals"] and full_text[0]["rank"] > 0
    assert full_text[0]["snippet"].startswith("The quick brown")
    fuzzy = (await api.get(f"/api/workspaces/{world.ws}/search", params={"q": "Roadmp"})).json()["results"]
    assert fuzzy and fuzzy[0]["title"] == "Roadmap" and fuzzy[0]["title_similarity"] > 0
    assert (await api.get(f"/api/workspaces/{world.ws}/search", params={"q": " "})).status_code == 400
    listed = (await world.api().get("/api/workspaces")).json()["workspaces"]
    assert [(w["id"], w["role"], w["document_count"]) for w in listed] == [(world.ws, "editor", 6)]
