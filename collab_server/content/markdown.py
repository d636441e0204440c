"""Markdown (CommonMark + GFM) to and from the document tree.

Serialising follows prosemirror-markdown's conventions (what Tiptap/ProseMirror users get from
their own export), so the server's `content` and the editor's Markdown agree: blank lines
between blocks, `*`/`**` emphasis, fenced code with its language, `\\` hard breaks, escapes only
where Markdown would otherwise read structure. A few escapes go further than prosemirror-markdown
(line starts after a line break, `<` that could open an autolink, entity-like `&`, `1)` list markers, `=`
underlines) so that any text a user typed reads back as the same text. Parsing uses
markdown-it-py, the Python port of the parser prosemirror-markdown itself uses.
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.tasklists import tasklists_plugin

from .tree import TIPTAP, Dialect, Node, Run, Span, detect_dialect, mark_kind, plain

# -- tree -> Markdown ------------------------------------------------------------------------

_ESCAPE = re.compile(r"[`*\\~\[\]_]")
_LINE_START = (
    (re.compile(r"^(\+ |[-*>=])"), r"\\\1"),
    (re.compile(r"^(\s*)(#{1,6})(\s|$)"), r"\1\\\2\3"),
    (re.compile(r"^(\s*\d+)([.)])(\s|$)"), r"\1\\\2\3"),
)
_ANGLE = re.compile(r"<(?=[A-Za-z][A-Za-z0-9+.-]{1,31}:|[^\s<>@]+@)")  # what could read as an autolink
_ENTITY = re.compile(r"&(?=#?\w+;)")
_ALIGN_RULE = {"left": ":---", "center": ":---:", "right": "---:"}
_MARK_RANK = {"link": 0, "strong": 1, "em": 2, "strike": 3}
_DELIMS = {"strong": "**", "em": "*", "strike": "~~"}


def escape(text: str, line_start: bool) -> str:
    def one(m: re.Match[str]) -> str:
        i, ch = m.start(), m.group()
        if ch == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
            return ch
        return "\\" + ch

    out = _ENTITY.sub(r"\\&", _ANGLE.sub(r"\\<", _ESCAPE.sub(one, text)))
    if line_start:
        out = out.lstrip()  # Markdown drops it anyway, and four spaces would start a code block
        for pattern, repl in _LINE_START:
            out = pattern.sub(repl, out, count=1)
    return out


def to_markdown(blocks: list[Node | Span], dialect: Dialect | None = None) -> str:
    """The Markdown of a document's top-level blocks (no trailing newline, like prosemirror-markdown)."""
    return _Writer(dialect or detect_dialect(blocks)).blocks(blocks, tight=False)


class _Writer:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def blocks(self, nodes: list[Node | Span], tight: bool) -> str:
        out: list[str] = []
        previous: Node | None = None
        for node in nodes:
            if isinstance(node, Span):  # text directly in a container: read it as a paragraph
                node = Node("paragraph", {}, [node])
            text = self.block(node)
            if text is None:
                continue
            if previous is not None:
                list_after_text = tight and previous.kind == "paragraph" and _is_list(node)
                same_list = _is_list(node) and node.kind == previous.kind
                out.append("\n\n\n" if same_list else "\n" if list_after_text else "\n\n")
            out.append(text)
            previous = node
        return "".join(out)

    def block(self, node: Node) -> str | None:
        kind = node.kind
        if kind == "paragraph":
            return self.inline(node.children) or None
        if kind == "heading":
            level = min(max(int(plain(node.attrs.get("level", 1)) or 1), 1), 6)
            text = self.inline(node.children, line_start=False)
            if re.search(r"(^|\s)#+$", text):  # would read as the heading's closing sequence
                text = re.sub(r"(#+)$", r"\\\1", text)
            return "#" * level + " " + text
        if kind == "code_block":
            return self.code_block(node)
        if kind == "hr":
            return "---"
        if kind == "blockquote":
            inner = self.blocks(node.children, tight=False)
            return "\n".join("> " + line if line else ">" for line in inner.split("\n"))
        if kind in ("bullet_list", "ordered_list", "task_list"):
            return self.list(node)
        if kind == "table":
            return self.table(node)
        if kind == "image":
            return self.image(node)
        if kind in ("list_item", "task_item", "table_row", "table_cell", "table_header"):  # out of place
            return self.blocks(node.children, tight=False) or None
        return self.unknown(node)

    def unknown(self, node: Node) -> str | None:
        """A node we do not know keeps its text: as a paragraph, or its children as blocks."""
        if any(isinstance(c, Span) for c in node.children) or not node.children:
            return self.inline(node.children) or _label(node) or None
        return self.blocks(node.children, tight=False) or None

    def code_block(self, node: Node) -> str:
        text = node.text()
        fences = re.findall(r"`{3,}", text)
        fence = max(fences, key=len) + "`" if fences else "```"
        language = node.attrs.get(self.dialect.code_language) or node.attrs.get("language") \
            or node.attrs.get("params") or ""
        return f"{fence}{str(language).strip()}\n{text}\n{fence}"

    def list(self, node: Node) -> str:
        tight = bool(node.attrs.get("tight", self.dialect.tight_default))
        items = [c for c in node.children if isinstance(c, Node)]
        if node.kind == "ordered_list":
            start = _int(node.attrs.get(self.dialect.list_start, node.attrs.get("start", node.attrs.get("order"))), 1)
            width = len(str(start + len(items) - 1))
            markers = [str(start + i).rjust(width) + ". " for i in range(len(items))]
            indent = " " * (width + 2)
        elif node.kind == "task_list":
            markers = [f"- [{'x' if item.attrs.get('checked') else ' '}] " for item in items]
            indent = "  "
        else:
            markers = [self.dialect.bullet + " "] * len(items)
            indent = "  "
        rendered = []
        for marker, item in zip(markers, items, strict=True):
            body = self.blocks(item.children, tight)
            lines = body.split("\n")
            rendered.append("\n".join([marker + lines[0], *(indent + ln if ln else "" for ln in lines[1:])]))
        return ("\n" if tight else "\n\n").join(rendered) or self.dialect.bullet + " "

    def table(self, node: Node) -> str | None:
        rows = [[self.cell(c) for c in row.children if isinstance(c, Node)]
                for row in node.children if isinstance(row, Node)]
        rows = [r for r in rows if r]
        if not rows:
            return None
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        first = next(row for row in node.children if isinstance(row, Node))
        aligns = [str(c.attrs.get("align") or "") for c in first.children if isinstance(c, Node)]
        rule = [_ALIGN_RULE.get(a, "---") for a in aligns] + ["---"] * (width - len(aligns))
        lines = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join(rule) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)

    def cell(self, node: Node) -> str:
        parts = [self.inline(b.children, line_start=False) if isinstance(b, Node) else self.inline([b], False)
                 for b in node.children]
        return " ".join(p for p in parts if p).replace("\n", " ").replace("|", "\\|")

    def image(self, node: Node) -> str:
        src = str(node.attrs.get("src") or "")
        title = node.attrs.get("title")
        title_part = ' "' + str(title).replace('"', '\\"') + '"' if title else ""
        return "![" + escape(str(node.attrs.get("alt") or ""), False) + "](" + re.sub(r"[()]", r"\\\g<0>", src) \
            + title_part + ")"

    def inline(self, children: builtins.list[Node | Span], line_start: bool = True) -> str:
        items = _inline_items(children)
        out: list[str] = []
        active: list[tuple[str, Any]] = []
        pending_space = ""
        at_start = line_start
        autolink = False
        for index, (item, marks) in enumerate(items):
            if isinstance(item, Node) and item.kind == "hard_break":
                if any(not (isinstance(i, Node) and i.kind == "hard_break") for i, _ in items[index + 1:]):
                    out.append(pending_space)
                    pending_space = ""
                    out.append("\\\n")
                    at_start = True
                continue
            code = any(k == "code" for k, _ in marks)
            outer = sorted((m for m in marks if m[0] != "code"), key=lambda m: _MARK_RANK.get(m[0], 9))
            # marks already open stay in their order (Markdown closes them innermost first)
            ordered = [m for m in active if m in outer] + [m for m in outer if m not in active]
            keep = 0
            while keep < min(len(active), len(ordered)) and active[keep] == ordered[keep]:
                keep += 1
            text = item.text if isinstance(item, Run) else None
            leading = trailing = ""
            if text is not None and not code:
                if len(ordered) > keep:
                    stripped = _lstrip(text)
                    leading, text = text[: len(text) - len(stripped)], stripped
                if ordered and not _continues(items, index, ordered):
                    stripped = _rstrip(text)
                    trailing, text = text[len(stripped):], stripped
                if not text:  # only whitespace: it goes outside whatever closes next
                    pending_space += leading + trailing
                    continue
            while len(active) > keep:
                out.append(self.close_mark(active.pop(), autolink))
                autolink = False
            out.append(escape(pending_space + leading, False) if (pending_space or leading) else "")
            pending_space = trailing
            while len(active) < len(ordered):
                mark = ordered[len(active)]
                active.append(mark)
                if mark[0] == "link":
                    autolink = _is_autolink(mark, item, items, index, code)
                    if not autolink:
                        _escape_bang(out)
                    out.append("<" if autolink else "[")
                else:
                    out.append(_DELIMS.get(mark[0], ""))
                at_start = False
            if isinstance(item, Node):
                out.append(self.image(item) if item.kind == "image" else escape(_label(item), at_start))
            elif autolink:
                out.append(text or "")
            elif code:
                out.append(_code_span(text or ""))
            else:
                lines = (text or "").split("\n")
                out.append("\n".join(escape(ln, at_start or i > 0) for i, ln in enumerate(lines)))
            at_start = False
        while active:
            out.append(self.close_mark(active.pop(), autolink))
            autolink = False
        out.append(pending_space)
        return "".join(out).strip()

    def close_mark(self, mark: tuple[str, Any], autolink: bool = False) -> str:
        kind, attrs = mark
        if kind != "link":
            return _DELIMS.get(kind, "")
        if autolink:
            return ">"
        attrs = attrs or {}
        href = re.sub(r'[()"]', r"\\\g<0>", str(attrs.get("href") or ""))
        title = attrs.get("title")
        return "](" + href + (' "' + str(title).replace('"', '\\"') + '"' if title else "") + ")"


_AUTOLINK = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*$")


def _is_autolink(mark: tuple[str, Any], item: Run | Node, items: list[Any], index: int, code: bool) -> bool:
    """A link whose text is its URL is written `<url>`, as prosemirror-markdown does."""
    attrs = mark[1] or {}
    if code or attrs.get("title") or not isinstance(item, Run) or item.text != attrs.get("href"):
        return False
    if not _AUTOLINK.match(item.text):
        return False
    following = items[index + 1][1] if index + 1 < len(items) else []
    return mark not in following


def _is_list(node: Node) -> bool:
    return node.kind in ("bullet_list", "ordered_list", "task_list")


def _int(value: Any, default: int) -> int:
    try:
        return int(plain(value))
    except (TypeError, ValueError):
        return default


def _label(node: Node) -> str:
    for key in ("label", "text", "title", "alt", "id"):
        if isinstance(node.attrs.get(key), str) and node.attrs[key]:
            return str(node.attrs[key])
    return node.text()


def _code_span(text: str) -> str:
    ticks = max((len(m) for m in re.findall(r"`+", text)), default=0)
    if not ticks:
        # a span that starts and ends with a space loses one on each side when read back
        pad = " " if len(text) > 1 and text[0] == text[-1] == " " and text.strip() else ""
        return "`" + pad + text + pad + "`"
    fence = "`" * (ticks + 1)
    return fence + " " + text + " " + fence


def _mark_tuple(name: str, attrs: Any) -> tuple[str, Any] | None:
    kind = mark_kind(name)
    if kind is None:
        return None  # a mark Markdown cannot express (underline, highlight, comments ...)
    if kind == "link":
        attrs = attrs if isinstance(attrs, dict) else {}
        return ("link", _Frozen({"href": attrs.get("href"), "title": attrs.get("title")}))
    return (kind, None)


class _Frozen(dict[str, Any]):
    """Link attributes compared by value and usable in `in` tests."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))


def _inline_items(children: list[Node | Span]) -> list[tuple[Run | Node, list[tuple[str, Any]]]]:
    """Runs with the marks Markdown can express; neighbours that end up alike are merged."""
    items: list[tuple[Run | Node, list[tuple[str, Any]]]] = []
    for child in children:
        if not isinstance(child, Span):
            items.append((child, []))
            continue
        for run in child.runs:
            if run.text:
                marks = list(dict.fromkeys(m for m in (_mark_tuple(k, v) for k, v in run.marks.items()) if m))
                items.append((run, marks))
    _drop_unwritable_emphasis(items)
    merged: list[tuple[Run | Node, list[tuple[str, Any]]]] = []
    for item, marks in items:
        last = merged[-1] if merged else None
        if last is not None and isinstance(item, Run) and isinstance(last[0], Run) and set(last[1]) == set(marks):
            merged[-1] = (Run(last[0].text + item.text, {}), last[1])
        else:
            merged.append((item, marks))
    return merged


def _escape_bang(out: list[str]) -> None:
    """A `!` just before a link's `[` would turn the link into an image."""
    for i in range(len(out) - 1, -1, -1):
        if out[i]:
            if out[i].endswith("!") and not out[i].endswith("\\!"):
                out[i] = out[i][:-1] + "\\!"
            return


def _space(ch: str) -> bool:
    """CommonMark's Unicode whitespace (narrower than str.isspace)."""
    return ch in " \t\n\r\x0c" or unicodedata.category(ch) == "Zs"


def _lstrip(text: str) -> str:
    i = 0
    while i < len(text) and _space(text[i]):
        i += 1
    return text[i:]


def _rstrip(text: str) -> str:
    i = len(text)
    while i > 0 and _space(text[i - 1]):
        i -= 1
    return text[:i]


def _punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith(("P", "S"))


def _drop_unwritable_emphasis(items: list[tuple[Run | Node, list[tuple[str, Any]]]]) -> None:
    """CommonMark opens `*`/`**`/`~~` only where the delimiter is left-flanking and closes it
    only where it is right-flanking (`a**:**` is not bold). A mark whose range cannot be
    written so is dropped: the text stays text instead of gaining literal asterisks."""
    def char(i: int, last: bool) -> str:
        item = items[i][0] if 0 <= i < len(items) else None
        if isinstance(item, Run) and item.text:
            return item.text[-1] if last else item.text[0]
        return " " if not isinstance(item, Node) or item.kind == "hard_break" else "x"

    for kind in ("strong", "em", "strike"):
        i = 0
        while i < len(items):
            if not any(m[0] == kind for m in items[i][1]) or not isinstance(items[i][0], Run):
                i += 1
                continue
            j = i
            while j + 1 < len(items) and isinstance(items[j + 1][0], Run) and any(
                m[0] == kind for m in items[j + 1][1]
            ):
                j += 1
            text = "".join(str(getattr(items[k][0], "text", "")) for k in range(i, j + 1))
            core = _rstrip(_lstrip(text))
            ok = bool(core)
            if ok:
                before = " " if _space(text[0]) else char(i - 1, True)
                after = " " if _space(text[-1]) else char(j + 1, False)
                first, last = core[0], core[-1]
                ok = (not _punct(first) or _space(before) or _punct(before)) and (
                    not _punct(last) or _space(after) or _punct(after))
            if not ok:
                for k in range(i, j + 1):
                    items[k] = (items[k][0], [m for m in items[k][1] if m[0] != kind])
            i = j + 1


def _continues(items: list[tuple[Run | Node, list[tuple[str, Any]]]], index: int,
               ordered: list[tuple[str, Any]]) -> bool:
    """Whether the next text (skipping hard breaks) keeps every mark open here."""
    for item, marks in items[index + 1:]:
        if isinstance(item, Node) and item.kind == "hard_break":
            continue
        outer = [m for m in marks if m[0] != "code"]
        return all(m in outer for m in ordered)
    return False


# -- Markdown -> tree ------------------------------------------------------------------------

_PARSER = (
    MarkdownIt("commonmark", {"html": False})
    .enable(["table", "strikethrough"])
    .use(tasklists_plugin)
)


def parse(markdown: str, dialect: Dialect = TIPTAP) -> list[Node]:
    """The blocks a ProseMirror editor with this dialect's schema would hold for `markdown`."""
    return _Builder(dialect).build(_PARSER.parse(markdown))


class _Builder:
    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect

    def build(self, tokens: list[Token]) -> list[Node]:
        root = Node("doc")
        stack = [root]
        for index, tok in enumerate(tokens):
            parent = stack[-1]
            if tok.nesting == 1:
                node = self.open(tok, tokens, index, parent)
                if node is None:  # transparent (thead, tbody)
                    stack.append(parent)
                    continue
                parent.children.append(node)
                stack.append(node)
            elif tok.nesting == -1:
                stack.pop()
            elif tok.type == "inline":
                in_task_item = len(stack) > 1 and stack[-2].kind == "task_item"
                parent.children.extend(self.inline(tok.children or [], in_task_item))
            elif tok.type in ("fence", "code_block"):
                attrs: dict[str, Any] = {}
                info = tok.info.strip() if tok.type == "fence" else ""
                if self.d.code_language == "params":
                    attrs["params"] = info
                elif info:
                    attrs[self.d.code_language] = info
                code = tok.content[:-1] if tok.content.endswith("\n") else tok.content
                parent.children.append(self.node("code_block", attrs, [Span([Run(code, {})])] if code else []))
            elif tok.type == "hr":
                parent.children.append(self.node("hr"))
            elif tok.type == "html_block":  # only with html enabled; keep the text
                parent.children.append(self.node("paragraph", {}, [Span([Run(tok.content.strip(), {})])]))
        return self.finish(root.children)

    def node(self, kind: str, attrs: dict[str, Any] | None = None, children: list[Node | Span] | None = None) -> Node:
        return Node(self.d.node(kind) or kind, attrs or {}, children or [])

    def open(self, tok: Token, tokens: list[Token], index: int, parent: Node | None = None) -> Node | None:
        t = tok.type
        if t == "paragraph_open":
            return self.node("paragraph")
        if t == "heading_open":
            return self.node("heading", {"level": int(tok.tag[1])})
        if t == "blockquote_open":
            return self.node("blockquote")
        if t in ("bullet_list_open", "ordered_list_open"):
            tight = _tight(tokens, index)
            if t == "bullet_list_open" and self.d.node("task_list") and _all_tasks(tokens, index):
                return self.node("task_list")
            attrs: dict[str, Any] = {"tight": tight} if self.d.writes_tight else {}
            if t == "ordered_list_open":
                attrs[self.d.list_start] = int(str(tok.attrs.get("start", 1)))
                return self.node("ordered_list", attrs)
            return self.node("bullet_list", attrs)
        if t == "list_item_open":
            in_task_list = parent is not None and parent.kind == "task_list"
            if "task-list-item" in str(tok.attrs.get("class", "")) and in_task_list:
                inline = tokens[index + 2] if index + 2 < len(tokens) else None
                checked = bool(inline and inline.children and 'checked="checked"' in inline.children[0].content)
                return self.node("task_item", {"checked": checked})
            return self.node("list_item")
        if t == "table_open":
            return self.node("table")
        if t == "tr_open":
            return self.node("table_row")
        if t in ("th_open", "td_open"):
            attrs = {"colspan": 1, "rowspan": 1} if self.d.cell_attrs else {}
            align = re.search(r"text-align:\s*(left|right|center)", str(tok.attrs.get("style", "")))
            if align and self.d.cell_attrs:
                attrs["align"] = align.group(1)
            return self.node("table_header" if t == "th_open" else "table_cell", attrs)
        return None

    def inline(self, tokens: list[Token], in_task_item: bool = False) -> list[Node | Span]:
        out: list[Node | Span] = []
        marks: dict[str, Any] = {}

        def text(value: str, extra: dict[str, Any] | None = None) -> None:
            if not value:
                return
            run_marks = {**marks, **(extra or {})}
            last = out[-1] if out else None
            if isinstance(last, Span) and last.runs[-1].marks == run_marks:
                last.runs[-1].text += value
            elif isinstance(last, Span):
                last.runs.append(Run(value, run_marks))
            else:
                out.append(Span([Run(value, run_marks)]))

        for tok in tokens:
            t = tok.type
            if t == "text":
                text(tok.content)
            elif t == "softbreak":
                text(" ")  # as prosemirror-markdown and Tiptap read a soft line break
            elif t == "hardbreak":
                out.append(self.node("hard_break"))
            elif t == "code_inline":
                if self.d.code_excludes_marks:
                    saved, marks = marks, {}
                    text(tok.content, {self.d.marks["code"]: {}})
                    marks = saved
                else:
                    text(tok.content, {self.d.marks["code"]: {}})
            elif t in ("em_open", "strong_open", "s_open"):
                name = self.d.marks.get({"em_open": "em", "strong_open": "strong", "s_open": "strike"}[t])
                if name:
                    marks[name] = {}
            elif t in ("em_close", "strong_close", "s_close"):
                name = self.d.marks.get({"em_close": "em", "strong_close": "strong", "s_close": "strike"}[t])
                marks.pop(name or "", None)
            elif t == "link_open":
                href = str(tok.attrs.get("href", ""))
                title = tok.attrs.get("title")
                marks[self.d.marks["link"]] = {"href": href, **self.d.link_defaults,
                                               "title": str(title) if title else None}
            elif t == "link_close":
                marks.pop(self.d.marks["link"], None)
            elif t == "image":
                title = tok.attrs.get("title")
                alt = "".join(c.content for c in (tok.children or []) if c.type in ("text", "code_inline"))
                out.append(self.node("image", {"src": str(tok.attrs.get("src", "")), "alt": alt or None,
                                               "title": str(title) if title else None}))
            elif t == "html_inline":
                if "task-list-item-checkbox" not in tok.content:
                    text(tok.content)
                elif not in_task_item:  # a task marker outside a task list stays text
                    text("[x]" if 'checked="checked"' in tok.content else "[ ]")
        if in_task_item and out and isinstance(out[0], Span) and self._after_checkbox(tokens):
            first = out[0].runs[0]
            first.text = first.text[1:] if first.text.startswith(" ") else first.text
            if not first.text:
                out[0].runs.pop(0)
                if not out[0].runs:
                    out.pop(0)
        return out

    @staticmethod
    def _after_checkbox(tokens: list[Token]) -> bool:
        return bool(tokens) and tokens[0].type == "html_inline" and "task-list-item-checkbox" in tokens[0].content

    def finish(self, blocks: list[Node | Span]) -> list[Node]:
        """Schema fixes a ProseMirror editor would otherwise make (or refuse) itself."""
        out: list[Node] = []
        for block in blocks:
            if isinstance(block, Span):
                out.append(self.node("paragraph", {}, [block]))
                continue
            kind = block.kind
            if kind in ("list_item", "task_item", "table_cell", "table_header"):
                block.children = list(self.finish(block.children)) or [self.node("paragraph")]
            elif kind not in ("paragraph", "heading", "code_block"):
                block.children = list(self.finish(block.children))
            if kind == "table" and not self.d.node("table"):  # a schema without tables: rows as paragraphs
                out.extend(self._table_as_paragraphs(block))
            elif kind == "paragraph" and self.d.block_images and any(
                isinstance(c, Node) and c.kind == "image" for c in block.children
            ):
                out.extend(self._lift_images(block))
            else:
                out.append(block)
        return out

    def _lift_images(self, paragraph: Node) -> Iterator[Node]:
        """Tiptap's Image is a block node: a paragraph holding images becomes paragraphs and images."""
        current: list[Node | Span] = []
        for child in [*paragraph.children, None]:
            if child is None or (isinstance(child, Node) and child.kind == "image"):
                _trim(current)
                if current:
                    yield Node(paragraph.type, dict(paragraph.attrs), current)
                current = []
                if child is not None:
                    yield child
            else:
                current.append(child)

    def _table_as_paragraphs(self, table: Node) -> Iterator[Node]:
        for row in table.children:
            if not isinstance(row, Node):
                continue
            spans: list[Node | Span] = []
            for cell in row.children:
                if isinstance(cell, Node):
                    if spans:
                        spans.append(Span([Run(" | ", {})]))
                    for block in cell.children:
                        if isinstance(block, Node):
                            spans.extend(block.children)
            yield self.node("paragraph", {}, spans)


def _trim(inline: list[Node | Span]) -> None:
    """Strip the whitespace a split paragraph is left with at its edges."""
    for end in (0, -1):
        while inline and isinstance(inline[end], Span):
            span = inline[end]
            assert isinstance(span, Span)
            run = span.runs[end]
            run.text = run.text.lstrip() if end == 0 else run.text.rstrip()
            if run.text:
                break
            span.runs.pop(end)
            if not span.runs:
                inline.pop(end)


def _all_tasks(tokens: list[Token], index: int) -> bool:
    """GFM as Tiptap reads it: a bullet list is a task list only when every item is a task."""
    level, items = tokens[index].level + 1, []
    for tok in tokens[index + 1:]:
        if tok.level < level:
            break
        if tok.type == "list_item_open" and tok.level == level:
            items.append(tok)
    return bool(items) and all("task-list-item" in str(t.attrs.get("class", "")) for t in items)


def _tight(tokens: list[Token], index: int) -> bool:
    """markdown-it hides the paragraphs of a tight list."""
    depth = 0
    for tok in tokens[index + 1:]:
        if tok.type == "paragraph_open" and depth <= 2:
            return tok.hidden
        depth += tok.nesting
        if depth < 0:
            break
    return True
