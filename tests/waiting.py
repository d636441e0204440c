"""The one way tests wait: poll a condition until it holds, or fail saying what never happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    probe: Callable[[], Any | Awaitable[Any]],
    check: Callable[[Any], bool] = bool,
    *,
    timeout: float = 5.0,
    step: float = 0.02,
    what: str = "condition",
    strict: bool = True,
) -> Any:
    """Call `probe` (sync or async) until `check(result)` holds; return that result, or raise
    AssertionError after `timeout` seconds naming `what` and the last result. With
    `strict=False` the last result is returned instead (for a test that collects failures)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if check(last):
            return last
        if time.monotonic() >= deadline:
            if not strict:
                return last
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(step)
