"""Plain-text diffs: the minimal edit of a Y.Text, and how much a change added and removed."""

from __future__ import annotations

import itertools
from difflib import SequenceMatcher

from pycrdt import Text

CHAR_DIFF_LIMIT = 4_000_000  # len(a) * len(b) above which a changed block is replaced whole


def text_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) in character offsets of `old`, ascending: a line diff, refined
    to characters inside changed blocks that are small enough, so concurrent edits elsewhere in
    the text survive a rewrite instead of being overwritten by one big replacement."""
    # The common head and tail first: linear, and usually all there is (one place edited).
    head = 0
    limit = min(len(old), len(new))
    while head < limit and old[head] == new[head]:
        head += 1
    head = old.rfind("\n", 0, head) + 1  # back to a line start, so the line diff sees whole lines
    tail = 0
    while tail < limit - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_mid, new_mid = old[head:len(old) - tail], new[head:len(new) - tail]
    return [(head + s, head + e, r) for s, e, r in _line_edits(old_mid, new_mid)]


def _line_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    a_lines, b_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    offsets = [0, *itertools.accumulate(len(line) for line in a_lines)]
    edits: list[tuple[int, int, str]] = []
    # autojunk (on for long texts) keeps repeated lines such as blank ones from making this quadratic
    matcher = SequenceMatcher(None, a_lines, b_lines, autojunk=len(b_lines) > 200)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        start, end, replacement = offsets[i1], offsets[i2], "".join(b_lines[j1:j2])
        segment = old[start:end]
        if tag == "replace" and len(segment) * len(replacement) <= CHAR_DIFF_LIMIT:
            matcher = SequenceMatcher(None, segment, replacement, autojunk=False)
            edits += [(start + k1, start + k2, replacement[l1:l2])
                      for op, k1, k2, l1, l2 in matcher.get_opcodes() if op != "equal"]
        else:
            edits.append((start, end, replacement))
    return edits


def change_size(old: str, new: str) -> tuple[int, int]:
    """(characters added, characters removed) between two versions of a text."""
    if old == new:
        return 0, 0
    edits = text_edits(old, new)
    return sum(len(r) for _, _, r in edits), sum(end - start for start, end, _ in edits)


def rewrite_text(text: Text, new: str) -> None:
    old = str(text)
    # pycrdt indexes Y.Text by UTF-8 byte offset.
    byte_at = [0, *itertools.accumulate(len(ch.encode()) for ch in old)]
    for start, end, replacement in reversed(text_edits(old, new)):
        if end > start:
            del text[byte_at[start]:byte_at[end]]
        if replacement:
            text.insert(byte_at[start], replacement)
