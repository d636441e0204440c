"""Text PostgreSQL can store: `text` columns refuse NUL.

The CRDT state keeps the client's bytes; what is derived from it for `content`, versions and
search replaces each NUL with U+FFFD (the replacement character), so the text keeps its length
and a reader can see that something was there.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def storable_text(text: str) -> str:
    return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
