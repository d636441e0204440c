"""What an operator watches: this process's rooms, connections, write-ahead, bus and loop lag (the console).

Totals are counters; the console turns two readings a second apart into rates. Rooms are listed only
where the caller may see them: every room in open mode, in auth mode those of workspaces the caller
owns or administers (the totals are process-wide for any owner or admin).
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from .access import caller, context, user_transaction
from .errors import ApiError
from .openapi import Endpoint
from .payload import JSONOut

MAX_ROOMS_LISTED = 200
_COUNTERS = {
    "updates": "collab_wal_updates_total",
    "frames_out": "collab_messages_out_total",
    "bytes_in": "collab_bytes_in_total",
    "compactions": "collab_compactions_total",
    "compaction_failures": "collab_compaction_failures_total",
    "connections_opened": "collab_connections_opened_total",
    "wal_retries": "collab_wal_retries_total",
    "wal_refused": "collab_wal_refused_total",
    "bus_published": "collab_bus_published_total",
    "bus_received": "collab_bus_received_total",
}


def _names(states: dict[int, Any]) -> list[str]:
    out = []
    for state in states.values():
        user = state.get("user") if isinstance(state, dict) else None
        name = user.get("name") if isinstance(user, dict) else None
        out.append(name if isinstance(name, str) else "anonymous")
    return sorted(out)


async def process_stats(request: Request) -> Response:
    ctx = context(request)
    user_id = await caller(request)
    rooms = sorted(ctx.hub.rooms(), key=lambda r: -len(r.connections))
    ids = [r.id for r in rooms]
    async with user_transaction(ctx, user_id) as conn:
        if ctx.settings.auth == "on":
            managed = await conn.fetchval(
                """
                SELECT count(*) FROM workspace_members
                WHERE user_id = $1 AND is_active AND role IN ('owner', 'admin')
                """,
                user_id,
            )
            if not managed:
                raise ApiError(403, "only owners and admins may see the console")
        rows = await conn.fetch(
            """
            SELECT d.id, d.title, d.type::text AS type FROM documents d
            WHERE d.id = ANY($1::uuid[]) AND ($2 OR EXISTS (
                SELECT 1 FROM workspace_members m WHERE m.workspace_id = d.workspace_id AND m.user_id = $3
                AND m.is_active AND m.role IN ('owner', 'admin')))
            """,
            ids, ctx.settings.auth == "off", user_id,
        )
    visible: dict[UUID, dict[str, Any]] = {r["id"]: dict(r) for r in rows}
    listed = [
        {**visible[r.id], "connections": len(r.connections), "presence": _names(r.awareness.states()),
         "bytes": r.size}
        for r in rooms if r.id in visible
    ][:MAX_ROOMS_LISTED]
    bus = ctx.bus
    return JSONOut({
        "process_id": ctx.process_id,
        "time": time.time(),
        "rooms": ctx.hub.room_count,
        "connections": ctx.hub.connections,
        "totals": {key: ctx.counters.get(name) for key, name in _COUNTERS.items()},
        "write_ahead": ctx.wal.stats(),
        "bus": {"enabled": bus is not None, "healthy": bus.healthy if bus else None,
                "alone": bus.alone if bus else None},
        "loop_lag": ctx.loop_lag() if ctx.loop_lag else None,
        "room_list": listed,
    })


endpoints = [
    Endpoint("GET", "/api/stats", process_stats,
             "This process's live figures (rooms, connections, counters, write-ahead, bus, loop lag, rooms you "
             "manage with their connections and presence); owners and admins only in auth mode",
             "operations", errors=(403,)),
]
