"""BatchedLookup: keys asked for in one moment share a fetch; errors and cancellations stay per waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from collab_server.storage.batch import BatchedLookup


class Source:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()
        self.inflight = self.most_inflight = 0

    async def fetch(self, keys: Sequence[int]) -> dict[int, str]:
        self.calls.append(list(keys))
        self.inflight += 1
        self.most_inflight = max(self.most_inflight, self.inflight)
        try:
            await self.gate.wait()
            if self.fail:
                raise ConnectionError("database gone")
            return {k: f"v{k}" for k in keys if k % 10}  # multiples of ten do not exist
        finally:
            self.inflight -= 1


async def test_one_moments_keys_share_one_fetch_and_each_gets_its_own_value() -> None:
    source = Source()
    lookup = BatchedLookup(source.fetch)
    values = await asyncio.gather(*(lookup.get(k) for k in [1, 2, 3, 10, 2]))
    assert values == ["v1", "v2", "v3", None, "v2"]
    assert source.calls == [[1, 2, 3, 10]] and lookup.batches == 1
    assert await lookup.get(7) == "v7" and source.calls[-1] == [7]  # alone: at once, on its own


async def test_at_most_concurrency_fetches_run_and_what_waits_goes_in_the_next() -> None:
    source = Source()
    source.gate.clear()
    lookup = BatchedLookup(source.fetch, concurrency=2, max_batch=3)
    first = [asyncio.ensure_future(lookup.get(k)) for k in range(1, 8)]  # 7 keys: batches of 3, 3, then 1
    await asyncio.sleep(0.01)
    assert source.calls == [[1, 2, 3], [4, 5, 6]] and source.inflight == 2
    late = [asyncio.ensure_future(lookup.get(k)) for k in (8, 9)]
    await asyncio.sleep(0.01)
    assert len(source.calls) == 2  # nothing more while two are in flight
    source.gate.set()
    assert await asyncio.gather(*first, *late) == [f"v{k}" for k in range(1, 10)]
    assert source.most_inflight == 2
    assert sorted(k for call in source.calls[2:] for k in call) == [7, 8, 9]


async def test_a_failed_fetch_fails_every_waiter_of_its_batch_and_the_next_one_tries_again() -> None:
    source = Source(fail=True)
    lookup = BatchedLookup(source.fetch)
    results = await asyncio.gather(lookup.get(1), lookup.get(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    source.fail = False
    assert await lookup.get(1) == "v1"


async def test_a_cancelled_waiter_leaves_the_others_their_values() -> None:
    source = Source()
    source.gate.clear()
    lookup = BatchedLookup(source.fetch)
    gone, stays = asyncio.ensure_future(lookup.get(1)), asyncio.ensure_future(lookup.get(1))
    await asyncio.sleep(0.01)
    gone.cancel()
    source.gate.set()
    assert await stays == "v1"
    with pytest.raises(asyncio.CancelledError):
        await gone
