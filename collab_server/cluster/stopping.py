"""Stopping what talks to Redis (and the app's other clients): every wait bounded.

A shutdown must not hang on Redis: it may be just restarting or frozen, and redis-py's connection
pool takes locks while a cancelled read disconnects. (A test server's stop once hung for 60 s right
after a Redis restart, cause not found; with these bounds Redis cannot be it, and the test harness now
prints every task's stack if it happens again.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

log = logging.getLogger("collab.cluster")

STOP_SECONDS = 2.0


async def cancel_and_reap(tasks: Sequence[asyncio.Task[Any]], timeout: float = STOP_SECONDS) -> None:
    """Cancel `tasks` and wait for them at most `timeout`; what they raised is retrieved, not warned of."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s ended with %r", task.get_name(), task.exception())
    for task in pending:
        log.warning("%s did not stop within %g s; left behind", task.get_name(), timeout)


async def bounded(awaitable: Awaitable[Any], timeout: float = STOP_SECONDS) -> None:
    """Await, giving up silently after `timeout` or on any error (a best effort at shutdown)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(awaitable, timeout)
