"""The load generator (`collab-loadtest`): measures real deliveries, finds no loss where
there is none, checks convergence, and drives the reference server the same way as ours."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest
from pycrdt import Doc, Text

from loadtest import (
    LatencyStats,
    LoadConfig,
    LoadTestError,
    check_loopback,
    cold_rooms,
    encode_text_insert,
    run_load,
    tags_in,
)
from tests.conftest import ROOT, RunningServer
from tests.nodeclient import RefServer

MIX = ("typing", "cursor", "churn", "late")


def small(url: str, **kw: object) -> LoadConfig:
    base: dict[str, object] = {
        "url": url, "documents": 2, "clients": 3, "rate": 40.0, "duration": 2.0, "mix": MIX,
        "drain": 3.0, "max_seconds": 60.0, "check_rooms": -1, "churn_interval": 3.0, "seed": 1,
    }
    base.update(kw)
    return LoadConfig(**base)  # type: ignore[arg-type]


def assert_clean(result: object) -> None:
    from loadtest import LoadResult

    assert isinstance(result, LoadResult)
    assert result.aborted is None, result.aborted
    assert result.connected == 6
    (step,) = result.steps
    assert step.sent > 40, step
    assert step.lost == 0 and step.lost_deliveries == 0, result.as_dict()
    assert step.expected >= step.sent * 2  # every update had to reach the two other clients
    assert result.converged, result.convergence
    assert result.convergence["rooms_checked"] == 2
    assert step.latency.count > 0 and 0 < step.latency.p50_ms <= step.latency.p99_ms <= step.latency.max_ms
    assert step.cursor_sent > 0 and step.cursor_latency.count > 0
    assert result.late_sync.count == 2  # one late joiner per document
    assert result.errors == 0, result.error_samples
    assert result.ok


def test_hand_encoded_updates_are_what_pycrdt_emits() -> None:
    doc = Doc(client_id=4242)
    text = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    text.insert(0, "\x021.0\x03")
    text.insert(len(text), "\x021.1\x03")
    assert updates[0] == encode_text_insert(4242, 0, b"\x021.0\x03")
    assert updates[1] == encode_text_insert(4242, 5, b"\x021.1\x03", (4242, 4))
    other = Doc()
    other.get("content", type=Text)
    for u in (encode_text_insert(1, 0, b"hello"), encode_text_insert(2, 0, b"[x]", (1, 1), (1, 2))):
        other.apply_update(u)
    assert str(other.get("content", type=Text)) == "he[x]llo"
    assert tags_in(updates[0] + updates[1]) == [(1, 0), (1, 1)]


def test_only_loopback_targets() -> None:
    check_loopback("ws://127.0.0.1:8080/ws")
    check_loopback("ws://localhost:8080/ws")
    check_loopback("ws://[::1]:8080/ws")
    for url in ("ws://example.com/ws", "ws://10.0.0.1:8080/ws", "http://127.0.0.1:8080/ws"):
        with pytest.raises(LoadTestError):
            check_loopback(url)


def test_percentiles() -> None:
    stats = LatencyStats.of([i / 1000 for i in range(1, 101)])
    assert (stats.p50_ms, stats.p95_ms, stats.p99_ms, stats.max_ms) == (50.0, 95.0, 99.0, 100.0)
    assert LatencyStats.of([]).count == 0


@pytest.mark.timeout(90)
async def test_loadtest_against_this_server(server: RunningServer) -> None:
    result = await run_load(small(server.ws_base))
    assert_clean(result)


@pytest.mark.timeout(90)
async def test_loadtest_against_the_reference_server() -> None:
    async with RefServer() as ref:
        result = await run_load(small(f"{ref.url}/ws"))
    assert_clean(result)


async def test_cold_rooms_opens_every_room_once_however_many_in_parallel(server: RunningServer) -> None:
    names = [f"cold-lt-{i}" for i in range(24)]
    for parallel in (1, 8):
        info = await cold_rooms(server.ws_base, names, parallel=parallel)
        assert (info["rooms"], info["errors"], info["parallel"]) == (24, 0, parallel), info
        assert info["open_sync_close"]["count"] == 24 and info["rooms_per_second"] > 0


@pytest.mark.timeout(90)
async def test_cli_prints_one_json_object(server: RunningServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest", "--json", "--url", server.ws_base,
        "--documents", "2", "--clients", "3", "--rate", "30", "--duration", "1.5", "--drain", "2",
        "--mix", "typing,cursor", "--param", "client_version=lt", "--max-seconds", "60",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 80)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    body = orjson.loads(stdout)  # exactly one JSON object, nothing else on stdout
    assert isinstance(body, dict)
    assert body["ok"] is True and body["converged"] is True and body["lost"] == 0
    assert body["connected"] == 6 and body["errors"] == 0 and body["reconnects"] == 0
    assert body["sent"] > 0 and body["delivered"] >= 2 * body["sent"]
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "count"):
        assert key in body["latency"]
    assert body["latency"]["p50_ms"] > 0
    (step,) = body["steps"]
    for key in ("target_rate", "sent_per_second", "delivered_per_second", "lost", "latency", "generator_cpu"):
        assert key in step
    assert body["config"]["params"] == {"client_version": "lt"}


async def test_cli_refuses_remote_targets() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest", "--url", "ws://192.0.2.1:8080/ws",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"loopback" in stderr and stdout == b""
