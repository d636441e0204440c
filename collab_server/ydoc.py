"""Pure pycrdt work done off the event loop: merging updates and reading a document's text.

These functions build their own Doc, so they are safe to run in a worker thread while the
event loop keeps relaying messages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Doc, Map, Text, get_state, merge_updates

CONTENT_KEY = "content"  # the Y.Text holding the document's Markdown
MINDMAP_NODES = "nodes"  # Y.Array of node objects, mirrored into mindmaps.nodes
MINDMAP_EDGES = "edges"  # Y.Array of edge objects, mirrored into mindmaps.edges
MINDMAP_LAYOUT = "layout"  # Y.Map {type: str, ...settings}, mirrored into layout_type / layout_settings


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


def compact(state: bytes | None, updates: list[bytes], mindmap: bool = False) -> Compacted:
    """Merge `updates` into `state`; count characters the updates added and removed from the text.

    The stored state is `merge_updates`, never a Doc re-encoded: a merge keeps every struct,
    including ones whose dependencies have not arrived yet (a Doc would leave those out of
    its encoding and they would be lost when their rows are deleted). Rows may also be in
    any order. The Doc is only used to read the text and count the change.
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
    doc = Doc()
    if state:
        doc.apply_update(state)
    text = doc.get(CONTENT_KEY, type=Text)
    counts = [0, 0]

    def on_text(event: Any) -> None:
        for op in event.delta:
            if "insert" in op and isinstance(op["insert"], str):
                counts[0] += len(op["insert"])
            elif "delete" in op:
                counts[1] += int(op["delete"])

    sub = text.observe(on_text)
    if incoming:
        doc.apply_update(incoming)
    text.unobserve(sub)
    result = Compacted(merged, read_text(doc), counts[0], counts[1], problems=problems)
    if mindmap:
        result.mindmap = read_mindmap(doc)
    return result


def read_text(doc: Doc) -> str:
    try:
        return str(doc.get(CONTENT_KEY, type=Text))
    except Exception:  # the client used the name for another shared type
        return ""


def read_mindmap(doc: Doc) -> dict[str, Any]:
    nodes = doc.get(MINDMAP_NODES, type=Array).to_py() or []
    edges = doc.get(MINDMAP_EDGES, type=Array).to_py() or []
    layout = doc.get(MINDMAP_LAYOUT, type=Map).to_py() or {}
    layout_type = layout.pop("type", None) or "tree"
    return {"nodes": nodes, "edges": edges, "layout_type": str(layout_type)[:50], "layout_settings": layout}


def state_of(state: bytes | None, updates: list[bytes]) -> Doc:
    doc = Doc()
    if state:
        doc.apply_update(state)
    for update in updates:
        doc.apply_update(update)
    return doc
