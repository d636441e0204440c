"""A stateless hook for the tests (COLLAB_STATELESS_HOOK=tests.stateless_hook:record)."""

from __future__ import annotations

from collab_server.core.extension import StatelessEvent

received: list[StatelessEvent] = []


def record(event: StatelessEvent) -> None:
    received.append(event)


def keep_secrets(event: StatelessEvent) -> bool:
    """Records, and refuses to relay anything starting with "secret"."""
    received.append(event)
    return not event.payload.startswith("secret")
