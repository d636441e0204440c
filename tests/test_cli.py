"""The `collab-server` command as an operator meets it: help, clear failures, demo, first start."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "collab_server", *args],
        env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.mark.parametrize("command", ["serve", "migrate", "demo", "token"])
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 3


@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_unreachable_database_is_one_clear_line(command: str, tmp_path: Path) -> None:
    result = run_cli(
        command,
        env={"DATABASE_URL": "postgresql://app:s3cret@127.0.0.1:1/collab", "REDIS_URL": "redis://127.0.0.1:1/0",
             "COLLAB_PORT": str(free_port()), "COLLAB_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "postgresql://app:***@127.0.0.1:1/collab" in lines[0]
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_bad_setting_is_one_clear_line() -> None:
    result = run_cli("migrate", env={"COLLAB_PORT": "http"})
    assert result.returncode == 2
    assert result.stderr.strip() == "collab-server: COLLAB_PORT='http' is invalid: not a number"


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", env={"COLLAB_PORT": str(port), "COLLAB_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"collab-server: port {port} on 127.0.0.1 is already in use (set COLLAB_PORT to another port)"
    )


def test_corrupt_data_directory_says_what_to_delete(tmp_path: Path) -> None:
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "garbage").write_text("x")
    result = run_cli("migrate", env={"COLLAB_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert f"delete {tmp_path / 'pg'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_json_is_one_object_with_real_tokens(db_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "COLLAB_DATA_DIR": str(tmp_path), "COLLAB_PORT": "8099"}
    first = run_cli("demo", "--json", env=env)
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert set(info) == {"ws_url", "http_url", "app_url", "console_url", "workspace", "documents", "tokens"}
    assert len(info["documents"]) == 5 and set(info["tokens"]) == {"editor", "viewer", "outsider", "admin"}
    assert info["app_url"] == f"http://127.0.0.1:8099/?token={info['tokens']['editor']}#/d/{info['documents'][0]}"
    assert info["console_url"] == f"http://127.0.0.1:8099/console?token={info['tokens']['admin']}"
    assert info["ws_url"] == f"ws://127.0.0.1:8099/ws/{info['documents'][0]}?token={info['tokens']['editor']}"
    assert info["http_url"] == "http://127.0.0.1:8099"
    second = json.loads(run_cli("demo", "--json", env=env).stdout)  # idempotent: same ids
    assert second["workspace"] == info["workspace"] and second["documents"] == info["documents"]


def test_token_command_mints_a_token_for_a_user(db_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "COLLAB_DATA_DIR": str(tmp_path)}
    assert run_cli("demo", "--json", env=env).returncode == 0
    result = run_cli("token", "--email", "viewer@demo.collab.dev", "--ttl", "15m", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2
    missing = run_cli("token", "--email", "nobody@example.com", env=env)
    assert missing.returncode == 2 and "no user with email nobody@example.com" in missing.stderr


def _serve_embedded(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], float]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"COLLAB_DATA_DIR": str(data_dir), "COLLAB_PORT": str(port), "COLLAB_LOG_LEVEL": "warning"})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "collab_server", "serve", "--demo"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = started + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("embedded server did not become ready")


def test_first_and_second_start_with_embedded_services(tmp_path: Path) -> None:
    """What `make run` does on a fresh machine: embedded PostgreSQL and Redis, migrate, serve."""
    port = free_port()
    data_dir = tmp_path / "collab"
    timings = []
    for _ in range(2):
        proc, elapsed = _serve_embedded(data_dir, port)
        timings.append(elapsed)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["checks"] == {"postgres": "ok", "redis": "ok"}
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert "editor   token:" in output
        # Ctrl-C stops everything it started: nothing listens on the data directory's servers.
        assert not (data_dir / "pg" / "postmaster.pid").exists()
    print(f"first start {timings[0]:.2f} s, second start {timings[1]:.2f} s")
