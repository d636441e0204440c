"""The worker process that merges and converts off the event loop: results, thread mode, recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pycrdt import Doc, Text

from collab_server.storage import ydoc
from collab_server.storage.offloop import OffLoop


def die_once(flag: str) -> str:
    """Exit the worker process the first time (as an OOM kill would), succeed after."""
    path = Path(flag)
    if path.exists():
        path.unlink()
        os._exit(1)
    return "survived"


@pytest.mark.parametrize("processes", [1, 0])
async def test_compaction_runs_in_a_worker_process_or_a_thread(processes: int) -> None:
    doc = Doc()
    doc.get("content", type=Text).insert(0, "# hello")
    offloop = OffLoop(processes)
    try:
        await offloop.start(ydoc.ready)
        result = await offloop.run(ydoc.compact, None, [doc.get_update()], "markdown", "")
    finally:
        offloop.close()
    assert (result.content, result.chars_added, result.chars_removed) == ("# hello", 7, 0)


async def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    flag = tmp_path / "die"
    flag.touch()
    offloop = OffLoop(1)
    try:
        assert await offloop.run(die_once, str(flag)) == "survived"
        assert not flag.exists()  # the first attempt ran, and its process died
        assert await offloop.run(ydoc.ready) is True
    finally:
        offloop.close()
