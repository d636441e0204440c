"""The document tree shared by the Markdown and Y.XmlFragment sides.

A ProseMirror document as y-prosemirror stores it: elements named after node types with their
attributes, and inside text blocks runs of text whose formatting attributes are the marks
(`{"bold": {}}`, `{"link": {"href": ...}}`) plus inline elements (hard breaks, images). One
`Span` stands for one Y.XmlText, so a tree read from Yjs keeps the grouping the edit needs.

Editors name the same thing differently (Tiptap `bulletList`, prosemirror-markdown
`bullet_list`): `kind` maps both to one vocabulary, and a `Dialect` says which names and
attributes to write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Run:
    text: str
    marks: dict[str, Any]  # mark name as stored -> its attributes


@dataclass(slots=True)
class Span:
    """Consecutive text runs: one Y.XmlText."""

    runs: list[Run]

    @property
    def text(self) -> str:
        return "".join(r.text for r in self.runs)


@dataclass(slots=True)
class Node:
    type: str  # the element name as stored
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list[Node | Span] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return KINDS.get(self.type, "unknown")

    def text(self) -> str:
        return "".join(c.text if isinstance(c, Span) else c.text() for c in self.children)


KINDS = {
    "paragraph": "paragraph", "heading": "heading", "blockquote": "blockquote",
    "codeBlock": "code_block", "code_block": "code_block",
    "horizontalRule": "hr", "horizontal_rule": "hr",
    "bulletList": "bullet_list", "bullet_list": "bullet_list",
    "orderedList": "ordered_list", "ordered_list": "ordered_list",
    "listItem": "list_item", "list_item": "list_item",
    "taskList": "task_list", "task_list": "task_list",
    "taskItem": "task_item", "task_item": "task_item",
    "table": "table", "tableRow": "table_row", "table_row": "table_row",
    "tableHeader": "table_header", "table_header": "table_header",
    "tableCell": "table_cell", "table_cell": "table_cell",
    "hardBreak": "hard_break", "hard_break": "hard_break",
    "image": "image",
}
MARK_KINDS = {
    "bold": "strong", "strong": "strong", "italic": "em", "em": "em",
    "strike": "strike", "strikethrough": "strike", "s": "strike",
    "code": "code", "link": "link",
}
TEXTBLOCKS = frozenset({"paragraph", "heading", "code_block"})
INLINE_LEAVES = frozenset({"hard_break", "image"})


def mark_kind(name: str) -> str | None:
    """y-prosemirror stores a mark that may overlap itself as `name--hash`."""
    return MARK_KINDS.get(name.split("--", 1)[0])


def plain(value: Any) -> Any:
    """Yjs numbers are doubles: 1.0 and 1 are the same attribute."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Dialect:
    """Node and mark names, attribute names and serialisation style of one editor schema."""

    name: str
    nodes: dict[str, str]  # kind -> element name
    marks: dict[str, str]  # mark kind -> attribute name
    code_language: str  # attribute holding a code block's language
    list_start: str  # attribute holding an ordered list's first number
    bullet: str  # bullet marker written for bullet lists
    tight_default: bool  # lists without a `tight` attribute
    writes_tight: bool  # the schema has a `tight` attribute on lists
    block_images: bool  # images are block nodes (Tiptap's Image default), not inline
    code_excludes_marks: bool = False  # Tiptap's code mark allows no other mark beside it
    cell_attrs: bool = False  # table cells carry colspan / rowspan / align
    link_defaults: dict[str, Any] = field(default_factory=dict)  # attributes the schema gives every link

    def node(self, kind: str) -> str | None:
        return self.nodes.get(kind)


TIPTAP = Dialect(
    "tiptap",
    nodes={
        "paragraph": "paragraph", "heading": "heading", "blockquote": "blockquote", "code_block": "codeBlock",
        "hr": "horizontalRule", "bullet_list": "bulletList", "ordered_list": "orderedList", "list_item": "listItem",
        "task_list": "taskList", "task_item": "taskItem", "table": "table", "table_row": "tableRow",
        "table_header": "tableHeader", "table_cell": "tableCell", "hard_break": "hardBreak", "image": "image",
    },
    marks={"strong": "bold", "em": "italic", "strike": "strike", "code": "code", "link": "link"},
    code_language="language", list_start="start", bullet="*", tight_default=True, writes_tight=False,
    block_images=True, code_excludes_marks=True, cell_attrs=True,
    link_defaults={"target": "_blank", "rel": "noopener noreferrer nofollow", "class": None},
)
# prosemirror-markdown's schema (what its defaultMarkdownParser builds): no strike, tasks or tables.
PROSEMIRROR = Dialect(
    "prosemirror",
    nodes={
        "paragraph": "paragraph", "heading": "heading", "blockquote": "blockquote", "code_block": "code_block",
        "hr": "horizontal_rule", "bullet_list": "bullet_list", "ordered_list": "ordered_list",
        "list_item": "list_item", "hard_break": "hard_break", "image": "image",
    },
    marks={"strong": "strong", "em": "em", "code": "code", "link": "link"},
    code_language="params", list_start="order", bullet="*", tight_default=False, writes_tight=True,
    block_images=False,
)
_PROSEMIRROR_ONLY = frozenset({"code_block", "horizontal_rule", "bullet_list", "ordered_list", "list_item",
                               "hard_break"})


def detect_dialect(blocks: list[Node | Span]) -> Dialect:
    """prosemirror-markdown's snake_case names mean its schema; anything else is written as Tiptap."""
    stack = list(blocks)
    while stack:
        node = stack.pop()
        if isinstance(node, Node):
            if node.type in _PROSEMIRROR_ONLY:
                return PROSEMIRROR
            stack.extend(node.children)
    return TIPTAP
