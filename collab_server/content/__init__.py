"""Document content: Markdown to and from what editors write (Y.XmlFragment, Y.Text, mind maps).

Pure functions on pycrdt documents, no I/O: the server runs them off the event loop.
"""

from .model import ContentError, copy_content, read_markdown, rich_fields, write_markdown

__all__ = ["ContentError", "copy_content", "read_markdown", "rich_fields", "write_markdown"]
