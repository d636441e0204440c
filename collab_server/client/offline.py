"""HTTP client for the /api routes, and offline sync for desktop apps and scripts.

`OfflineSync` keeps local pycrdt copies of a workspace's documents. Edits made while offline go
into those copies; when the app is back it pulls the changes feed from its saved position,
fetches for each changed document only the diff against its local state vector, and pushes
for each locally edited document only what the server lacks. CRDT merging does the rest:
every copy converges and nothing typed on either side is lost. The state (position, documents,
what is unpushed) serialises to JSON, so an app can keep it on disk across restarts.

Standard library only (urllib in a worker thread), so the package needs no HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson
from pycrdt import Doc, Text, TransactionEvent

from collab_server.content import read_markdown, write_markdown
from collab_server.content.model import TEXT_FIELD


class ApiClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        device_name: str | None = None,
        client_version: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.device_name = device_name
        self.client_version = client_version
        self.timeout = timeout

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        json: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        """One request; errors (status >= 400) raise ApiClientError with the server's code."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if self.device_name:
            sent["X-Device-Name"] = self.device_name
        if self.client_version:
            sent["X-Client-Version"] = self.client_version
        if json is not None:
            body, content_type = orjson.dumps(json), "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        req = urllib.request.Request(url, data=body, method=method, headers=sent)
        response = await asyncio.to_thread(self._send, req, timeout or self.timeout)
        if response.status >= 400:
            try:
                error = response.json()["error"]
                raise ApiClientError(response.status, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiClientError(response.status, "error", response.body[:200].decode(errors="replace")) from None
        return response

    @staticmethod
    def _send(req: urllib.request.Request, timeout: float) -> HttpResponse:
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as exc:  # 304 and every error status
            with exc:
                return HttpResponse(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())

    # -- endpoints -------------------------------------------------------------------------

    async def workspaces(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/workspaces")).json()["workspaces"]  # type: ignore[no-any-return]

    async def changes(self, workspace_id: str, since: str = "0", limit: int = 100, wait: float = 0) -> dict[str, Any]:
        response = await self.request(
            "GET", f"/api/workspaces/{workspace_id}/changes",
            query={"since": since, "limit": limit, "wait": wait or None}, timeout=self.timeout + wait,
        )
        return response.json()  # type: ignore[no-any-return]

    async def state(self, document_id: str, state_vector: bytes | None = None) -> bytes:
        """The full state, or with a state vector only what that state lacks."""
        query = {"sv": base64.b64encode(state_vector).decode()} if state_vector is not None else None
        return (await self.request("GET", f"/api/documents/{document_id}/state", query=query)).body

    async def state_vector(self, document_id: str) -> bytes:
        return (await self.request("GET", f"/api/documents/{document_id}/state-vector")).body

    async def push_update(self, document_id: str, update: bytes) -> bytes:
        """Apply an update on the server; returns the server's new state vector."""
        response = await self.request(
            "POST", f"/api/documents/{document_id}/updates", body=update, content_type="application/octet-stream"
        )
        return base64.b64decode(response.json()["state_vector"])

    async def content(self, document_id: str) -> str:
        return (await self.request("GET", f"/api/documents/{document_id}/content")).body.decode()

    async def documents(self, workspace_id: str) -> list[dict[str, Any]]:
        """Every live document of a workspace (all pages)."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = (await self.request("GET", f"/api/workspaces/{workspace_id}/documents",
                                       query={"limit": 100, "cursor": cursor})).json()
            out += page["documents"]
            cursor = page["next_cursor"]
            if cursor is None:
                return out

    async def document(self, document_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/api/documents/{document_id}")).json()  # type: ignore[no-any-return]

    async def update_document(self, document_id: str, **fields: Any) -> dict[str, Any]:
        return (await self.request("PATCH", f"/api/documents/{document_id}", json=fields)).json()  # type: ignore[no-any-return]

    async def delete_document(self, document_id: str) -> None:
        await self.request("DELETE", f"/api/documents/{document_id}")

    async def create_document(self, workspace_id: str, title: str, content: str = "", **fields: Any) -> dict[str, Any]:
        response = await self.request(
            "POST", f"/api/workspaces/{workspace_id}/documents", json={"title": title, "content": content, **fields}
        )
        return response.json()  # type: ignore[no-any-return]


class OfflineSync:
    """Local copies of one workspace's documents, reconciled with the server over HTTP."""

    def __init__(self, api: ApiClient, workspace_id: str, cursor: str = "0") -> None:
        self.api = api
        self.workspace_id = str(workspace_id)
        self.cursor = cursor
        self.docs: dict[str, Doc[Any]] = {}
        self.dirty: set[str] = set()  # edited locally, not yet pushed
        self.deleted: set[str] = set()  # tombstoned on the server
        self.refused: set[str] = set()  # local edits the server refused (403: a viewer's), never pushed
        self._applying = False
        self._subscriptions: dict[str, Any] = {}

    def doc(self, document_id: str) -> Doc[Any]:
        """The local copy (empty until pulled); local transactions on it are pushed later."""
        document_id = str(document_id)
        doc = self.docs.get(document_id)
        if doc is None:
            doc = self.docs[document_id] = Doc()
            self._subscriptions[document_id] = doc.observe(lambda _e, d=document_id: self._on_local(d, _e))
        return doc

    def text(self, document_id: str) -> Text:
        """The Y.Text of a source-editor document (for rich-text documents use `markdown`)."""
        text: Text = self.doc(document_id).get(TEXT_FIELD, type=Text)
        return text

    def markdown(self, document_id: str, doc_type: str = "markdown") -> str:
        """The local copy's content as Markdown, whichever structure holds it."""
        return read_markdown(self.doc(document_id), doc_type)

    def set_markdown(self, document_id: str, source: str, doc_type: str = "markdown") -> None:
        """Edit the local copy so that it reads as `source`: a minimal CRDT edit, pushed later
        and merged with whatever others did meanwhile."""
        doc = self.doc(document_id)
        with doc.transaction():
            write_markdown(doc, source, doc_type)

    def _on_local(self, document_id: str, _event: TransactionEvent) -> None:
        if not self._applying:
            self.dirty.add(document_id)

    def _apply_remote(self, document_id: str, update: bytes) -> None:
        self._applying = True
        try:
            self.doc(document_id).apply_update(update)
        finally:
            self._applying = False

    async def pull(self, wait: float = 0) -> set[str]:
        """Read the feed from the saved position; fetch diffs of the documents it names.
        Returns the ids that changed (tombstones included; see `deleted`)."""
        changed: set[str] = set()
        while True:
            page = await self.api.changes(self.workspace_id, self.cursor, wait=wait)
            wait = 0  # only the first page long-polls
            for entry in page["changes"]:
                if entry["entity_type"] != "document":
                    continue
                document_id = str(entry["entity_id"])
                changed.add(document_id)
                if entry["operation"] == "delete":
                    self.deleted.add(document_id)
                else:
                    self.deleted.discard(document_id)
            self.cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        for document_id in sorted(changed - self.deleted):
            try:
                await self.fetch(document_id)
            except ApiClientError as exc:
                if exc.status != 404:
                    raise
                self.deleted.add(document_id)  # deleted after the entry that named it
        return changed

    async def fetch(self, document_id: str) -> None:
        """Bring one local copy up to date with only the diff it lacks."""
        local = self.doc(document_id)
        self._apply_remote(str(document_id), await self.api.state(str(document_id), local.get_state()))

    async def push(self) -> set[str]:
        """Send each locally edited document's diff against the server's state vector."""
        pushed: set[str] = set()
        for document_id in sorted(self.dirty - self.deleted):
            try:
                server_vector = await self.api.state_vector(document_id)
                await self.api.push_update(document_id, self.docs[document_id].get_update(server_vector))
            except ApiClientError as exc:
                if exc.status == 403:  # this role may not edit it: the edit stays in the local copy only
                    self.refused.add(document_id)
                    self.dirty.discard(document_id)
                    continue
                if exc.status != 404:
                    raise
                self.deleted.add(document_id)  # deleted meanwhile (or never existed): nothing to push to
                continue
            self.dirty.discard(document_id)
            pushed.add(document_id)
        return pushed

    async def sync(self, wait: float = 0) -> tuple[set[str], set[str]]:
        """Pull, then push: (changed on the server, pushed from here)."""
        changed = await self.pull(wait)
        return changed, await self.push()

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "cursor": self.cursor,
            "documents": {d: base64.b64encode(doc.get_update()).decode() for d, doc in self.docs.items()},
            "dirty": sorted(self.dirty),
            "deleted": sorted(self.deleted),
        }

    @classmethod
    def from_json(cls, api: ApiClient, data: dict[str, Any]) -> OfflineSync:
        sync = cls(api, data["workspace_id"], data["cursor"])
        for document_id, state in data["documents"].items():
            sync._apply_remote(document_id, base64.b64decode(state))
        sync.dirty = set(data.get("dirty", ()))
        sync.deleted = set(data.get("deleted", ()))
        return sync
