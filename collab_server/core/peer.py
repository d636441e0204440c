"""The transport under one connection, as the core sees it.

Connection and Room only ever call these methods, so the core runs the same over the
WebSocket transport, a future one, or `tests/core`'s in-memory peer.
"""

from __future__ import annotations

from typing import Protocol


class Peer(Protocol):
    @property
    def address(self) -> str | None:
        """The client's address (after trusted proxies), for limits and logs."""
        ...

    def write(self, frame: bytes) -> bool:
        """Write now, without waiting, if the transport can take the frame; False to have it queued."""
        ...

    async def send(self, frame: bytes) -> None:
        """Write, waiting for the transport to accept it (drains a backlog in order)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame and stop reading."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (the peer does not read, so a close cannot complete)."""
        ...
