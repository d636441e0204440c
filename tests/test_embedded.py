"""Embedded PostgreSQL and Redis: first start, reuse, recovery from a killed run, corrupt data."""

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis

from collab_server.runtime.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis


def test_redis_restart_after_kill_recovers_stale_pid(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert first.started_here
        client = redis.Redis.from_url(first.url)
        client.set("k", "v")
        again = EmbeddedRedis(tmp_path / "redis").start()
        assert not again.started_here and again.port == first.port  # reused, not a second server
        pid = first.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(5) if psutil.pid_exists(pid) else None
        revived = EmbeddedRedis(tmp_path / "redis").start()
        assert revived.started_here
        assert redis.Redis.from_url(revived.url).ping()
    finally:
        EmbeddedRedis(tmp_path / "redis").stop()


def test_postgres_reuse_and_recovery_after_kill(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    pg = EmbeddedPostgres(data, extra_options={"fsync": "off"}).start()
    try:
        assert pg.started_here and (data / "PG_VERSION").exists()
        reused = EmbeddedPostgres(data).start()
        assert not reused.started_here and reused.port == pg.port
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        # The killed postmaster leaves its pid file behind; the next start must not trip on it.
        assert (data / "postmaster.pid").exists()
        revived = EmbeddedPostgres(data, extra_options={"fsync": "off"}).start()
        assert revived.started_here
    finally:
        EmbeddedPostgres(data).stop("immediate")


def test_corrupt_postgres_directory_says_what_to_delete(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "junk").write_text("not a cluster")
    with pytest.raises(EmbeddedError) as err:
        EmbeddedPostgres(data).start()
    assert f"delete {data}" in str(err.value)


def test_unstartable_postgres_cluster_says_what_to_delete(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("18\n")  # claims to be a cluster, holds nothing
    with pytest.raises(EmbeddedError) as err:
        EmbeddedPostgres(data).start()
    assert f"delete {data}" in str(err.value)
