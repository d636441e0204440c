"""Comments: threads, replies, edits with history, resolve/reopen, soft delete; commenters comment."""

from __future__ import annotations

from .conftest import World, error_of


async def test_threads_from_start_to_resolution(world: World) -> None:
    base = f"/api/documents/{world.doc()}/comments"
    commenter, editor, viewer = world.api("commenter"), world.api(), world.api("viewer")
    started = await commenter.post(base, json={
        "content": "Is this right?", "position": {"from": 3, "to": 9}, "anchor_text": "Welcome",
        "mentions": [str(world.demo.users["editor"])]})
    assert started.status_code == 201, started.text
    root = started.json()
    assert root["depth"] == 0 and root["thread_id"] == root["id"] and root["position"] == {"from": 3, "to": 9}
    assert root["mentions"] == [str(world.demo.users["editor"])]

    reply = await editor.post(f"{base}/{root['id']}/replies", json={"content": "Yes."})
    assert reply.status_code == 201 and reply.json()["thread_id"] == root["id"] and reply.json()["depth"] == 1
    nested = await commenter.post(f"{base}/{reply.json()['id']}/replies", json={"content": "Thanks!"})
    assert nested.status_code == 201 and nested.json()["depth"] == 2
    assert (await viewer.post(base, json={"content": "me too"})).status_code == 403

    edited = await commenter.patch(f"{base}/{root['id']}", json={"content": "Is this really right?"})
    assert edited.status_code == 200 and edited.json()["edited"] is True
    assert [h["content"] for h in edited.json()["edit_history"]] == ["Is this right?"]
    refused = await editor.patch(f"{base}/{root['id']}", json={"content": "hijack"})
    assert refused.status_code == 403 and "author" in error_of(refused)["message"]

    # Resolving any comment of a thread resolves the thread.
    resolved = await commenter.post(f"{base}/{reply.json()['id']}/resolve")
    assert resolved.status_code == 200 and resolved.json()["id"] == root["id"] and resolved.json()["resolved"]
    assert resolved.json()["resolved_by"] == str(world.demo.users["commenter"])
    assert (await viewer.get(base, params={"resolved": "false"})).json()["threads"] == []
    [thread] = (await viewer.get(base, params={"resolved": "true"})).json()["threads"]
    assert [r["content"] for r in thread["replies"]] == ["Yes.", "Thanks!"]
    assert (await viewer.post(f"{base}/{root['id']}/reopen")).status_code == 403
    reopened = await editor.post(f"{base}/{root['id']}/reopen")
    assert reopened.json()["resolved"] is False and reopened.json()["resolved_at"] is None

    # Deleting: authors (or owners/admins) only; a deleted root with replies stays as a tombstone.
    assert (await editor.delete(f"{base}/{nested.json()['id']}")).status_code == 403
    assert (await commenter.delete(f"{base}/{root['id']}")).status_code == 200
    [thread] = (await viewer.get(base)).json()["threads"]
    assert thread["content"] is None and thread["deleted_at"] is not None and len(thread["replies"]) == 2
    assert (await commenter.delete(f"{base}/{root['id']}")).status_code == 404
    assert (await editor.patch(f"{base}/{root['id']}", json={"content": "x"})).status_code == 404
    assert (await editor.post(f"{base}/{root['id']}/replies", json={"content": "late"})).status_code == 404
    for comment in (reply, nested):
        author = editor if comment is reply else commenter
        assert (await author.delete(f"{base}/{comment.json()['id']}")).status_code == 200
    assert (await viewer.get(base)).json()["threads"] == []
    meta = (await viewer.get(f"/api/documents/{world.doc()}")).json()
    assert meta["comment_count"] == 0

    # Comments of another document are not reachable through this one.
    other = await commenter.post(f"/api/documents/{world.doc(1)}/comments", json={"content": "elsewhere"})
    assert (await commenter.patch(f"{base}/{other.json()['id']}", json={"content": "x"})).status_code == 404
