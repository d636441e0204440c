"""The changes feed: "what changed in this workspace since position N", for desktop sync.

In-flight safety. sync_log.cursor is a BIGSERIAL, allocated at insert and not at commit, so
a reader can see cursor 13 committed while 12 is still in flight; a feed keyed on the cursor
would hand out 13 and skip 12 for good. The feed therefore
  * returns only rows whose writing transaction is older than the oldest transaction still in
    progress (`txid < pg_snapshot_xmin(pg_current_snapshot())`, evaluated in the same statement
    as the read, so both come from one snapshot): such a transaction has ended, and none of
    its rows can still appear;
  * orders and pages by (txid, cursor). Any row that becomes visible later belongs to a
    transaction that was in progress (or not yet started) at that snapshot, so its txid is at
    least the xmin seen, and above every txid already handed out. A position is therefore
    never passed by an entry still in flight, whichever transaction allocated its cursor
    first (compaction takes its xid when it locks the row, long before it logs).
The position handed out is "txid.cursor" ("0" is the beginning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from .access import authorize_workspace, context, user_transaction
from .errors import ApiError
from .openapi import Endpoint
from .payload import JSONOut, Param, limit_param, query_param

log = logging.getLogger("collab.api.changes")

MAX_WAIT = 30.0
MAX_WAITS_PER_USER = 8
_POSITION = re.compile(r"^(\d{1,20})\.(\d{1,19})$")
_POSITION_PATTERN = r"^(0|\d{1,20}\.\d{1,19})$"
_XID8_MAX, _BIGINT_MAX = 2**64 - 1, 2**63 - 1

_FEED = """
SELECT s.cursor, s.txid::text AS txid, s.entity_type, s.entity_id, s.operation::text AS operation,
       s.changes, s.content_hash, s.changed_by, s.device_id, s.client_version, s.timestamp
FROM sync_log s
WHERE s.workspace_id = $1
  AND (s.txid, s.cursor) > ($2::text::xid8, $3::bigint)
  AND s.txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY s.txid, s.cursor
LIMIT $4
"""

# Internal (not user-scoped): which workspaces have rows that settled since the last tick.
_SETTLED = """
SELECT x.xmin::text AS xmin,
       CASE WHEN $1::text IS NULL THEN '{}'::uuid[] ELSE ARRAY(
           SELECT DISTINCT s.workspace_id FROM sync_log s
           WHERE s.txid >= $1::text::xid8 AND s.txid < x.xmin) END AS workspaces
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) x
"""


def parse_position(raw: str | None) -> tuple[str, int]:
    if raw is None or raw in ("", "0"):
        return "0", 0
    match = _POSITION.match(raw)
    if match is None or int(match.group(1)) > _XID8_MAX or int(match.group(2)) > _BIGINT_MAX:
        raise ApiError(400, "since must be a position from this feed (\"txid.cursor\") or 0", "bad_cursor")
    return match.group(1), int(match.group(2))


def position(row: asyncpg.Record) -> str:
    return f"{row['txid']}.{row['cursor']}"


def entry(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["sequence"] = out.pop("cursor")
    del out["txid"]
    out["cursor"] = position(row)
    return out


class FeedWatcher:
    """One cheap query per tick serves every long-poll of this process, however many: it finds
    the workspaces whose rows settled since the previous tick and wakes their waiters. It runs
    only while someone waits. Waiters also re-read on their own at least every second."""

    TICK = 0.25

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiters: dict[UUID, set[asyncio.Event]] = {}
        self._per_user: Counter[UUID] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._xmin: str | None = None

    @contextlib.asynccontextmanager
    async def polling(self, user_id: UUID) -> AsyncIterator[None]:
        """Bound concurrent long-polls per user (429), so a client cannot pin many requests."""
        if self._per_user[user_id] >= MAX_WAITS_PER_USER:
            raise ApiError(429, "too many concurrent long-polls for this user", headers={"Retry-After": "1"})
        self._per_user[user_id] += 1
        try:
            yield
        finally:
            self._per_user[user_id] -= 1
            if not self._per_user[user_id]:
                del self._per_user[user_id]

    async def wait(self, workspace_id: UUID, timeout: float) -> None:
        event = asyncio.Event()
        self._waiters.setdefault(workspace_id, set()).add(event)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="changes-feed-watcher")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            waiters = self._waiters.get(workspace_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[workspace_id]

    async def _run(self) -> None:
        try:
            while self._waiters:
                row = await self._pool.fetchrow(_SETTLED, self._xmin)
                assert row is not None
                for workspace_id in row["workspaces"]:
                    for event in self._waiters.get(workspace_id, ()):
                        event.set()
                self._xmin = row["xmin"]
                await asyncio.sleep(self.TICK)
        except Exception as exc:  # waiters fall back to their own periodic re-read
            log.warning("changes feed watcher stopped: %s", exc)
        finally:
            self._xmin = None


def watcher(request: Request) -> FeedWatcher:
    state = request.app.state
    if getattr(state, "feed_watcher", None) is None:
        state.feed_watcher = FeedWatcher(context(request).pool)
    return state.feed_watcher  # type: ignore[no-any-return]


_SINCE = Param("since", description='a position from this feed ("txid.cursor"); 0 or absent: the beginning',
               schema_extra={"pattern": _POSITION_PATTERN})
_LIMIT = limit_param(100, 1000)
_WAIT = Param("wait", "number", f"long-poll: wait up to this many seconds (at most {MAX_WAIT:g}) for a change",
              0, 0)


async def get_changes(request: Request) -> Response:
    """Entries after `since`, oldest first, with the position to ask from next time."""
    ctx = context(request)
    access = await authorize_workspace(request)
    txid, cursor = parse_position(query_param(request, "since"))
    limit = _LIMIT.read(request)
    wait = min(float(_WAIT.read(request)), MAX_WAIT)

    async def read() -> list[asyncpg.Record]:
        async with user_transaction(ctx, access.user_id) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(_FEED, access.workspace_id, txid, cursor, limit + 1)
            return rows

    rows = await read()
    if not rows and wait > 0:
        feed = watcher(request)
        deadline = time.monotonic() + wait
        async with feed.polling(access.user_id):
            while not rows and not ctx.hub.closing and (left := deadline - time.monotonic()) > 0:
                await feed.wait(access.workspace_id, min(left, 1.0))
                rows = await read()
    page = rows[:limit]
    return JSONOut({
        "workspace_id": access.workspace_id,
        "changes": [entry(r) for r in page],
        "next_cursor": position(page[-1]) if page else (f"{txid}.{cursor}" if txid != "0" else "0"),
        "has_more": len(rows) > limit,
    })


endpoints = [
    Endpoint("GET", "/api/workspaces/{workspace_id}/changes", get_changes,
             "Changes since a position (document creates, updates, tombstones); long-poll with wait",
             "changes", query=(_SINCE, _LIMIT, _WAIT), errors=(429,)),
]
