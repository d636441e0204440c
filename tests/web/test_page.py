"""The page at `/` and `/console` in real Chromium: typing with the real keyboard, cursors, roles, versions,
a server killed under the pages, the console. Screenshots go to build/screenshots (COLLAB_TEST_ARTIFACTS)."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from .conftest import Stack

pytestmark = pytest.mark.timeout(180)


async def editor_text(page: Page) -> str:
    return await page.locator(".ProseMirror").inner_text()


async def type_into(page: Page, text: str) -> None:
    await page.locator(".ProseMirror").click()
    await page.keyboard.press("End")
    await page.keyboard.type(text, delay=15)


async def content(stack: Stack, document: str) -> str:
    return (await stack.get(f"/api/documents/{document}/content")).text


async def test_two_editors_converge_see_each_others_cursors_and_a_viewer_changes_nothing(stack: Stack) -> None:
    doc = str(stack.demo.documents[0])
    editor = await stack.editor_page("editor", doc)
    admin = await stack.editor_page("admin", doc)
    viewer = await stack.editor_page("viewer", doc)

    await type_into(editor, "Hello from the editor. ")
    await expect(admin.locator(".ProseMirror")).to_contain_text("Hello from the editor.")
    await type_into(admin, "The admin was here. ")
    for page in (editor, admin, viewer):
        await expect(page.locator(".ProseMirror")).to_contain_text("The admin was here.")
        await expect(page.locator(".ProseMirror")).to_contain_text("Hello from the editor.")
    # Each sees the other's caret, with the other's name.
    await expect(editor.locator(".collaboration-carets__label", has_text="Demo Admin")).to_be_visible()
    await expect(admin.locator(".collaboration-carets__label", has_text="Demo Editor")).to_be_visible()
    for page in (editor, admin):  # drawn in the user's colour, not transparent
        colour = await page.locator(".collaboration-carets__label").evaluate("e => getComputedStyle(e).backgroundColor")
        assert colour.startswith("rgb(") and colour != "rgba(0, 0, 0, 0)", colour
    await expect(editor.locator("#presence")).to_contain_text("Demo Viewer")

    # The viewer: a badge, an editor that is not editable, and keystrokes that change nothing anywhere.
    await expect(viewer.locator("#readonly")).to_contain_text("read-only")
    await expect(viewer.locator(".ProseMirror")).to_have_attribute("contenteditable", "false")
    await viewer.locator(".ProseMirror").click()
    await viewer.keyboard.type("VIEWER KEYS", delay=10)
    await type_into(editor, "After the viewer typed.")  # a later edit every page must see
    for page in (editor, admin, viewer):
        await expect(page.locator(".ProseMirror")).to_contain_text("After the viewer typed.")
        assert "VIEWER" not in await editor_text(page)
    await stack.shot(editor, "editor-two-cursors")
    await stack.shot(viewer, "viewer-read-only")
    stored = await content(stack, doc)
    assert "VIEWER" not in stored and "After the viewer typed." in stored
    assert stack.errors == []


async def test_restoring_a_version_changes_both_pages(stack: Stack) -> None:
    doc = str(stack.demo.documents[1])
    editor = await stack.editor_page("editor", doc)
    admin = await stack.editor_page("admin", doc)
    await type_into(editor, "First draft.")
    await expect(admin.locator(".ProseMirror")).to_contain_text("First draft.")
    editor.once("dialog", lambda d: d.accept("the first draft"))
    await editor.locator("#save-version").click()
    await expect(editor.locator("#versions")).to_contain_text("the first draft")
    await type_into(editor, " A second thought.")
    await expect(admin.locator(".ProseMirror")).to_contain_text("A second thought.")

    admin.once("dialog", lambda d: d.accept())
    await admin.locator("#versions li", has_text="the first draft").get_by_role("button", name="Restore").click()
    for page in (editor, admin):
        await expect(page.locator(".ProseMirror")).not_to_contain_text("A second thought.")
        await expect(page.locator(".ProseMirror")).to_contain_text("First draft.")
    assert "A second thought" not in await content(stack, doc)
    await expect(editor.locator("#versions")).to_contain_text("restored version", timeout=10000)
    assert stack.errors == []


async def test_a_killed_server_comes_back_and_nothing_typed_is_lost(stack: Stack) -> None:
    doc = str(stack.demo.documents[0])
    editor = await stack.editor_page("editor", doc)
    admin = await stack.editor_page("admin", doc)
    console = await stack.page("admin", path="/console")
    await expect(console.locator(f"#rooms tr[data-id='{doc}'] .connections")).to_have_text("2", timeout=10000)
    await expect(console.locator("[data-card=connections] .v")).to_have_text("2")
    await type_into(editor, "Typed before the kill. ")
    await type_into(admin, "The admin too. ")
    await expect(editor.locator(".ProseMirror")).to_contain_text("The admin too.")
    await stack.shot(console, "console")

    # A second tab of the same browser, listening where y-websocket's BroadcastChannel would post.
    tab = await editor.context.new_page()
    await tab.goto(stack.url("editor", f"#/d/{doc}"))
    await tab.wait_for_selector("#status[data-state=synced]")
    channel = f"ws://127.0.0.1:{stack.server.port}/ws/{doc}"
    await tab.evaluate("name => { window.heard = []; new BroadcastChannel(name).onmessage = (e) => "
                       "window.heard.push(typeof e.data === 'string' ? e.data : 'a provider message') }", channel)

    stack.server.kill()
    await expect(editor.locator("#status")).to_have_attribute("data-state", "offline", timeout=10000)
    await type_into(editor, "Typed while it was down.")
    await expect(editor.locator("#status")).to_contain_text("unsaved edits")
    # Nothing went around the server: the tab heard only the probe sent after the typing.
    await editor.evaluate("name => new BroadcastChannel(name).postMessage('probe')", channel)
    await tab.wait_for_function("() => window.heard.includes('probe')")
    assert await tab.evaluate("window.heard") == ["probe"]
    assert "Typed while it was down." not in await editor_text(tab)
    await stack.shot(editor, "editor-offline")
    stack.server.start()  # the same port: the pages reconnect by themselves
    for page in (editor, admin):
        await expect(page.locator("#status")).to_have_attribute("data-state", "synced", timeout=20000)
    await expect(admin.locator(".ProseMirror")).to_contain_text("Typed while it was down.")
    await expect(tab.locator(".ProseMirror")).to_contain_text("Typed while it was down.")  # through the server
    stored = await content(stack, doc)
    for text in ("Typed before the kill.", "The admin too.", "Typed while it was down."):
        assert text in stored
    # While the server was down the pages (and the console) logged failed WebSocket and fetch attempts.
    assert [e for e in stack.errors if "WebSocket" not in e and "Failed to fetch" not in e
            and "ERR_CONNECTION_REFUSED" not in e and "Failed to load resource" not in e] == []


async def test_documents_are_listed_created_renamed_and_deleted_and_comments_threaded(stack: Stack) -> None:
    page = await stack.page("editor")
    await expect(page.locator(".workspace")).to_contain_text("Demo workspace")
    await expect(page.locator(".doclist li")).to_have_count(5)
    await page.fill("input[name=title]", "Made in the browser")
    await page.select_option("select[name=type]", "presentation")
    await page.get_by_role("button", name="Create").click()
    await page.wait_for_selector("#status[data-state=synced]")
    await expect(page.locator("#title")).to_have_text("Made in the browser")
    created = page.url.rsplit("/", 1)[-1]

    # A presentation: slides between horizontal rules (Tiptap turns "---" into one), read-only under the editor.
    await type_into(page, "Slide one")
    await page.keyboard.press("Enter")
    await page.keyboard.type("---", delay=20)
    await page.keyboard.type("Slide two", delay=15)
    await expect(page.locator(".slide")).to_have_count(2)
    await expect(page.locator(".slide[data-slide='2']")).to_contain_text("Slide two")

    # Comments: one on the selection, a reply, resolved.
    await page.locator(".ProseMirror p", has_text="Slide one").click(click_count=3)  # selects the paragraph
    await page.wait_for_function("() => getSelection().toString().includes('Slide one')")
    await page.fill("#comment-text", "Is this the right opening?")
    await page.locator("#comment-add").click()
    thread = page.locator("#comments .thread", has_text="Is this the right opening?")
    await expect(thread).to_contain_text("“Slide one”")
    page.once("dialog", lambda d: d.accept("Yes, keep it"))
    await thread.get_by_role("button", name="Reply").click()
    await expect(thread).to_contain_text("Yes, keep it")
    await thread.get_by_role("button", name="Resolve").click()
    await expect(page.locator("#comments .thread.resolved")).to_have_count(1)

    await page.locator("a", has_text="← documents").click()
    row = page.locator(f".doclist li[data-id='{created}']")
    page.once("dialog", lambda d: d.accept("Renamed in the browser"))
    await row.get_by_role("button", name="Rename").click()
    await expect(row).to_contain_text("Renamed in the browser")
    page.once("dialog", lambda d: d.accept())
    await row.get_by_role("button", name="Delete").click()
    await expect(page.locator(f".doclist li[data-id='{created}']")).to_have_count(0)
    assert (await stack.get(f"/api/documents/{created}")).status_code == 404

    # A viewer sees the list without the buttons that would change it, and the console refuses it.
    viewer = await stack.page("viewer")
    await expect(viewer.locator(".doclist li")).to_have_count(5)
    await expect(viewer.get_by_role("button", name="Delete")).to_have_count(0)
    refused = await stack.page("viewer", path="/console")
    await expect(refused.locator("#error")).to_contain_text("only owners and admins")
    assert stack.errors == ["viewer: Failed to load resource: the server responded with a status of 403 (Forbidden)"]


async def test_a_mind_map_is_shown_as_its_outline(stack: Stack) -> None:
    from pycrdt import Array, Map

    from collab_server.client import YClient

    doc = str(stack.demo.documents[2])  # "Roadmap", a mind map
    client = await YClient(f"{stack.server.ws_base}/{doc}?token={stack.demo.tokens['editor']}").connect()
    nodes, edges = client.doc.get("nodes", type=Array), client.doc.get("edges", type=Array)
    with client.doc.transaction():
        for node_id, label in (("1", "Launch"), ("2", "Beta"), ("3", "Docs")):
            nodes.append(Map({"id": node_id, "label": label}))
        edges.append(Map({"source": "1", "target": "2"}))
        edges.append(Map({"source": "2", "target": "3"}))
    page = await stack.editor_page("viewer", doc)
    await expect(page.locator("#outline li")).to_have_count(3)
    await expect(page.locator("#outline > ul > li")).to_have_count(1)  # one root, the rest nested under it
    await expect(page.locator("#outline ul ul ul li")).to_have_text("Docs")
    nodes.append(Map({"id": "4", "label": "Press"}))  # live: the outline follows
    await expect(page.locator("#outline li")).to_have_count(4)
    await client.close()
    assert stack.errors == []


async def test_tables_images_and_task_lists_survive_an_edit_in_the_page(stack: Stack) -> None:
    """y-prosemirror deletes from the shared document what the page's schema cannot build: the page must
    know every node the server's content model writes."""
    doc = str(stack.demo.documents[1])
    source = ("# Plan\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n* [ ] task one\n* [x] task two\n\n"
              "![logo](/static/no-such-logo.png)\n\nThe end.")
    async with httpx.AsyncClient(base_url=stack.server.http, timeout=10) as client:
        put = await client.put(f"/api/documents/{doc}/content", content=source, headers={
            "Content-Type": "text/markdown", "Authorization": f"Bearer {stack.demo.tokens['editor']}"})
        assert put.status_code == 200, put.text
    page = await stack.editor_page("editor", doc)
    await expect(page.locator(".ProseMirror table td", has_text="2")).to_be_visible()
    await expect(page.locator(".ProseMirror ul[data-type=taskList] li")).to_have_count(2)
    await page.locator(".ProseMirror p", has_text="The end.").click()
    await page.keyboard.press("End")
    await page.keyboard.type(" Edited in the page.", delay=10)
    await expect(page.locator("#status")).to_have_attribute("data-state", "synced")
    stored = ""
    for _ in range(50):
        stored = await content(stack, doc)
        if "Edited in the page." in stored:
            break
        await page.wait_for_timeout(100)
    assert "Edited in the page." in stored
    for part in ("| a | b |", "| 1 | 2 |", "[ ] task one", "[x] task two", "![logo](/static/no-such-logo.png)"):
        assert part in stored, (part, stored)
    # The image points nowhere (deterministic on any machine, with or without DNS): its 404 is the only error.
    assert stack.errors == ["editor: Failed to load resource: the server responded with a status of 404 (Not Found)"]


async def test_an_image_caption_cannot_run_script_in_the_slides(stack: Stack) -> None:
    """The slides are built from the document's nodes, not by parsing HTML, and the page forbids inline script."""
    doc = str(stack.demo.documents[3])  # a presentation
    hostile = 'x<hr><img src=x onerror="window.pwned=1">'
    source = f"Slide one\n\n---\n\n![{hostile}](/static/none.png)\n\nSlide two"
    async with httpx.AsyncClient(base_url=stack.server.http, timeout=10) as client:
        put = await client.put(f"/api/documents/{doc}/content", content=source, headers={
            "Content-Type": "text/markdown", "Authorization": f"Bearer {stack.demo.tokens['editor']}"})
        assert put.status_code == 200, put.text
        page_response = await client.get("/")
        assert "script-src 'self'" in page_response.headers["content-security-policy"]
    page = await stack.editor_page("viewer", doc)
    await expect(page.locator(".slide")).to_have_count(2)
    await expect(page.locator(".slide[data-slide='2'] img")).to_have_count(1)
    assert await page.locator(".slide[data-slide='2'] img").get_attribute("alt") == hostile
    await page.wait_for_timeout(300)  # an onerror handler would have run by now (the image 404s at once)
    assert await page.evaluate("window.pwned") is None
