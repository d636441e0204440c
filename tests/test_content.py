"""The content model: Markdown <-> Y.XmlFragment (Tiptap and prosemirror-markdown names), Y.Text,
mind-map outlines, and Markdown writes as minimal CRDT edits. Pure: no server, no database."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Text, XmlElement, XmlFragment, XmlText

from collab_server.content import copy_content, read_markdown, write_markdown, yxml
from collab_server.content import markdown as md
from collab_server.content.tree import PROSEMIRROR, TIPTAP, Node, Run, Span
from collab_server.storage import ydoc

# Markdown in the serialiser's own form: each must come back byte for byte after
# Markdown -> tree -> Y.XmlFragment -> tree -> Markdown.
CORPUS = [
    "# One\n\n## Two\n\n### Three\n\n#### Four\n\n##### Five\n\n###### Six",
    "A paragraph.\n\nAnother one.",
    "first line\\\nsecond line",
    "**bold** *italic* ~~strike~~ `code` ***both***",
    "**bold *nested* bold** and *italic **nested***",
    "a `` code with ` tick `` b",
    "[a link](https://example.com) and [titled](https://example.com/x \"The title\")",
    "<https://example.com/plain>",
    "![alt text](https://example.com/a.png \"img title\")",
    "* one\n* two\n  * nested\n  * nested two\n* three",
    "1. first\n2. second\n   1. inner\n3. third",
    " 9. nine\n10. ten",
    "- [ ] todo\n- [x] done\n  - [ ] nested todo",
    "> quoted\n>\n> * a list\n> * in a quote\n>\n> > nested quote",
    "```python\nprint(\"hi\")\n\nx = 1\n```",
    "````\ncode with ``` fence\n````",
    "```\n\n```",
    "before\n\n---\n\nafter",
    "| a | b |\n| --- | --- |\n| *x* | `y` |\n| pipe \\| here | z |",
    "\\*not bold\\* and \\_not italic\\_ and snake_case_word",
    "\\# not a heading",
    "1\\. not a list",
    "\\- not a bullet",
    "\\> not a quote",
    "\\[not a link\\](really)",
    "back\\\\slash and \\`tick\\`",
    "<b>not html</b> and \\&amp; kept, \\<https://not.a/link> \\<me@not.mail>",
    "* item one\n\n  second paragraph of item one\n* item two",
]


def fragment_doc(blocks: list[Node]) -> Doc:
    doc = Doc()
    with doc.transaction():
        yxml.replace(doc.get("default", type=XmlFragment), blocks)
    return doc


@pytest.mark.parametrize("source", CORPUS)
def test_corpus_round_trips_through_the_fragment(source: str) -> None:
    assert md.to_markdown(md.parse(source)) == source
    doc = fragment_doc(md.parse(source))
    assert read_markdown(doc, "markdown") == source
    again = Doc()
    again.apply_update(doc.get_update())
    assert read_markdown(again, "markdown") == source


def test_tiptap_structure_as_y_prosemirror_writes_it() -> None:
    doc = fragment_doc(md.parse("# Title\n\nSome **bold** [link](https://x.org)\\\nnext\n\n- [x] done\n\n"
                                "```js\nlet a\n```\n\n![pic](p.png)"))
    fragment = doc.get("default", type=XmlFragment)
    names = [child.tag for child in fragment.children]
    assert names == ["heading", "paragraph", "taskList", "codeBlock", "image"]  # Tiptap's Image is a block
    heading, paragraph, tasks, code, image = fragment.children
    assert heading.attributes.get("level") == 1
    text = next(iter(paragraph.children))
    assert isinstance(text, XmlText)
    assert text.diff() == [("Some ", None), ("bold", {"bold": {}}), (" ", None),
                           ("link", {"link": {"href": "https://x.org", "target": "_blank", "title": None,
                                              "rel": "noopener noreferrer nofollow", "class": None}})]
    assert [c.tag for c in paragraph.children if isinstance(c, XmlElement)] == ["hardBreak"]
    assert next(iter(tasks.children)).attributes.get("checked") is True
    assert code.attributes.get("language") == "js"
    assert image.attributes.get("src") == "p.png"


def test_prosemirror_markdown_names_are_read_and_kept() -> None:
    blocks = md.parse("* a\n* b\n\n1. x\n\n```sh\nls\n```\n\nline\\\nbreak", PROSEMIRROR)
    assert [b.type for b in blocks] == ["bullet_list", "ordered_list", "code_block", "paragraph"]
    assert blocks[0].attrs == {"tight": True} and blocks[1].attrs == {"tight": True, "order": 1}
    assert blocks[2].attrs == {"params": "sh"}
    doc = fragment_doc(blocks)
    assert read_markdown(doc, "markdown") == "* a\n* b\n\n1. x\n\n```sh\nls\n```\n\nline\\\nbreak"
    # A Markdown write into a prosemirror-markdown document keeps its dialect.
    with doc.transaction():
        write_markdown(doc, "* a\n* b\n* c", "markdown")
    assert [c.tag for c in doc.get("default", type=XmlFragment).children] == ["bullet_list"]


def test_unknown_nodes_keep_their_text_and_unknown_marks_are_ignored() -> None:
    blocks: list[Node | Span] = [
        Node("callout", {"kind": "info"}, [Node("paragraph", {}, [Span([Run("inside a callout", {})])])]),
        Node("paragraph", {}, [Span([Run("under", {"underline": {}}), Run("lined", {"highlight": {"color": "y"}})]),
                               Node("mention", {"id": "u1", "label": "Ada"})]),
        Node("details", {}, [Span([Run("inline content", {"bold": {}})])]),
    ]
    assert md.to_markdown(blocks) == "inside a callout\n\nunderlinedAda\n\n**inline content**"


def test_marks_with_surrounding_whitespace_and_hard_breaks_stay_valid() -> None:
    para = Node("paragraph", {}, [Span([Run("a", {}), Run(" bold ", {"bold": {}}), Run("b", {})]),
                                  Node("hardBreak"), Node("hardBreak")])
    assert md.to_markdown([para]) == "a **bold** b"


def test_y_text_documents_are_their_own_markdown_and_the_fragment_wins() -> None:
    doc = Doc()
    doc.get("content", type=Text).insert(0, "# raw *source*\n")
    assert read_markdown(doc, "markdown") == "# raw *source*\n"
    with doc.transaction():
        write_markdown(doc, "# raw *source*\nmore\n", "markdown")
    assert str(doc.get("content", type=Text)) == "# raw *source*\nmore\n"  # stays a Y.Text, verbatim
    with doc.transaction():
        yxml.replace(doc.get("default", type=XmlFragment), md.parse("rich"))
    assert read_markdown(doc, "markdown") == "rich"
    for field in ("prosemirror", "document-store"):
        other = fragment_doc([])
        with other.transaction():
            yxml.replace(other.get(field, type=XmlFragment), md.parse("from " + field))
        assert read_markdown(other, "presentation") == "from " + field


def test_empty_document_gets_the_structure_of_its_editor_mode() -> None:
    rich, source = Doc(), Doc()
    with rich.transaction():
        write_markdown(rich, "# Hi", "markdown", editor_mode="wysiwyg")
    with source.transaction():
        write_markdown(source, "# Hi", "markdown", editor_mode="source")
    assert str(rich.get("default", type=XmlFragment)) == '<heading level="1">Hi</heading>'
    assert str(source.get("content", type=Text)) == "# Hi"


def test_presentation_slides_are_separated_by_rules() -> None:
    doc = Doc()
    with doc.transaction():
        write_markdown(doc, "# Slide 1\n\n---\n\n# Slide 2", "presentation")
    assert [c.tag for c in doc.get("default", type=XmlFragment).children] == ["heading", "horizontalRule", "heading"]
    assert read_markdown(doc, "presentation").split("\n\n---\n\n") == ["# Slide 1", "# Slide 2"]


def test_mindmap_outline_follows_edges_and_parents() -> None:
    doc = Doc()
    doc.get("nodes", type=Array).extend([
        {"id": "r", "label": "Root"}, {"id": "a", "label": "Alpha *star*"}, {"id": "b", "data": {"label": "Beta"}},
        {"id": "c", "text": "Gamma", "parentId": "a"}, {"id": "x", "label": "Loop1"}, {"id": "y", "label": "Loop2"},
    ])
    doc.get("edges", type=Array).extend([{"source": "r", "target": "a"}, {"source": "r", "target": "b"},
                                         {"source": "x", "target": "y"}, {"source": "y", "target": "x"}])
    assert read_markdown(doc, "mindmap") == (
        "- Root\n  - Alpha \\*star\\*\n    - Gamma\n  - Beta\n- Loop1\n  - Loop2")
    with pytest.raises(ValueError, match="mind map"):
        write_markdown(doc, "- x", "mindmap")


def test_nul_characters_become_replacement_characters_in_content() -> None:
    doc = fragment_doc(md.parse("x"))
    with doc.transaction():
        para = next(iter(doc.get("default", type=XmlFragment).children))
        next(iter(para.children)).insert(1, "A\x00B")
    result = ydoc.compact(None, [doc.get_update()], "markdown", "")
    assert result.content == "xA\ufffdB" and result.chars_added == 4


# -- minimal edits ----------------------------------------------------------------------------


def replica(doc: Doc) -> Doc:
    other = Doc()
    other.apply_update(doc.get_update())
    return other


def test_markdown_write_is_a_minimal_edit_that_merges_with_concurrent_typing() -> None:
    server = fragment_doc(md.parse("# Title\n\nfirst paragraph\n\nsecond paragraph\n\n- a\n- b"))
    editor = replica(server)
    # The editor types at the end of "second paragraph" ...
    second = list(editor.get("default", type=XmlFragment).children)[2]
    next(iter(second.children)).insert(len("second paragraph"), " typed live")
    # ... while a Markdown write changes only the first paragraph and adds a list item.
    before = server.get_state()
    with server.transaction():
        write_markdown(server, "# Title\n\nfirst **changed** paragraph\n\nsecond paragraph\n\n- a\n- b\n- c",
                       "markdown")
    edit = server.get_update(before)
    assert len(edit) < 200, "the edit rewrote more than it changed"
    editor.apply_update(edit)
    server.apply_update(editor.get_update(server.get_state()))
    expected = "# Title\n\nfirst **changed** paragraph\n\nsecond paragraph typed live\n\n* a\n* b\n* c"
    assert read_markdown(editor, "markdown") == read_markdown(server, "markdown") == expected


def test_unchanged_text_keeps_formatting_markdown_cannot_express() -> None:
    doc = Doc()
    fragment = doc.get("default", type=XmlFragment)
    with doc.transaction():
        para = fragment.children.append(XmlElement("paragraph"))
        text = para.children.append(XmlText())
        text.insert(0, "underlined", {"underline": {}})
        text.insert(len("underlined"), " plain")
    with doc.transaction():
        write_markdown(doc, "underlined plain and more", "markdown")
    assert next(iter(next(iter(fragment.children)).children)).diff() == [
        ("underlined", {"underline": {}}), (" plain and more", None)]


def test_restore_copies_every_attribute_and_mark() -> None:
    version = Doc()
    fragment = version.get("default", type=XmlFragment)
    with version.transaction():
        para = fragment.children.append(XmlElement("paragraph", {"textAlign": "center"}))
        para.children.append(XmlText()).insert(0, "colour", {"textStyle": {"color": "red"}})
    live = fragment_doc(md.parse("something else\n\nentirely"))
    with live.transaction():
        copy_content(live, version, "markdown")
    assert str(live.get("default", type=XmlFragment)) == str(fragment)


# -- properties -------------------------------------------------------------------------------

# One mark per run: where two emphasis marks start or end together next to punctuation
# (`***0****:*`), CommonMark's flanking rules can leave delimiters as text; prosemirror-markdown
# has the same limitation (README, content model).
MARKS = st.sampled_from([{}, {"bold": {}}, {"italic": {}}, {"code": {}}, {"strike": {}},
                         {"link": {"href": "https://e.com/x"}}])
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("*_`~[]#>-+!<&|\\ 1.)=\n"),
               min_size=1, max_size=30)


def words(text: str) -> list[str]:
    return re.sub(r"\s+", " ", text).strip().split(" ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXT, MARKS), min_size=1, max_size=6))
def test_any_text_survives_markdown_as_text(runs: list[tuple[str, dict]]) -> None:
    """Whatever a user typed, with whatever marks, reads back as the same words."""
    paragraph = Node("paragraph", {}, [Span([Run(text, marks) for text, marks in runs])])
    out = md.to_markdown([paragraph])
    back = md.parse(out)
    typed = "".join(t for t, _ in runs)
    read = " ".join(b.text() for b in back)
    assert words(read) == words(typed), out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8) | st.sampled_from(
    ["\n", "\n\n", "# ", "- ", "1. ", "> ", "```", "**", "*", "_", "`", "[x](y)", "![a](b)", "| a |\n| - |",
     "- [ ] ", "---", "\\", "    "]), max_size=30).map("".join))
def test_any_markdown_converts_without_raising_and_settles(source: str) -> None:
    """Parsing never raises, the fragment holds what the tree holds, and serialising is stable:
    the Markdown of the Markdown is the Markdown."""
    first = md.to_markdown(md.parse(source))
    assert md.to_markdown(md.parse(first)) == first
    doc = fragment_doc(md.parse(source))
    assert read_markdown(doc, "markdown") == first


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=4), st.lists(st.sampled_from(CORPUS), max_size=4))
def test_markdown_writes_reach_exactly_the_target(before: list[str], after: list[str]) -> None:
    doc = fragment_doc(md.parse("\n\n".join(before)))
    target = "\n\n".join(after)
    with doc.transaction():
        write_markdown(doc, target, "markdown")
    assert read_markdown(doc, "markdown") == md.to_markdown(md.parse(target, TIPTAP))


def test_gfm_without_a_schema_for_it_keeps_the_text() -> None:
    """prosemirror-markdown's schema has no tables, task items or strike: their text stays."""
    blocks = md.parse("| a | b |\n| --- | --- |\n| 1 | 2 |\n\n- [x] done\n- [ ] todo\n\n~~gone~~ here", PROSEMIRROR)
    assert md.to_markdown(blocks, PROSEMIRROR) == "a | b\n\n1 | 2\n\n* \\[x\\] done\n* \\[ \\] todo\n\ngone here"
    # A Tiptap task marker in an ordered list, or in a list that mixes tasks and plain items, is text too.
    assert md.to_markdown(md.parse("- [ ] task\n- plain\n\n1. [x] numbered")) == (
        "* \\[ \\] task\n* plain\n\n1. \\[x\\] numbered")


def test_offline_copies_are_read_and_edited_as_markdown() -> None:
    import base64

    from collab_server.client import ApiClient, OfflineSync

    state = base64.b64encode(fragment_doc(md.parse("# Notes\n\nfirst")).get_update()).decode()
    sync = OfflineSync.from_json(ApiClient("http://127.0.0.1:9"),
                                 {"workspace_id": "w", "cursor": "0", "documents": {"d": state}})
    assert sync.markdown("d") == "# Notes\n\nfirst" and not sync.dirty
    sync.set_markdown("d", "# Notes\n\nfirst\n\nsecond")
    assert sync.markdown("d") == "# Notes\n\nfirst\n\nsecond" and sync.dirty == {"d"}
    assert [c.tag for c in sync.doc("d").get("default", type=XmlFragment).children] == [
        "heading", "paragraph", "paragraph"]
