"""Which shared type holds a document's content, and its Markdown.

- `markdown`, `mixed`, `presentation`: a Y.XmlFragment written by a ProseMirror-based editor
  (Tiptap's field `default`, or `prosemirror`, or BlockNote's `document-store`; the first field
  is configurable), or the Y.Text `content` of a source editor (CodeMirror, Monaco), whose text
  is the Markdown itself. A presentation's slides are separated by `---` lines, which is how a
  horizontal rule reads in both. When a document holds both, the fragment wins: it is what the
  product's default (WYSIWYG) editor shows, and the two types never converge into each other.
- `mindmap`: Y.Array `nodes` / `edges` and Y.Map `layout` (mirrored into `mindmaps`), and as
  `content` a Markdown outline of the node labels so that search finds them.

Writes that start from Markdown go into the structure the document already uses; a document
holding neither gets a fragment (settings.editor_mode `wysiwyg`, the schema default) or the
Y.Text (`source`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycrdt import Array, Doc, Map, Text, XmlFragment

from . import markdown, yxml
from .text import rewrite_text
from .tree import TIPTAP, Node, detect_dialect

TEXT_FIELD = "content"
RICH_TEXT_FIELDS = ("default", "prosemirror", "document-store")
MINDMAP_NODES, MINDMAP_EDGES, MINDMAP_LAYOUT = "nodes", "edges", "layout"


def rich_fields(preferred: str = "default") -> tuple[str, ...]:
    return (preferred, *(f for f in RICH_TEXT_FIELDS if f != preferred))


def _fragment(doc: Doc[Any], name: str) -> XmlFragment | None:
    try:
        fragment: XmlFragment = doc.get(name, type=XmlFragment)
        return fragment
    except Exception:  # the name holds another shared type
        return None


def _text(doc: Doc[Any]) -> Text | None:
    try:
        text: Text = doc.get(TEXT_FIELD, type=Text)
        return text
    except Exception:
        return None


def _filled_fragment(doc: Doc[Any], fields: Sequence[str]) -> XmlFragment | None:
    for name in fields:
        fragment = _fragment(doc, name)
        if fragment is not None and _has_children(fragment):
            return fragment
    return None


def _has_children(fragment: XmlFragment) -> bool:
    return next(iter(fragment.children), None) is not None


def read_markdown(doc: Doc[Any], doc_type: str, fields: Sequence[str] = RICH_TEXT_FIELDS) -> str:
    """The readable Markdown of whatever the document holds."""
    if doc_type == "mindmap":
        return mindmap_outline(doc)
    fragment = _filled_fragment(doc, fields)
    if fragment is not None:
        return markdown.to_markdown(yxml.read(fragment))
    text = _text(doc)
    return str(text) if text is not None else ""


class ContentError(ValueError):
    """The document's content cannot be written from Markdown (e.g. a mind map)."""


def write_markdown(doc: Doc[Any], source: str, doc_type: str, *, editor_mode: str | None = None,
                   fields: Sequence[str] = RICH_TEXT_FIELDS) -> None:
    """Turn the document's content into `source` as a minimal edit. Call inside a transaction."""
    if doc_type == "mindmap":
        raise ContentError("a mind map's content is its nodes and edges; edit those, not Markdown")
    fragment = _filled_fragment(doc, fields)
    text = _text(doc)
    if fragment is None and text is not None and (str(text) or editor_mode == "source"):
        rewrite_text(text, source)
        return
    if fragment is None:
        fragment = _fragment(doc, fields[0])
        if fragment is None:
            raise ContentError(f"the field {fields[0]!r} holds another shared type")
    dialect = detect_dialect(yxml.read(fragment)) if _has_children(fragment) else TIPTAP
    yxml.replace(fragment, markdown.parse(source, dialect))


def copy_content(doc: Doc[Any], version: Doc[Any], doc_type: str, fields: Sequence[str] = RICH_TEXT_FIELDS) -> None:
    """Make `doc`'s content what `version` holds, every attribute and mark included (a restore)."""
    if doc_type == "mindmap":
        _copy_mindmap(doc, version)
    for name in fields:
        source = _fragment(version, name)
        target = _fragment(doc, name)
        if source is None or target is None:
            continue
        blocks = yxml.read(source)
        if blocks or _has_children(target):
            yxml.replace(target, [b for b in blocks if isinstance(b, Node)], full=True)
    source_text, target_text = _text(version), _text(doc)
    if source_text is not None and target_text is not None:
        rewrite_text(target_text, str(source_text))


def _copy_mindmap(doc: Doc[Any], version: Doc[Any]) -> None:
    for key in (MINDMAP_NODES, MINDMAP_EDGES):
        target, source = doc.get(key, type=Array), version.get(key, type=Array).to_py() or []
        if target.to_py() != source:
            target.clear()
            target.extend(source)
    layout, source_layout = doc.get(MINDMAP_LAYOUT, type=Map), version.get(MINDMAP_LAYOUT, type=Map).to_py()
    if layout.to_py() != (source_layout or {}):
        layout.clear()
        layout.update(source_layout or {})


def mindmap_outline(doc: Doc[Any]) -> str:
    """Node labels as a nested bullet list: parents from edges (source -> target) or a node's
    `parent` / `parentId`; nodes without a parent are roots, in their array order."""
    try:
        nodes = [n for n in (doc.get(MINDMAP_NODES, type=Array).to_py() or []) if isinstance(n, dict)]
        edges = [e for e in (doc.get(MINDMAP_EDGES, type=Array).to_py() or []) if isinstance(e, dict)]
    except Exception:
        return ""
    ids = [str(n.get("id", i)) for i, n in enumerate(nodes)]
    by_id = dict(zip(ids, nodes, strict=True))
    parent: dict[str, str] = {}
    for node_id, node in zip(ids, nodes, strict=True):
        p = node.get("parent", node.get("parentId"))
        if p is not None and str(p) in by_id:
            parent[node_id] = str(p)
    for edge in edges:
        source, target = str(edge.get("source", edge.get("from", ""))), str(edge.get("target", edge.get("to", "")))
        if source in by_id and target in by_id and target not in parent and source != target:
            parent[target] = source
    children: dict[str | None, list[str]] = {}
    for node_id in ids:
        children.setdefault(parent.get(node_id), []).append(node_id)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(node_id: str, depth: int) -> None:
        if node_id in seen:  # a cycle in the edges
            return
        seen.add(node_id)
        lines.append("  " * depth + "- " + markdown.escape(_label(by_id[node_id]), False))
        for child in children.get(node_id, []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    for node_id in ids:  # nodes only reachable through a cycle
        walk(node_id, 0)
    return "\n".join(lines)


def _label(node: dict[str, Any]) -> str:
    for key in ("label", "text", "title", "content", "name"):
        value = node.get(key)
        if isinstance(value, str):
            return " ".join(value.split())
    data = node.get("data")
    return _label(data) if isinstance(data, dict) else ""


__all__ = ["ContentError", "copy_content", "read_markdown", "rich_fields", "write_markdown"]
