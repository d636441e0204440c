"""A folder of Markdown files kept in two-way sync with a workspace: `collab-server sync DIR`.

Every document is a `.md` file named after its title. A hidden state file (`.collab-sync.json`) holds a
local pycrdt copy of every document (`OfflineSync`), the feed position, and for each file the text it had
at the last sync (`seen`) and what its copy read as then (`base`). One pass:

1. local: a file whose text is not what was last seen is applied to its copy as a minimal CRDT edit (the
   copy still reads as the base, so the edit is exactly what changed in the file); a new file becomes a
   document, a missing one is a rename (the same text under another name) or a deletion. The state is
   saved before anything is sent, so an interrupted pass resumes with nothing lost;
2. remote: the changes feed from the saved position, the diffs of what changed, new titles, deletions;
3. push what the copies hold and the server lacks;
4. write each file whose copy now reads differently (temp file + rename), unless it changed meanwhile.

Concurrent edits of one file on two machines and in browsers merge as CRDT edits: no conflicted copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pycrdt import Doc, Text

from collab_server.content.text import rewrite_text

from .offline import ApiClient, ApiClientError, OfflineSync
from .tasks import first_of

STATE_NAME = ".collab-sync.json"
STATE_VERSION = 1
_UNSAFE = re.compile(r'[\x00-\x1f/\\:*?"<>|]+')
RETRYABLE = (OSError, urllib.error.URLError, TimeoutError)  # the server away, or the network


class SyncError(Exception):
    """The folder cannot be synced as asked (another workspace's folder, a bad state file)."""


@dataclass
class Tracked:
    path: str  # relative to the folder, with / separators
    title: str
    type: str
    seen: str | None  # the file's text at the last sync (None: not written yet)
    base: str | None  # what the local copy read as at the last sync


def atomic_write(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: a temp file beside it, fsync, rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def merge_text(base: str, mine: str, theirs: str) -> str:
    """Both edits of `base`, merged the way the CRDT merges text: each side's change is a minimal edit
    of one shared Y.Text, so insertions of both survive and a deletion removes only what it deleted."""
    origin: Doc[Any] = Doc()
    origin.get("t", type=Text).insert(0, base)
    start = origin.get_update()
    sides = []
    for target in (mine, theirs):
        side: Doc[Any] = Doc()
        side.apply_update(start)
        rewrite_text(side.get("t", type=Text), target)
        sides.append(side)
    sides[0].apply_update(sides[1].get_update(sides[0].get_state()))
    return str(sides[0].get("t", type=Text))


def file_name(title: str) -> str:
    """A readable file name for a title (no path separators or characters Windows refuses)."""
    name = _UNSAFE.sub("-", title).strip().strip(".").strip() or "Untitled"
    return name[:120]


class FolderSync:
    def __init__(
        self, root: Path, api: ApiClient, workspace_id: str, report: Callable[[str], None] | None = None
    ) -> None:
        self.root = root.resolve()
        self.api = api
        self.workspace_id = str(workspace_id)
        self.report = report or (lambda _message: None)
        self.files: dict[str, Tracked] = {}
        self.offline = OfflineSync(api, self.workspace_id)
        self.started = False  # a first sync has completed its initial download
        self.passes = 0
        self._refusals: set[str] = set()  # what this role may not do, reported once
        self._load()

    @property
    def state_path(self) -> Path:
        return self.root / STATE_NAME

    def _load(self) -> None:
        try:
            data = orjson.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SyncError(f"{self.state_path} is unreadable ({exc}); move it away to sync afresh") from None
        if data.get("version") != STATE_VERSION:
            raise SyncError(f"{self.state_path} was written by another version; move it away to sync afresh")
        if data["workspace_id"] != self.workspace_id or data["server"] != self.api.base_url:
            raise SyncError(f"{self.root} is synced with workspace {data['workspace_id']} on {data['server']}; "
                            "use another folder")
        self.offline = OfflineSync.from_json(self.api, data["offline"])
        self.files = {d: Tracked(**t) for d, t in data["files"].items()}
        self.started = bool(data.get("started"))

    def save(self) -> None:
        data = {"version": STATE_VERSION, "server": self.api.base_url, "workspace_id": self.workspace_id,
                "started": self.started, "offline": self.offline.to_json(),
                "files": {d: vars(t) for d, t in self.files.items()}}
        atomic_write(self.state_path, orjson.dumps(data))

    # -- one pass ---------------------------------------------------------------------------

    async def once(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.started:
            await self._download()
        if await self._local():
            self.save()  # what this machine did is on disk before anything is sent
        changed = await self.offline.pull()
        await self._remote(changed)
        await self.offline.push()
        for document_id in sorted(self.offline.refused & set(self.files)):
            self.report(f"{self.files[document_id].path}: your role may not edit this document; "
                        "the edit stays in this folder only")
        self.offline.refused.clear()
        # Only what this pass could have changed is converted to Markdown (the whole folder cost 0.8 s per
        # pass at 1,000 documents): pulled documents, and those never written.
        self._write_files(changed | {d for d, t in self.files.items() if t.seen is None})
        self.save()
        self.passes += 1

    async def _download(self) -> None:
        """The first sync: every document, fetched whole; the feed followed from where it ends now."""
        end = await self._feed_end()  # first, so a change made while downloading is seen next pass
        documents = await self.api.documents(self.workspace_id)
        for n, meta in enumerate(documents, 1):
            document_id = str(meta["id"])
            await self.offline.fetch(document_id)
            if document_id not in self.files:
                self.files[document_id] = Tracked(self._unique(meta["title"]), meta["title"], meta["type"], None, None)
            if n % 100 == 0 or n == len(documents):
                self.report(f"downloaded {n}/{len(documents)} documents")
        self.offline.cursor = end
        self.started = True

    async def _feed_end(self) -> str:
        cursor = self.offline.cursor
        while True:
            page = await self.api.changes(self.workspace_id, cursor, limit=1000)
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return str(cursor)

    def _scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in self.root.rglob("*.md"):
            relative = path.relative_to(self.root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            found[relative.as_posix()] = path
        return found

    def _read(self, relative: str, path: Path, quiet: bool = False) -> str | None:
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            if not quiet:
                self.report(f"skipped {relative}: not valid UTF-8 (byte {exc.start}: {exc.reason})")
        except FileNotFoundError:
            pass
        return None

    async def _local(self) -> bool:
        """Apply the folder's changes; True when there were any."""
        for document_id, t in self.files.items():  # created by an interrupted pass but never fetched
            if t.base is None and t.seen is not None:
                await self.offline.fetch(document_id)
                t.base = self.offline.markdown(document_id, t.type)
        local = self._scan()
        owner = {t.path: d for d, t in self.files.items()}
        untracked = {rel: path for rel, path in local.items() if rel not in owner}
        missing = [d for d, t in self.files.items() if t.seen is not None and t.path not in local]
        edited = False  # content edits; renames, deletions and creations save as they happen
        for document_id, t in self.files.items():
            if t.path not in local or t.seen is None:
                continue
            text = self._read(t.path, local[t.path])
            if text is None or text == t.seen:
                continue
            if t.type == "mindmap":
                self.report(f"{t.path}: a mind map is edited as nodes, not Markdown; this edit stays local")
                t.seen, edited = text, True
                continue
            current = self.offline.markdown(document_id, t.type)
            if t.base is not None and current != t.base:  # news from the server not yet in the file
                self.offline.set_markdown(document_id, merge_text(t.base, text, current), t.type)
                # The file still holds `text`: as its base, the next merge (if this pass cannot rewrite the
                # file because it is edited again meanwhile) starts from what it really holds.
                t.seen = t.base = text
            else:
                self.offline.set_markdown(document_id, text, t.type)
                t.seen, t.base = text, self.offline.markdown(document_id, t.type)
            edited = True
            self.report(f"edited {t.path}")
        for document_id in missing:
            t = self.files[document_id]
            renamed = next((rel for rel, path in untracked.items()
                            if self._read(rel, path, quiet=True) == t.seen), None)
            if renamed is not None:
                del untracked[renamed]
                title = Path(renamed).stem
                if title != t.title and not (await self._try(
                        self.api.update_document(document_id, title=title), f"rename {t.path}"))[0]:
                    continue
                self.report(f"renamed {t.path} → {renamed}")
                t.path, t.title = renamed, title
                self.save()
                continue
            if not (await self._try(self.api.delete_document(document_id), f"delete {t.path}", gone_ok=True))[0]:
                continue
            del self.files[document_id]
            self.offline.deleted.add(document_id)
            self.offline.dirty.discard(document_id)
            self.save()
            self.report(f"deleted {t.path} (the document is in the workspace's trash)")
        for rel, path in sorted(untracked.items()):
            text = self._read(rel, path)
            if text is None:
                continue
            allowed, made = await self._try(self.api.create_document(self.workspace_id, Path(rel).stem, text),
                                            f"create a document from {rel}")
            if not allowed:
                continue
            document_id = str(made["id"])
            # Tracked and saved at once: a pass interrupted from here on must not create it twice.
            self.files[document_id] = Tracked(rel, made["title"], made["type"], text, None)
            self.save()
            await self.offline.fetch(document_id)
            self.files[document_id].base = self.offline.markdown(document_id, made["type"])
            self.report(f"created {made['title']} from {rel}")
        return edited

    async def _remote(self, changed: set[str]) -> None:
        for document_id in sorted(changed):
            if document_id in self.offline.deleted:
                self._deleted_on_server(document_id)
                continue
            try:
                meta = await self.api.document(document_id)
            except ApiClientError as exc:
                if exc.status != 404:
                    raise
                self.offline.deleted.add(document_id)
                self._deleted_on_server(document_id)
                continue
            t = self.files.get(document_id)
            if t is None:
                self.files[document_id] = Tracked(self._unique(meta["title"]), meta["title"], meta["type"], None, None)
                continue
            t.type = meta["type"]
            if meta["title"] != t.title:
                path = self._unique(meta["title"], document_id)
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.root / t.path, self.root / path)
                self.report(f"renamed {t.path} → {path} (retitled on the server)")
                t.path, t.title = path, meta["title"]

    async def _try(self, call: Any, what: str, gone_ok: bool = False) -> tuple[bool, Any]:
        """(done, result) of an API call. A 403 (this role may not) is reported once and is not an error;
        with `gone_ok` a 404 counts as done (deleting what is already gone)."""
        try:
            return True, await call
        except ApiClientError as exc:
            if exc.status == 403:
                self._refused(what)
                return False, None
            if gone_ok and exc.status == 404:
                return True, None
            raise

    def _refused(self, what: str) -> None:
        if what not in self._refusals:
            self._refusals.add(what)
            self.report(f"your role may not {what}; it stays in this folder only")

    def _deleted_on_server(self, document_id: str) -> None:
        t = self.files.pop(document_id, None)
        if t is None:
            return
        path = self.root / t.path
        text = self._read(t.path, path, quiet=True)
        unsent = document_id in self.offline.dirty  # edited here this pass, not pushed: never throw it away
        self.offline.dirty.discard(document_id)
        if text is not None and (text != t.seen or unsent):
            self.report(f"kept {t.path}: edited here after it was deleted on the server; it becomes a new document")
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.report(f"removed {t.path} (deleted on the server)")

    def _write_files(self, candidates: set[str]) -> None:
        for document_id in sorted(candidates):
            t = self.files.get(document_id)
            if t is None:
                continue
            markdown = self.offline.markdown(document_id, t.type)
            if t.seen is not None and markdown == t.base:
                continue
            path = self.root / t.path
            if t.seen is not None and self._read(t.path, path, quiet=True) not in (t.seen, None):
                continue  # edited while this pass ran: the next pass merges it
            path.parent.mkdir(parents=True, exist_ok=True)
            text = markdown if not markdown or markdown.endswith("\n") else markdown + "\n"  # a text file's last line
            atomic_write(path, text.encode())
            if t.seen is None:
                self.report(f"wrote {t.path}")
            t.seen, t.base = text, markdown

    def _unique(self, title: str, owner: str | None = None) -> str:
        """`Title.md`, or `Title (2).md` … when another file has that name (ignoring case, as macOS does)."""
        taken = {t.path.lower() for d, t in self.files.items() if d != owner}
        taken |= {rel.lower() for rel in self._scan()} - ({self.files[owner].path.lower()} if owner else set())
        name = file_name(title)
        candidate, n = f"{name}.md", 2
        while candidate.lower() in taken:
            candidate, n = f"{name} ({n}).md", n + 1
        return candidate

    # -- watching ---------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event | None = None, feed_wait: float = 25.0) -> None:
        """Sync both ways until `stop`: a pass whenever a file changes or the feed has news."""
        import watchfiles

        stop = stop or asyncio.Event()
        wake = asyncio.Event()
        done = asyncio.Condition()

        def markdown_only(_change: Any, path: str) -> bool:
            relative = Path(path).relative_to(self.root)
            return path.endswith(".md") and not any(part.startswith(".") for part in relative.parts)

        async def files() -> None:
            async for _changes in watchfiles.awatch(self.root, stop_event=stop, watch_filter=markdown_only,
                                                    debounce=200, step=50):
                wake.set()

        async def passed(before: int) -> None:
            async with done:
                await done.wait_for(lambda: self.passes > before or stop.is_set())

        async def feed() -> None:
            delay = 1.0
            while not stop.is_set():
                passes = self.passes
                try:
                    page = await self.api.changes(self.workspace_id, self.offline.cursor, limit=1, wait=feed_wait)
                    delay = 1.0
                except (*RETRYABLE, ApiClientError):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                if page["changes"]:
                    wake.set()
                    await passed(passes)  # the pass moves the position on; until then the feed has nothing new

        self.root.mkdir(parents=True, exist_ok=True)
        helpers = [asyncio.create_task(files(), name="sync-files"), asyncio.create_task(feed(), name="sync-feed")]
        delay = 1.0
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    await self.once()
                    delay = 1.0
                except (*RETRYABLE, ApiClientError) as exc:
                    self.report(f"sync paused ({exc}); retrying in {delay:g} s — nothing is lost")
                    await first_of(stop.wait(), asyncio.sleep(delay))
                    delay = min(delay * 2, 30.0)
                    continue
                async with done:
                    done.notify_all()
                await first_of(wake.wait(), stop.wait())
        finally:
            stop.set()
            async with done:
                done.notify_all()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

