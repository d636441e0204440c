"""The desktop story, end to end, with the package's own client.

A desktop app records its position in the changes feed and goes offline. Meanwhile people edit
over WebSockets, and the desktop edits its own copies (and is even restarted, its state kept as
JSON). When it comes back it pulls the changes since its position, fetches only the diffs of
the documents that changed, and pushes its own edits. Every copy converges; nothing is lost.
"""

from __future__ import annotations

import orjson
from pycrdt import Text

from collab_server.client import ApiClient, OfflineSync, YClient

from .conftest import World, eventually


def text_of(client: YClient) -> str:
    return str(client.doc.get("content", type=Text))


async def test_offline_desktop_converges_with_live_editors(world: World) -> None:
    api = ApiClient(world.server.http, world.demo.tokens["editor"], device_name="Laptop", client_version="desk/1")
    desk = OfflineSync(api, world.ws)
    assert len(await desk.pull()) == 5  # every document's creation
    alice = await YClient(world.ws_url("editor", 0)).connect()
    bob = await YClient(world.ws_url("editor", 1)).connect()
    try:
        alice.doc.get("content", type=Text).insert(0, "# Notes\n")
        await eventually(lambda: _pulled(desk, world.doc(0), "# Notes\n"), timeout=10)
        position = desk.cursor

        # Offline. Others edit over the WebSocket ...
        alice.doc.get("content", type=Text).insert(len("# Notes\n"), "alice was here\n")
        bob.doc.get("content", type=Text).insert(0, "bob's agenda\n")
        # ... and the desktop edits its own copies, then is restarted with its saved state.
        desk.text(world.doc(0)).insert(0, "[desk] ")
        desk.text(world.doc(4)).insert(0, "scratch written offline")
        saved = orjson.dumps(desk.to_json())
        desk = OfflineSync.from_json(api, orjson.loads(saved))
        assert desk.cursor == position and desk.dirty == {world.doc(0), world.doc(4)}

        # Back online: pull what changed since the position, then push.
        changed: set[str] = set()

        async def pulled_both() -> bool:
            changed.update(await desk.pull(wait=2))
            return {world.doc(0), world.doc(1)} <= changed

        await eventually(pulled_both, timeout=15)
        assert world.doc(4) not in changed  # nobody else touched it: not fetched
        assert await desk.push() == {world.doc(0), world.doc(4)}

        expected0 = "[desk] # Notes\nalice was here\n"
        assert str(desk.text(world.doc(0))) == expected0
        assert str(desk.text(world.doc(1))) == "bob's agenda\n"
        await alice.wait_for(lambda: text_of(alice) == expected0)
        for index, expected in ((0, expected0), (1, "bob's agenda\n"), (4, "scratch written offline")):
            assert await api.content(world.doc(index)) == expected
        # Persisted and reported: the feed names the desktop's device once compacted.
        await eventually(lambda: _device_logged(world, "Laptop"), timeout=10)
        assert await desk.push() == set()  # nothing left to send
    finally:
        await alice.close()
        await bob.close()


async def _pulled(desk: OfflineSync, document_id: str, expected: str) -> bool:
    await desk.pull()
    return str(desk.text(document_id)) == expected


async def _device_logged(world: World, device: str) -> bool:
    return bool(await world.server.ctx.pool.fetchval(
        "SELECT count(*) FROM sync_log WHERE workspace_id = $1 AND device_id = $2", world.demo.workspace, device))


async def test_deleted_documents_and_refusals(world: World) -> None:
    desk = OfflineSync(ApiClient(world.server.http, world.demo.tokens["editor"]), world.ws)
    await desk.pull()
    desk.text(world.doc(3)).insert(0, "edited offline")
    assert (await world.api().delete(f"/api/documents/{world.doc(3)}")).status_code == 200
    changed = await desk.pull()
    assert world.doc(3) in changed and world.doc(3) in desk.deleted
    assert await desk.push() == set()  # nothing is sent to a tombstone

    viewer = OfflineSync(ApiClient(world.server.http, world.demo.tokens["viewer"]), world.ws)
    await viewer.pull()
    viewer.text(world.doc(0)).insert(0, "not allowed")
    # Refused (403), recorded as such, and not retried: the other documents still sync.
    assert await viewer.push() == set()
    assert viewer.refused == {world.doc(0)} and world.doc(0) not in viewer.dirty
    assert "not allowed" not in (await world.api().get(f"/api/documents/{world.doc(0)}/content")).text
