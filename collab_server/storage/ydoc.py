"""Pure pycrdt work done off the event loop: merging updates and reading a document's content.

These functions build their own Doc and take and return only bytes and plain values, so they
run in a worker process (see `offloop`) while the event loop keeps relaying messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map, get_state, merge_updates

from collab_server.content import read_markdown
from collab_server.content.model import MINDMAP_EDGES, MINDMAP_LAYOUT, MINDMAP_NODES, RICH_TEXT_FIELDS
from collab_server.content.sanitize import storable_text
from collab_server.content.text import change_size


@dataclass
class Compacted:
    state: bytes
    content: str
    chars_added: int = 0
    chars_removed: int = 0
    mindmap: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def compact(
    state: bytes | None,
    updates: list[bytes],
    doc_type: str = "markdown",
    previous: str = "",
    fields: Sequence[str] = RICH_TEXT_FIELDS,
) -> Compacted:
    """Merge `updates` into `state`; the new Markdown and how much it differs from `previous`.

    The stored state is `merge_updates`, never a Doc re-encoded: a merge keeps every struct,
    including ones whose dependencies have not arrived yet (a Doc would leave those out of
    its encoding and they would be lost when their rows are deleted). Rows may also be in
    any order. The Doc is only used to read the content.
    """
    problems: list[str] = []
    valid = []
    for update in updates:
        try:
            get_state(update)  # decodes; an undecodable row must not poison the merge
            valid.append(update)
        except Exception as exc:  # validated on arrival, so this is corruption: keep the rest
            problems.append(f"skipped an undecodable update: {exc}")
    incoming = merge_updates(*valid) if len(valid) > 1 else (valid[0] if valid else b"")
    merged = merge_updates(state, incoming) if state and incoming else (state or incoming)
    doc: Doc[Any] = Doc()
    if merged:
        doc.apply_update(merged)
    try:
        content = storable_text(read_markdown(doc, doc_type, fields))
    except Exception as exc:  # a conversion bug must not stop the state from being stored
        problems.append(f"content conversion failed, previous content kept: {exc!r}")
        content = previous
    added, removed = change_size(previous, content)
    result = Compacted(merged, content, added, removed, problems=problems)
    if doc_type == "mindmap":
        result.mindmap = read_mindmap(doc)
    return result


def ready() -> bool:
    """Run once in a new worker process: everything above is imported by then."""
    return True


def markdown_of(update: bytes, doc_type: str, fields: Sequence[str] = RICH_TEXT_FIELDS) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return storable_text(read_markdown(doc, doc_type, fields))


def read_mindmap(doc: Doc[Any]) -> dict[str, Any]:
    nodes = doc.get(MINDMAP_NODES, type=Array).to_py() or []
    edges = doc.get(MINDMAP_EDGES, type=Array).to_py() or []
    layout = doc.get(MINDMAP_LAYOUT, type=Map).to_py() or {}
    layout_type = layout.pop("type", None) or "tree"
    return {"nodes": nodes, "edges": edges, "layout_type": str(layout_type)[:50], "layout_settings": layout}


def state_of(state: bytes | None, updates: list[bytes]) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    if state:
        doc.apply_update(state)
    for update in updates:
        doc.apply_update(update)
    return doc
