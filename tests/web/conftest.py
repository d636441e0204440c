"""The page in a real browser: Playwright driving Debian's Chromium against a real server process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from collab_server.access.auth import TokenVerifier
from collab_server.runtime.demo import Demo, create_demo
from tests.conftest import ServerProcess

SECRET = "web-test-secret-web-test-secret-0123"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("COLLAB_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "screenshots"))
WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist" / "app.js"


@dataclass
class Stack:
    server: ServerProcess
    demo: Demo
    browser: Browser
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions, every page

    def url(self, role: str, fragment: str = "", path: str = "/") -> str:
        return f"{self.server.http}{path}?token={self.demo.tokens[role]}{fragment}"

    async def page(self, role: str, fragment: str = "", path: str = "/") -> Page:
        context = await self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        page.on("console", lambda m: self._console(role, m))
        page.on("pageerror", lambda e: self.errors.append(f"{role}: uncaught {e}"))
        page.on("dialog", lambda d: None)  # each test answers its own dialogs
        await page.goto(self.url(role, fragment, path))
        return page

    async def get(self, path: str, role: str = "editor") -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.server.http, timeout=10) as client:
            return await client.get(path, headers={"Authorization": f"Bearer {self.demo.tokens[role]}"})

    def _console(self, role: str, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{role}: {message.text}")

    async def editor_page(self, role: str, document: str) -> Page:
        page = await self.page(role, f"#/d/{document}")
        try:
            await page.wait_for_selector("#status[data-state=synced]", timeout=15000)
        except Exception as exc:
            shown = await page.locator("body").inner_text()
            raise AssertionError(
                f"the editor never synced; browser errors: {self.errors}; page: {shown[:500]}") from exc
        return page

    async def shot(self, page: Page, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser_ready() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make chromium` installs Debian's")
    if not WEB_DIST.exists():
        pytest.fail("the web page is not built: `make web`")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture
async def stack(browser_ready: None, db: Any, spawn_server: Callable[..., ServerProcess]) -> AsyncIterator[Stack]:
    server = spawn_server(COLLAB_AUTH="on", COLLAB_JWT_SECRET=SECRET)
    demo = await create_demo(db, TokenVerifier(SECRET))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield Stack(server, demo, browser)
        finally:
            await browser.close()
