"""CPU-heavy pure work (merging states, converting content) away from the event loop.

A worker thread would still hold the GIL while Python code converts a large rich-text
document, stalling every relay on the loop for that long; a worker process does not. The
functions run there take and return bytes and plain values only. `processes = 0` runs them in
a thread instead (tools and tests that want no child process).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")


def _background() -> None:
    """Workers yield the CPU to the event loop when they share a core with it."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)


class OffLoop:
    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that runs an event loop and threads is not safe.
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_background
            )
        return self._pool

    async def start(self, warm_up: Callable[[], Any]) -> None:
        """Start the workers now (and import what they run) rather than on the first compaction."""
        await self.run(warm_up)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.processes <= 0:
            return await asyncio.to_thread(fn, *args)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool:  # a worker died (OOM killer, kill -9): start a new pool, once
            self.close()
            return await loop.run_in_executor(self._executor(), fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
