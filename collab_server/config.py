"""One typed settings object, read from the environment once at start-up.

Every knob the server has lives here so that a bad value fails at start with one
clear line instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """A setting has a value the server cannot use; the message is one line for the operator."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of true/false/1/0/yes/no/on/off")


def _parse_port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("expected a port number between 0 and 65535")
    return port


def _parse_positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive whole number")
    return value


def _parse_non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _parse_non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0 or value != value:
        raise ValueError("expected a non-negative number")
    return value


def _parse_db_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"postgres", "postgresql"} or not (parts.hostname or "host=" in parts.query):
        raise ValueError("expected postgresql://user:password@host:port/database")
    return raw


def _parse_redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("expected redis://host:port/db")
    return raw


def _parse_networks(raw: str) -> tuple[str, ...]:
    """Comma-separated addresses or CIDRs (validated here, compiled where they are used)."""
    items = tuple(x.strip() for x in raw.split(",") if x.strip())
    for item in items:
        ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
    return items


def _parse_auth(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"on", "off"}:
        raise ValueError("expected 'on' or 'off'")
    return value


def mask_url(url: str) -> str:
    """Hide the password of a URL so it can be printed in an error line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _env(name: str, parser: Callable[[str], Any] | None = None) -> dict[str, Any]:
    return {"env": name, "parser": parser}


@dataclass(frozen=True, slots=True)
class Settings:
    """Server configuration. Field metadata names the environment variable that sets it."""

    database_url: str | None = field(default=None, metadata=_env("DATABASE_URL", _parse_db_url))
    redis_url: str | None = field(default=None, metadata=_env("REDIS_URL", _parse_redis_url))
    db_pool_min: int = field(default=8, metadata=_env("COLLAB_DB_POOL_MIN", _parse_positive_int))
    db_pool_max: int = field(default=10, metadata=_env("COLLAB_DB_POOL_MAX", _parse_positive_int))
    host: str = field(default="127.0.0.1", metadata=_env("COLLAB_HOST"))
    port: int = field(default=8080, metadata=_env("COLLAB_PORT", _parse_port))
    data_dir: Path = field(default=Path(".collab"), metadata=_env("COLLAB_DATA_DIR", Path))
    log_level: str = field(default="info", metadata=_env("COLLAB_LOG_LEVEL"))
    auth: str = field(default="on", metadata=_env("COLLAB_AUTH", _parse_auth))
    jwt_secret: str | None = field(default=None, metadata=_env("COLLAB_JWT_SECRET"))

    # Rooms and connections.
    room_grace_seconds: float = field(
        default=30.0, metadata=_env("COLLAB_ROOM_GRACE_SECONDS", _parse_non_negative_float)
    )
    max_message_bytes: int = field(
        default=8 * 1024 * 1024, metadata=_env("COLLAB_MAX_MESSAGE_BYTES", _parse_positive_int)
    )
    send_queue_bytes: int = field(
        default=16 * 1024 * 1024, metadata=_env("COLLAB_SEND_QUEUE_BYTES", _parse_positive_int)
    )
    # HTTP (and the WebSocket upgrade request): past these, 431 / 408 and the connection is closed.
    max_header_bytes: int = field(
        default=64 * 1024, metadata=_env("COLLAB_MAX_HEADER_BYTES", _parse_positive_int)
    )
    header_timeout_seconds: float = field(
        default=10.0, metadata=_env("COLLAB_HEADER_TIMEOUT_SECONDS", _parse_non_negative_float)
    )
    # Sockets one client address may hold open at once (HTTP and WebSocket; trusted proxies exempt).
    max_connections_per_address: int = field(
        default=1000, metadata=_env("COLLAB_MAX_CONNECTIONS_PER_ADDRESS", _parse_non_negative_int)
    )
    max_document_bytes: int = field(
        default=32 * 1024 * 1024, metadata=_env("COLLAB_MAX_DOCUMENT_BYTES", _parse_non_negative_int)
    )
    max_pending_bytes: int = field(
        default=1024 * 1024, metadata=_env("COLLAB_MAX_PENDING_BYTES", _parse_non_negative_int)
    )
    max_rooms: int = field(default=10_000, metadata=_env("COLLAB_MAX_ROOMS", _parse_positive_int))
    max_connections: int = field(
        default=20_000, metadata=_env("COLLAB_MAX_CONNECTIONS", _parse_positive_int)
    )
    ping_interval: float = field(
        default=10.0, metadata=_env("COLLAB_PING_INTERVAL", _parse_non_negative_float)
    )
    ping_timeout: float = field(
        default=20.0, metadata=_env("COLLAB_PING_TIMEOUT", _parse_non_negative_float)
    )
    max_awareness_bytes: int = field(
        default=64 * 1024, metadata=_env("COLLAB_MAX_AWARENESS_BYTES", _parse_positive_int)
    )
    max_awareness_clients: int = field(
        default=32, metadata=_env("COLLAB_MAX_AWARENESS_CLIENTS", _parse_positive_int)
    )

    # The Hocuspocus route (/hocuspocus): many documents on one socket.
    hocuspocus_max_documents: int = field(
        default=100, metadata=_env("COLLAB_HOCUSPOCUS_MAX_DOCUMENTS", _parse_positive_int)
    )
    max_sockets_per_user: int = field(
        default=50, metadata=_env("COLLAB_MAX_SOCKETS_PER_USER", _parse_positive_int)
    )
    max_stateless_bytes: int = field(
        default=64 * 1024, metadata=_env("COLLAB_MAX_STATELESS_BYTES", _parse_positive_int)
    )
    rate_stateless_per_second: float = field(
        default=50.0, metadata=_env("COLLAB_RATE_STATELESS_PER_SECOND", _parse_non_negative_float)
    )
    # `package.module:function`, called with a `StatelessEvent` for every stateless message.
    stateless_hook: str | None = field(default=None, metadata=_env("COLLAB_STATELESS_HOOK"))

    # Scale-out: relay between processes through Redis Streams ("off" for a lone process).
    bus: str = field(default="on", metadata=_env("COLLAB_BUS", _parse_auth))
    bus_replay_ms: int = field(default=2000, metadata=_env("COLLAB_BUS_REPLAY_MS", _parse_non_negative_int))

    # Abuse limits (0 disables).
    rate_messages_per_second: float = field(
        default=2000.0, metadata=_env("COLLAB_RATE_MESSAGES_PER_SECOND", _parse_non_negative_float)
    )
    rate_connections_per_minute: int = field(
        default=600, metadata=_env("COLLAB_RATE_CONNECTIONS_PER_MINUTE", _parse_non_negative_int)
    )
    # What one address may open at once on top of the rate: a restart's reconnect storm from one
    # office (or from a proxy that is not trusted) gets through, a flood does not.
    rate_connections_burst: int = field(
        default=2000, metadata=_env("COLLAB_RATE_CONNECTIONS_BURST", _parse_non_negative_int)
    )
    # Proxies whose X-Forwarded-For / Forwarded is believed (addresses or CIDRs), for the
    # connection limits and the logs. Default: loopback, as uvicorn's own default.
    trusted_proxies: tuple[str, ...] = field(
        default=("127.0.0.1", "::1"), metadata=_env("COLLAB_TRUSTED_PROXIES", _parse_networks)
    )
    jwks_url: str | None = field(default=None, metadata=_env("COLLAB_JWKS_URL"))
    jwks_cooldown_seconds: float = field(
        default=30.0, metadata=_env("COLLAB_JWKS_COOLDOWN_SECONDS", _parse_non_negative_float)
    )
    jwt_issuer: str | None = field(default=None, metadata=_env("COLLAB_JWT_ISSUER"))
    jwt_audience: str | None = field(default=None, metadata=_env("COLLAB_JWT_AUDIENCE"))

    # Durability.
    commit_window_ms: float = field(
        default=5.0, metadata=_env("COLLAB_COMMIT_WINDOW_MS", _parse_non_negative_float)
    )
    compact_max_updates: int = field(
        default=5000, metadata=_env("COLLAB_COMPACT_MAX_UPDATES", _parse_positive_int)
    )
    compact_max_bytes: int = field(
        default=1024 * 1024, metadata=_env("COLLAB_COMPACT_MAX_BYTES", _parse_positive_int)
    )
    compact_max_age_seconds: float = field(
        default=30.0, metadata=_env("COLLAB_COMPACT_MAX_AGE_SECONDS", _parse_non_negative_float)
    )
    version_interval_seconds: float = field(
        default=600.0, metadata=_env("COLLAB_VERSION_INTERVAL_SECONDS", _parse_non_negative_float)
    )
    rich_text_field: str = field(default="default", metadata=_env("COLLAB_RICH_TEXT_FIELD"))
    conversion_processes: int = field(
        default=1, metadata=_env("COLLAB_CONVERSION_PROCESSES", _parse_non_negative_int)
    )
    feed_interval_seconds: float = field(
        default=2.0, metadata=_env("COLLAB_FEED_INTERVAL_SECONDS", _parse_non_negative_float)
    )
    write_backlog_bytes: int = field(
        default=64 * 1024 * 1024, metadata=_env("COLLAB_WRITE_BACKLOG_BYTES", _parse_positive_int)
    )
    shutdown_timeout: float = field(
        default=20.0, metadata=_env("COLLAB_SHUTDOWN_TIMEOUT", _parse_non_negative_float)
    )

    # Presence.
    presence_ttl_seconds: int = field(
        default=300, metadata=_env("COLLAB_PRESENCE_TTL_SECONDS", _parse_positive_int)
    )
    presence_heartbeat_seconds: float = field(
        default=30.0, metadata=_env("COLLAB_PRESENCE_HEARTBEAT_SECONDS", _parse_non_negative_float)
    )
    presence_min_interval: float = field(
        default=1.0, metadata=_env("COLLAB_PRESENCE_MIN_INTERVAL", _parse_non_negative_float)
    )
    process_heartbeat_seconds: float = field(
        default=5.0, metadata=_env("COLLAB_PROCESS_HEARTBEAT_SECONDS", _parse_non_negative_float)
    )
    process_dead_after_seconds: float = field(
        default=20.0, metadata=_env("COLLAB_PROCESS_DEAD_AFTER_SECONDS", _parse_non_negative_float)
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment; raise ConfigError naming the first bad variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            parser = f.metadata["parser"]
            try:
                values[f.name] = parser(raw) if parser else raw
            except (ValueError, TypeError) as exc:
                shown = mask_url(raw) if name.endswith("_URL") else raw
                reason = str(exc) if isinstance(exc, ValueError) and str(exc) else "invalid value"
                if "invalid literal" in reason or "could not convert" in reason:
                    reason = "not a number"
                raise ConfigError(f"{name}={shown!r} is invalid: {reason}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.db_pool_min > self.db_pool_max:
            raise ConfigError("COLLAB_DB_POOL_MIN must not exceed COLLAB_DB_POOL_MAX")
        if self.ping_interval and self.ping_timeout and self.ping_timeout < 1:
            raise ConfigError("COLLAB_PING_TIMEOUT must be at least 1 second")
        if self.presence_heartbeat_seconds >= self.presence_ttl_seconds:
            raise ConfigError("COLLAB_PRESENCE_HEARTBEAT_SECONDS must be shorter than the presence TTL")
        if self.auth == "on" and self.jwt_secret is not None and len(self.jwt_secret) < 16:
            raise ConfigError("COLLAB_JWT_SECRET must be at least 16 characters")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def documented() -> list[tuple[str, str]]:
        """(variable, default) pairs, for the README table and `--help`."""
        return [
            (f.metadata["env"], repr(f.default) if f.default is not None else "unset")
            for f in dataclasses.fields(Settings)
        ]
