"""Versions: named snapshots of the live state, listing, reading, and restore as a convergent edit."""

from __future__ import annotations

import pytest
from pycrdt import Array, Doc, Text

from collab_server.api import live
from collab_server.client import YClient
from collab_server.content import read_markdown

from .conftest import World, eventually


def text(client: YClient) -> str:
    return str(client.doc.get("content", type=Text))


async def test_snapshot_list_read_and_restore_with_live_editors(world: World) -> None:
    path = f"/api/documents/{world.doc()}"
    editor = await YClient(world.ws_url("editor")).connect()
    reader = await YClient(world.ws_url("viewer")).connect()
    try:
        editor.doc.get("content", type=Text).insert(0, "# Title\nfirst draft\n")
        await reader.wait_for(lambda: text(reader) == "# Title\nfirst draft\n")
        snap = await world.api().post(f"{path}/versions", json={"change_description": "first draft"})
        assert snap.status_code == 201, snap.text
        first = snap.json()
        assert first["change_description"] == "first draft" and first["created_by"] == str(world.demo.users["editor"])
        assert snap.headers["location"].endswith(f"/versions/{first['version_number']}")
        # No body at all is a snapshot too.
        assert (await world.api().post(f"{path}/versions")).status_code == 201
        assert (await world.api("viewer").post(f"{path}/versions", json={})).status_code == 403

        t = editor.doc.get("content", type=Text)
        t.insert(len(str(t).encode()), "second draft — with ünïcode ✓\n")
        del t[0:8]  # drop "# Title\n"
        await reader.wait_for(lambda: "second" in text(reader) and "Title" not in text(reader))

        restored = await world.api().post(f"{path}/versions/{first['version_number']}/restore")
        assert restored.status_code == 200, restored.text
        body = restored.json()
        assert body["restored_from"] == first["version_number"]
        assert body["version"]["change_description"] == f"restored version {first['version_number']}"
        # Both live clients converge on the version's content: it arrived as an ordinary edit.
        for client in (editor, reader):
            await client.wait_for(lambda c=client: text(c) == "# Title\nfirst draft\n")
        # ... and further typing merges with it normally.
        editor.doc.get("content", type=Text).insert(0, "> ")
        await reader.wait_for(lambda: text(reader) == "> # Title\nfirst draft\n")

        listed = (await world.api("viewer").get(f"{path}/versions")).json()["versions"]
        numbers = [v["version_number"] for v in listed]
        assert numbers == sorted(numbers, reverse=True) and len(numbers) >= 3
        page = (await world.api("viewer").get(f"{path}/versions", params={"limit": 1})).json()
        assert len(page["versions"]) == 1 and page["next_before"] == numbers[0]
        older = await world.api("viewer").get(f"{path}/versions", params={"before": page["next_before"]})
        assert [v["version_number"] for v in older.json()["versions"]] == numbers[1:]

        one = await world.api("viewer").get(f"{path}/versions/{first['version_number']}")
        assert one.status_code == 200 and one.json()["content"] == "# Title\nfirst draft\n"
        for missing in ("999", "abc"):
            assert (await world.api().get(f"{path}/versions/{missing}")).status_code == 404
        assert (await world.api().post(f"{path}/versions/999/restore")).status_code == 404
        assert (await world.api("commenter").post(f"{path}/versions/1/restore")).status_code == 403
    finally:
        await editor.close()
        await reader.close()


async def test_a_named_version_restarts_the_autosave_interval(world: World) -> None:
    """The demo document never had a version: without the named one, the next compaction would
    autosave one more (and did, between two listings of the test above)."""
    path = f"/api/documents/{world.doc()}"
    assert (await world.api().post(f"{path}/versions", json={"change_description": "named"})).status_code == 201
    before = (await world.api().get(path)).json()["content_hash"]
    editor = await YClient(world.ws_url("editor")).connect()
    try:
        editor.doc.get("content", type=Text).insert(0, "compacted later\n")
        await eventually(
            lambda: world.api().get(path), lambda r: r.json()["content_hash"] != before,
            what="the edit compacted into the stored content",
        )
    finally:
        await editor.close()
    listed = (await world.api().get(f"{path}/versions")).json()["versions"]
    assert [v["change_description"] for v in listed] == ["named"]


@pytest.mark.parametrize(("old", "new"), [
    ("", "hello"),
    ("hello", ""),
    ("a\nb\nc\n", "a\nB\nc\nd\n"),
    ("naïve café ✓\nline two 😀\n", "naïve cafés ✓✓\nline 2 😀😀\n"),
    ("same", "same"),
])
def test_restore_update_turns_any_text_into_the_target(old: str, new: str) -> None:
    doc = Doc()
    doc.get("content", type=Text).insert(0, old)
    update = live.restore_update(doc.get_update(), new, None, "markdown")
    doc.apply_update(update)
    assert read_markdown(doc, "markdown") == new


def test_restore_keeps_concurrent_edits_and_mindmap_structure() -> None:
    base = Doc()
    base.get("content", type=Text).insert(0, "one\ntwo\nthree\n")
    base.get("nodes", type=Array).extend([{"id": "a"}])
    version_state = base.get_update()
    base.get("nodes", type=Array).append({"id": "b"})
    base.get("content", type=Text).insert(4, "TWO\n")
    live_state = base.get_update()
    update = live.restore_update(live_state, "one\ntwo\nthree\n", version_state, "mindmap")
    # Someone else appends at the same time; the restore merges with it.
    other = Doc()
    other.apply_update(live_state)
    other.get("content", type=Text).insert(len("one\nTWO\ntwo\nthree\n"), "four\n")
    other.apply_update(update)
    assert str(other.get("content", type=Text)) == "one\ntwo\nthree\nfour\n"
    assert other.get("nodes", type=Array).to_py() == [{"id": "a"}]
