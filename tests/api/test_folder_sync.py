"""`collab-server sync DIR`: folders of Markdown files on "two machines" and a browser-style Yjs client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from collab_server.client import ApiClient, YClient
from collab_server.client.folder import STATE_NAME, FolderSync, merge_text
from collab_server.content import read_markdown, write_markdown

from .conftest import World, eventually


def folder(world: World, root: Path, messages: list[str] | None = None) -> FolderSync:
    api = ApiClient(world.server.http, world.demo.tokens["editor"])
    return FolderSync(root, api, world.ws, (messages.append if messages is not None else None))


async def server_markdown(world: World, document_id: str) -> str:
    return (await world.api().get(f"/api/documents/{document_id}/content")).text


def test_merge_text_keeps_both_sides() -> None:
    base = "one\ntwo\nthree\n"
    assert merge_text(base, "zero\none\ntwo\nthree\n", "one\ntwo\nthree\nfour\n") == "zero\none\ntwo\nthree\nfour\n"
    assert merge_text(base, "one\nthree\n", "one\ntwo\nthree\n!\n") == "one\nthree\n!\n"


async def test_offline_edits_of_one_file_on_two_machines_and_in_a_browser_all_survive(
    world: World, tmp_path: Path
) -> None:
    a, b = folder(world, tmp_path / "a"), folder(world, tmp_path / "b")
    await a.once()
    await b.once()
    names = sorted(p.name for p in (tmp_path / "a").glob("*.md"))
    assert names == ["Meeting notes.md", "Quarterly review.md", "Roadmap.md", "Scratchpad.md", "Welcome.md"]
    assert (tmp_path / "a" / STATE_NAME).exists() and (tmp_path / "b" / STATE_NAME).exists()

    (tmp_path / "a" / "Welcome.md").write_text("# Welcome\n\nThe first line.\n\nThe last line.\n")
    await a.once()
    await b.once()
    assert (tmp_path / "b" / "Welcome.md").read_text() == "# Welcome\n\nThe first line.\n\nThe last line.\n"

    # Offline on both machines, and a browser meanwhile: three edits of the same document.
    (tmp_path / "a" / "Welcome.md").write_text("# Welcome\n\nThe first line.\n\nFrom A.\n\nThe last line.\n")
    (tmp_path / "b" / "Welcome.md").write_text("# Welcome\n\nThe first line.\n\nThe last line.\n\nFrom B.\n")
    browser = await YClient(world.ws_url("editor")).connect()
    with browser.doc.transaction():
        write_markdown(browser.doc, "# Welcome, browser\n\nThe first line.\n\nThe last line.\n", "markdown")
    await eventually(lambda: server_markdown(world, world.doc()), lambda md: "browser" in md, what="the browser edit")

    await a.once()
    await b.once()
    expected = "# Welcome, browser\n\nThe first line.\n\nFrom A.\n\nThe last line.\n\nFrom B.\n"
    assert (tmp_path / "b" / "Welcome.md").read_text() == expected  # B pulled A's and the browser's edits

    async def a_after_a_pass() -> str:  # B's push reaches the feed within the live-entry interval (2 s)
        await a.once()
        return (tmp_path / "a" / "Welcome.md").read_text()

    await eventually(a_after_a_pass, lambda text: text == expected, timeout=10, what="B's edit on machine A")
    assert await server_markdown(world, world.doc()) == expected.rstrip("\n")
    await browser.wait_for(lambda: read_markdown(browser.doc, "markdown") == expected.rstrip("\n"))
    await browser.close()


async def test_create_delete_and_rename_go_both_ways(world: World, tmp_path: Path) -> None:
    messages: list[str] = []
    a, b = folder(world, tmp_path / "a", messages), folder(world, tmp_path / "b")
    await a.once()
    await b.once()
    root_a, root_b = tmp_path / "a", tmp_path / "b"

    # A new file becomes a document; a file that is not Markdown, or not UTF-8, is left alone.
    (root_a / "Ideas.md").write_text("# Ideas\n\n* ship it\n")
    (root_a / "notes.txt").write_text("not synced")
    (root_a / "Broken.md").write_bytes(b"caf\xe9\n")
    await a.once()
    assert any("skipped Broken.md: not valid UTF-8" in m for m in messages)
    listing = (await world.api().get(f"/api/workspaces/{world.ws}/documents")).json()["documents"]
    titles = {d["title"]: d["id"] for d in listing}
    assert "Ideas" in titles and "Broken" not in titles and "notes" not in titles
    await b.once()
    assert (root_b / "Ideas.md").read_text() == "# Ideas\n\n* ship it\n"

    # A renamed file renames the document, and the other machine's file follows.
    (root_b / "Ideas.md").rename(root_b / "Plans.md")
    await b.once()
    assert (await world.api().get(f"/api/documents/{titles['Ideas']}")).json()["title"] == "Plans"
    await a.once()
    assert (root_a / "Plans.md").read_text() == "# Ideas\n\n* ship it\n" and not (root_a / "Ideas.md").exists()

    # A title changed on the server renames the files; a document deleted there removes them.
    await world.api().patch(f"/api/documents/{world.doc(1)}", json={"title": "Minutes"})
    await world.api().delete(f"/api/documents/{world.doc(4)}")
    for f, root in ((a, root_a), (b, root_b)):
        await f.once()
        assert (root / "Minutes.md").exists() and not (root / "Meeting notes.md").exists()
        assert not (root / "Scratchpad.md").exists()

    # A deleted file deletes the document (a tombstone), and the file goes on the other machine.
    (root_a / "Plans.md").unlink()
    await a.once()
    assert (await world.api().get(f"/api/documents/{titles['Ideas']}")).status_code == 404
    await b.once()
    assert not (root_b / "Plans.md").exists()
    synced = sorted(p.name for p in root_a.glob("*.md") if p.name != "Broken.md")  # the one never sent
    assert synced == sorted(p.name for p in root_b.glob("*.md")) == ["Minutes.md", "Quarterly review.md",
                                                                      "Roadmap.md", "Welcome.md"]


class Proxy:
    """A TCP relay in front of the server: closing it is the server going away, as far as a client can tell."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open: set[asyncio.StreamWriter] = set()

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.open:  # keep-alive connections too (Python 3.11 has no close_clients)
            writer.transport.abort()
        self.open.clear()
        await self.server.wait_closed()


async def test_an_interrupted_sync_resumes_and_loses_nothing(world: World, tmp_path: Path) -> None:
    proxy = await Proxy(world.server.port).start()
    messages: list[str] = []

    def through_proxy() -> FolderSync:
        api = ApiClient(f"http://127.0.0.1:{proxy.port}", world.demo.tokens["editor"])
        return FolderSync(tmp_path / "a", api, world.ws, messages.append)

    a = through_proxy()
    await a.once()
    (tmp_path / "a" / "Welcome.md").write_text("Written while the server was away.\n")
    await proxy.stop()  # the server goes away: the pass fails after its local step
    with pytest.raises(OSError):
        await a.once()
    await proxy.start()  # back, on the same address
    resumed = through_proxy()  # a new process, from the state file alone
    await resumed.once()
    assert await server_markdown(world, world.doc()) == "Written while the server was away."
    assert (tmp_path / "a" / "Welcome.md").read_text() == "Written while the server was away.\n"
    await proxy.stop()


async def test_watching_carries_edits_both_ways_within_seconds(world: World, tmp_path: Path) -> None:
    root = tmp_path / "a"
    a = folder(world, root)
    stop = asyncio.Event()
    watcher = asyncio.create_task(a.watch(stop, feed_wait=5))
    try:
        await eventually(lambda: asyncio.sleep(0, (root / "Welcome.md").exists()), bool, timeout=20,
                         what="the first sync")
        browser = await YClient(world.ws_url("editor")).connect()
        started = time.monotonic()
        with browser.doc.transaction():
            write_markdown(browser.doc, "Typed in a browser.\n", "markdown")
        await eventually(lambda: asyncio.sleep(0, (root / "Welcome.md").read_text()),
                         lambda text: "Typed in a browser." in text, timeout=5, what="the browser edit in the file")
        to_file = time.monotonic() - started
        started = time.monotonic()  # a second edit right after: the live feed entry waits for its interval
        with browser.doc.transaction():
            write_markdown(browser.doc, "Typed in a browser, twice.\n", "markdown")
        await eventually(lambda: asyncio.sleep(0, (root / "Welcome.md").read_text()),
                         lambda text: "twice" in text, timeout=5, what="the second browser edit in the file")
        again_to_file = time.monotonic() - started
        started = time.monotonic()
        (root / "Welcome.md").write_text("Typed in a browser, twice.\n\nSaved in an editor.\n")
        await browser.wait_for(lambda: "Saved in an editor." in read_markdown(browser.doc, "markdown"), timeout=2)
        to_browser = time.monotonic() - started
        print(f"\nbrowser → file {to_file:.2f} s (the next edit {again_to_file:.2f} s), "
              f"file → browser {to_browser:.2f} s")
        await browser.close()
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)


async def test_the_command_syncs_once_and_refuses_another_workspaces_folder(world: World, tmp_path: Path) -> None:
    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collab_server", "sync", str(tmp_path / "notes"), "--server", world.server.http,
            *args, env={**os.environ, "COLLAB_TOKEN": world.demo.tokens["editor"]},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    code, out = await run("--workspace", world.ws, "--once")
    assert code == 0, out
    assert "downloaded 5/5 documents" in out and "synced 5 documents" in out
    assert (tmp_path / "notes" / "Welcome.md").exists()
    code, out = await run("--workspace", str(uuid.uuid4()), "--once")
    assert code == 2 and f"is synced with workspace {world.ws}" in out, out


async def test_a_viewer_syncs_down_and_its_edits_stay_local(world: World, tmp_path: Path) -> None:
    messages: list[str] = []
    api = ApiClient(world.server.http, world.demo.tokens["viewer"])
    viewer = FolderSync(tmp_path / "v", api, world.ws, messages.append)
    await viewer.once()
    (tmp_path / "v" / "Welcome.md").write_text("A viewer's edit.\n")
    await viewer.once()
    assert any("your role may not edit" in m for m in messages)
    assert "viewer" not in await server_markdown(world, world.doc())
    await world.api().put(f"/api/documents/{world.doc(1)}/content", content="Minutes by the editor.",
                          headers={"Content-Type": "text/markdown"})

    async def after_a_pass() -> str:
        await viewer.once()
        return (tmp_path / "v" / "Meeting notes.md").read_text()

    await eventually(after_a_pass, lambda text: text == "Minutes by the editor.\n", timeout=10,
                     what="the editor's change on the viewer's machine")


async def test_watching_survives_the_server_going_away(world: World, tmp_path: Path) -> None:
    proxy = await Proxy(world.server.port).start()
    messages: list[str] = []
    a = FolderSync(tmp_path / "a", ApiClient(f"http://127.0.0.1:{proxy.port}", world.demo.tokens["editor"]),
                   world.ws, messages.append)
    stop = asyncio.Event()
    watcher = asyncio.create_task(a.watch(stop, feed_wait=2))
    try:
        await eventually(lambda: asyncio.sleep(0, a.passes), lambda n: n >= 1, timeout=20, what="the first pass")
        await proxy.stop()
        (tmp_path / "a" / "Welcome.md").write_text("Saved while the server was away.\n")
        await eventually(lambda: asyncio.sleep(0, messages), lambda m: any("sync paused" in x for x in m),
                         timeout=10, what="the pause")
        await proxy.start()
        await eventually(lambda: server_markdown(world, world.doc()),
                         lambda md: md == "Saved while the server was away.", timeout=40, what="the edit, later")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 10)
        await proxy.stop()


async def test_an_edit_made_here_survives_a_deletion_there(world: World, tmp_path: Path) -> None:
    messages: list[str] = []
    a = folder(world, tmp_path / "a", messages)
    await a.once()
    (tmp_path / "a" / "Welcome.md").write_text("Edited offline while someone deleted it.\n")
    await world.api().delete(f"/api/documents/{world.doc()}")
    await a.once()  # applies the edit, then hears of the deletion: the file stays
    assert (tmp_path / "a" / "Welcome.md").read_text() == "Edited offline while someone deleted it.\n"
    assert any("kept Welcome.md" in m for m in messages)
    await a.once()  # and becomes a new document
    listing = (await world.api().get(f"/api/workspaces/{world.ws}/documents")).json()["documents"]
    revived = [d for d in listing if d["title"] == "Welcome"]
    assert len(revived) == 1 and revived[0]["id"] != world.doc()
    assert await server_markdown(world, revived[0]["id"]) == "Edited offline while someone deleted it."


async def test_a_viewer_adding_and_renaming_files_is_told_once_and_still_syncs_down(
    world: World, tmp_path: Path
) -> None:
    messages: list[str] = []
    viewer = FolderSync(tmp_path / "v", ApiClient(world.server.http, world.demo.tokens["viewer"]), world.ws,
                        messages.append)
    await viewer.once()
    (tmp_path / "v" / "Mine.md").write_text("a viewer's own note\n")
    (tmp_path / "v" / "Roadmap.md").rename(tmp_path / "v" / "Road.md")
    await viewer.once()
    await viewer.once()
    assert sum("may not create a document from Mine.md" in m for m in messages) == 1
    await world.api().put(f"/api/documents/{world.doc(1)}/content", content="News for the viewer.",
                          headers={"Content-Type": "text/markdown"})

    async def after_a_pass() -> str:
        await viewer.once()
        return (tmp_path / "v" / "Meeting notes.md").read_text()

    await eventually(after_a_pass, lambda text: text == "News for the viewer.\n", timeout=10, what="news")
