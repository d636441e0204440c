"""The document tree in a Y.XmlFragment, as y-prosemirror (Tiptap's Collaboration) lays it out.

Reading is lossless (every element name, attribute and mark). Writing is a minimal edit: the
new tree is compared with what the fragment holds, block by block and then character by
character inside changed text blocks, and only the differences become Yjs operations. Blocks
that did not change keep their Yjs items, so other editors' cursors (relative positions into
those items) and concurrent edits elsewhere survive.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from typing import Any, cast

import orjson
from pycrdt import XmlElement, XmlFragment, XmlText

from .text import CHAR_DIFF_LIMIT
from .tree import TEXTBLOCKS, Node, Run, Span, mark_kind, plain

# Attributes a Markdown source carries, per kind: a Markdown write compares and sets only these,
# so attributes Markdown cannot express (a link's target, a cell's colwidth) are left alone.
SIGNIFICANT = {
    "heading": ("level",), "code_block": ("language", "params"), "ordered_list": ("start", "order"),
    "task_item": ("checked",), "image": ("src", "alt", "title"),
}
Container = XmlFragment | XmlElement


def read(fragment: Container) -> list[Node | Span]:
    return [_read(child) for child in fragment.children]


def _read(item: XmlElement | XmlText | XmlFragment) -> Node | Span:
    if isinstance(item, XmlText):
        return Span([Run(text, dict(attrs or {})) for text, attrs in item.diff() if isinstance(text, str)])
    if isinstance(item, XmlFragment):  # not a child of an element in practice; read as its children
        return Node("", {}, [_read(c) for c in item.children])
    attrs = dict(cast("Iterable[tuple[str, Any]]", item.attributes))  # pycrdt types __iter__ as Iterable
    return Node(item.tag or "", plain(attrs), [_read(c) for c in item.children])


# -- comparing ------------------------------------------------------------------------------


def _attrs(node: Node, full: bool) -> dict[str, Any]:
    if full:
        return {k: plain(v) for k, v in node.attrs.items() if v is not None}
    keys = SIGNIFICANT.get(node.kind, ())
    return {k: plain(node.attrs[k]) for k in keys if node.attrs.get(k) not in (None, "")}


def _marks(marks: dict[str, Any], full: bool) -> Any:
    if full:
        return sorted((k, orjson.dumps(plain(v), option=orjson.OPT_SORT_KEYS).decode()) for k, v in marks.items())
    out: list[tuple[str, ...]] = []
    for name, value in marks.items():
        kind = mark_kind(name)
        if kind == "link":
            value = value if isinstance(value, dict) else {}
            out.append((kind, str(value.get("href") or ""), str(value.get("title") or "")))
        elif kind is not None:
            out.append((kind,))
    return sorted(out)


def _shape(node: Node, full: bool) -> Any:
    """What a node is, without its content: equal shapes are edited in place."""
    return (node.type if full else node.kind, orjson.dumps(_attrs(node, full), option=orjson.OPT_SORT_KEYS).decode())


def _key(item: Node | Span, full: bool) -> bytes:
    return orjson.dumps(_plain_tree(item, full))


def _plain_tree(item: Node | Span, full: bool) -> Any:
    if isinstance(item, Span):
        return [[r.text, _marks(r.marks, full)] for r in item.runs if r.text]
    return [_shape(item, full)[0], _attrs(item, full), [_plain_tree(c, full) for c in item.children]]


# -- writing --------------------------------------------------------------------------------


def replace(fragment: XmlFragment, blocks: list[Node], *, full: bool = False) -> None:
    """Make `fragment` hold `blocks` with as few Yjs operations as possible. Call inside a
    transaction. `full` compares every attribute and mark (a version restore); otherwise only
    what Markdown expresses (a Markdown write), leaving the rest of existing content alone."""
    _edit_children(fragment, read(fragment), list(blocks), full)


def _edit_children(parent: Container, old: list[Node | Span], new: list[Node | Span], full: bool) -> None:
    old_keys, new_keys = [_key(o, full) for o in old], [_key(n, full) for n in new]
    head = 0
    while head < min(len(old_keys), len(new_keys)) and old_keys[head] == new_keys[head]:
        head += 1
    tail = 0
    while tail < min(len(old_keys), len(new_keys)) - head and old_keys[-1 - tail] == new_keys[-1 - tail]:
        tail += 1
    matcher = SequenceMatcher(None, old_keys[head:len(old_keys) - tail], new_keys[head:len(new_keys) - tail],
                              autojunk=len(new_keys) > 200)  # repeated blocks (empty paragraphs) stay linear
    opcodes = [(tag, i1 + head, i2 + head, j1 + head, j2 + head) for tag, i1, i2, j1, j2 in matcher.get_opcodes()]
    for tag, i1, i2, j1, j2 in reversed(opcodes):  # from the end, so earlier indexes stay valid
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(i2 - i1 - 1, paired - 1, -1):  # surplus old items
            del parent.children[i1 + k]
        for k in range(j2 - j1 - 1, paired - 1, -1):  # surplus new items
            insert(parent, i1 + paired, new[j1 + k])
        for k in range(paired - 1, -1, -1):
            _edit_one(parent, i1 + k, old[i1 + k], new[j1 + k], full)


def _edit_one(parent: Container, index: int, old: Node | Span, new: Node | Span, full: bool) -> None:
    live = parent.children[index]
    if isinstance(old, Span) and isinstance(new, Span) and isinstance(live, XmlText):
        _edit_text(live, old, new, full)
        return
    if not (isinstance(old, Node) and isinstance(new, Node) and isinstance(live, XmlElement)) or _shape(
        old, full
    ) != _shape(new, full):
        del parent.children[index]
        insert(parent, index, new)
        return
    for key, value in _attrs(new, full).items():
        if plain(old.attrs.get(key)) != value:
            live.attributes[key] = value
    if old.kind in TEXTBLOCKS and not _same_inline_layout(old, new, full):
        _clear(live)
        _fill(live, new.children)
        return
    _edit_children(live, old.children, new.children, full)


def _same_inline_layout(old: Node, new: Node, full: bool) -> bool:
    """Text blocks edit text in place when their text / inline-node layout matches."""
    def layout(node: Node) -> list[Any]:
        return ["text" if isinstance(c, Span) else _key(c, full) for c in node.children]

    return layout(old) == layout(new)


def _clear(element: XmlElement) -> None:
    for i in range(len(list(element.children)) - 1, -1, -1):
        del element.children[i]


def _edit_text(live: XmlText, old: Span, new: Span, full: bool) -> None:
    """Character diff of one Y.XmlText; formatting changes are a delete and re-insert."""
    old_chars = [(ch, _marks_key(r.marks, full)) for r in old.runs for ch in r.text]
    new_chars: list[tuple[str, Any]] = []
    new_attrs: list[dict[str, Any]] = []
    for run in new.runs:
        key = _marks_key(run.marks, full)
        for ch in run.text:
            new_chars.append((ch, key))
            new_attrs.append(run.marks)
    if old_chars == new_chars:
        return
    byte_at = [0, *itertools.accumulate(len(ch.encode()) for ch, _ in old_chars)]  # pycrdt indexes by UTF-8 bytes
    if len(old_chars) * len(new_chars) > CHAR_DIFF_LIMIT:
        ops: Sequence[tuple[str, int, int, int, int]] = [("replace", 0, len(old_chars), 0, len(new_chars))]
    else:
        ops = SequenceMatcher(None, old_chars, new_chars, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag == "equal":
            continue
        if i2 > i1:
            del live[byte_at[i1]:byte_at[i2]]
        at = byte_at[i1]
        for text, attrs in reversed(_group(new_chars[j1:j2], new_attrs[j1:j2])):
            live.insert(at, text, _mark_attrs(attrs))


def _marks_key(marks: dict[str, Any], full: bool) -> bytes:
    return orjson.dumps(_marks(marks, full))


def _group(chars: list[tuple[str, Any]], attrs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for (ch, _), a in zip(chars, attrs, strict=True):
        if out and out[-1][1] is a:
            out[-1] = (out[-1][0] + ch, a)
        else:
            out.append((ch, a))
    return out


def _mark_attrs(marks: dict[str, Any]) -> dict[str, Any] | None:
    """Mark attributes as y-prosemirror writes them: the mark's attribute object (`{}` for none)."""
    return dict(marks) if marks else None


def insert(parent: Container, index: int, item: Node | Span) -> None:
    """Insert a new subtree: the element first (integrated), then its content."""
    if isinstance(item, Span):
        text = parent.children.insert(index, XmlText())
        _fill_text(text, item)
        return
    element = parent.children.insert(index, XmlElement(item.type, _element_attrs(item)))
    _fill(element, item.children)


def _element_attrs(node: Node) -> dict[str, Any]:
    return {k: v for k, v in node.attrs.items() if v is not None}


def _fill(element: XmlElement, children: list[Node | Span]) -> None:
    """Content of an element that is new or was just emptied."""
    for index, child in enumerate(children):
        insert(element, index, child)


def _fill_text(text: XmlText, span: Span) -> None:
    at = 0
    for run in span.runs:
        if run.text:
            text.insert(at, run.text, _mark_attrs(run.marks))
            at += len(run.text.encode())
