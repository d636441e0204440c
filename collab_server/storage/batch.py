"""Lookups asked for in the same moment go to the database as one statement.

A restart's reconnect storm opens thousands of rooms at once, and each room's load was a pool
acquire, a statement and a release: on one core beside PostgreSQL, the per-statement work (ours
and the server's) was most of a cold room's cost. Here every key asked for in one loop turn
joins one batch; at most `concurrency` batches are in flight, and what arrives meanwhile waits
for the next one (as the write-ahead's group commit does), so a storm becomes a few statements.
One room opened on its own still costs exactly one statement, sent in the same loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchedLookup(Generic[K, V]):
    """`await get(key)` → the value `fetch` returns for it (None when it has none)."""

    def __init__(
        self, fetch: Callable[[Sequence[K]], Awaitable[dict[K, V]]], *, concurrency: int = 2, max_batch: int = 256
    ) -> None:
        self._fetch = fetch
        self.concurrency = concurrency
        self.max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # fetches sent (`DocumentStore.load_statements`, which the tests read)

    async def get(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._waiting and not self._scheduled and self._inflight < self.concurrency:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)  # the rest of this turn joins the batch

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._waiting or self._inflight >= self.concurrency:
            return
        keys = list(self._waiting)[: self.max_batch]
        batch = {key: self._waiting.pop(key) for key in keys}
        self._inflight += 1
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._run(batch), name="batched-lookup")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._kick()  # more than max_batch waiting: the next batch goes too, if a slot is free

    async def _run(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self._fetch(list(batch))
        except BaseException as exc:  # every waiter of the batch hears it, as its own statement would
            for futures in batch.values():
                for future in futures:
                    if future.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                        future.exception()  # a waiter cancelled meanwhile must not warn "never retrieved"
            if not isinstance(exc, Exception):
                raise
        else:
            for key, futures in batch.items():
                value = found.get(key)
                for future in futures:
                    if not future.done():
                        future.set_result(value)
        finally:
            self._inflight -= 1
            self._kick()
