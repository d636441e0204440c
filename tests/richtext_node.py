"""Drive the real ProseMirror / Tiptap / y-prosemirror libraries (tests/node/richtext.mjs) from Python.

``RichText`` is a ``NodeClients`` (same JSON-lines framing, reply matching, error types, install and
shutdown handling from tests/nodeclient.py) running ``richtext.mjs`` instead of ``client.mjs``; see the
header of richtext.mjs for the command list. ``load_golden`` reads the golden data that
tests/node/make_golden.mjs produced with the same libraries (tests/richtext_golden/).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

try:  # tests/ without __init__.py (rootdir-relative "prepend" import mode) ...
    from nodeclient import NODE_DIR, NodeClients, NodeCommandError, NodeHarnessError
except ModuleNotFoundError:  # ... or tests/ as a package
    from tests.nodeclient import NODE_DIR, NodeClients, NodeCommandError, NodeHarnessError

__all__ = [
    "GOLDEN_DIR", "RICHTEXT_SCRIPT", "NodeCommandError", "NodeHarnessError", "RichText", "golden_cases",
    "load_golden",
]

RICHTEXT_SCRIPT = NODE_DIR / "richtext.mjs"
GOLDEN_DIR = Path(__file__).resolve().parent / "richtext_golden"
SCHEMAS = ("prosemirror", "tiptap")


@cache
def load_golden(schema: str) -> dict[str, Any]:
    """tests/richtext_golden/<schema>.json: {"schema", "generator", "versions", "notes", "cases": [...]}."""
    return json.loads((GOLDEN_DIR / f"{schema}.json").read_text())  # type: ignore[no-any-return]


def golden_cases(schema: str) -> list[dict[str, Any]]:
    """The golden cases of ``schema``: each {"name", "markdown", "json", "fragment", "serialized", ...}."""
    return list(load_golden(schema)["cases"])


class RichText(NodeClients):
    """A ``node richtext.mjs`` process. ``call`` (inherited) sends any command; the helpers below name them."""

    script = RICHTEXT_SCRIPT
    ping_timeout = 60

    async def convert(self, schema: str, *, markdown: str | None = None, doc: dict[str, Any] | None = None,
                      **kw: Any) -> dict[str, Any]:
        """Offline: {json, markdown, fragment} for Markdown or ProseMirror JSON, as ``write`` would write it."""
        return await self.call("convert", schema=schema, **_source(markdown, doc), **kw)

    async def write(self, url: str, room: str, schema: str, *, markdown: str | None = None,
                    doc: dict[str, Any] | None = None, client: str | None = None, keep: bool = False,
                    **kw: Any) -> dict[str, Any]:
        """Connect, write through the binding, make sure the server has it: {json, markdown, fragment, clientId}.

        With ``keep=True`` the connection stays open as session ``client`` (for read/wait_for/rel_pos/...).
        """
        extra: dict[str, Any] = {"client": client} if client is not None else {}
        return await self.call("write", url=url, room=room, schema=schema, keep=keep,
                               **_source(markdown, doc), **extra, **kw)

    async def connect(self, client: str, url: str, room: str, **kw: Any) -> int:
        """Open kept session ``client`` on url/room (synced, nothing written); returns its Yjs clientID."""
        return int((await self.call("connect", client=client, url=url, room=room, **kw))["clientId"])

    async def edit(self, client: str, schema: str, *, markdown: str | None = None,
                   doc: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """A local change on kept session ``client`` through the binding (diffed like ySyncPlugin does)."""
        return await self.call("edit", client=client, schema=schema, **_source(markdown, doc), **kw)

    async def read(self, schema: str, *, client: str | None = None, url: str | None = None,
                   room: str | None = None, **kw: Any) -> dict[str, Any]:
        """{json, markdown, fragment, dropped} from kept session ``client`` or a temporary connection."""
        return await self.call("read", schema=schema, **_target(client, url, room), **kw)

    async def wait_for(self, schema: str, *, markdown: str | None = None, json: dict[str, Any] | None = None,
                       client: str | None = None, url: str | None = None, room: str | None = None,
                       timeout: float = 10.0, **kw: Any) -> dict[str, Any]:
        """Wait until the JS serialisation equals ``markdown`` (or the ProseMirror JSON equals ``json``).

        On timeout raises NodeCommandError whose ``reply`` holds the last markdown/json/fragment seen.
        """
        expect: dict[str, Any] = {"markdown": markdown} if markdown is not None else {"json": json}
        return await self.call("waitFor", schema=schema, timeoutMs=int(timeout * 1000),
                               **_target(client, url, room), **expect, **kw)

    async def rel_pos(self, client: str, path: list[int], index: int, *, assoc: int = 0, **kw: Any) -> str:
        """Y.RelativePosition (base64) at ``index`` in the type at ``path`` (child indexes from the fragment)."""
        reply = await self.call("relPos", client=client, path=path, index=index, assoc=assoc, **kw)
        return str(reply["relPos"])

    async def resolve(self, client: str, rel_pos: str, **kw: Any) -> dict[str, Any]:
        """{found, path, index}: where a relative position points now (path None if its type is gone)."""
        reply = await self.call("resolve", client=client, relPos=rel_pos, **kw)
        return {k: reply[k] for k in ("found", "path", "index")}

    async def close_client(self, client: str) -> None:
        """Destroy kept session ``client``."""
        await self.call("close", client=client)


def _source(markdown: str | None, doc: dict[str, Any] | None) -> dict[str, Any]:
    if (markdown is None) == (doc is None):
        raise ValueError("pass exactly one of markdown= or doc=")
    return {"markdown": markdown} if markdown is not None else {"doc": doc}


def _target(client: str | None, url: str | None, room: str | None) -> dict[str, Any]:
    if client is not None:
        return {"client": client}
    if url is None or room is None:
        raise ValueError("pass client= (a kept session) or url= and room=")
    return {"url": url, "room": room}
