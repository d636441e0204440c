"""Where PostgreSQL and Redis are: the configured URLs, or embedded servers started here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from collab_server.config import Settings

from .embedded import EmbeddedPostgres, EmbeddedRedis


@dataclass
class Services:
    database_url: str
    redis_url: str
    embedded_postgres: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop only what this process started; a reused server belongs to whoever started it."""
        if self.embedded_redis is not None and self.embedded_redis.started_here:
            self.embedded_redis.stop()
        if self.embedded_postgres is not None and self.embedded_postgres.started_here:
            self.embedded_postgres.stop()


def start_services(settings: Settings, pg_options: dict[str, str] | None = None) -> Services:
    data_dir = Path(settings.data_dir).resolve()
    pg = rd = None
    notes = []
    if settings.database_url:
        database_url = settings.database_url
    else:
        pg = EmbeddedPostgres(data_dir / "pg", extra_options=pg_options or {}).start()
        database_url = pg.url
        notes.append(f"embedded PostgreSQL on 127.0.0.1:{pg.port} ({data_dir / 'pg'})")
    try:
        if settings.redis_url:
            redis_url = settings.redis_url
        else:
            rd = EmbeddedRedis(data_dir / "redis").start()
            redis_url = rd.url
            notes.append(f"embedded Redis on 127.0.0.1:{rd.port} ({data_dir / 'redis'})")
    except BaseException:
        if pg is not None and pg.started_here:
            pg.stop()
        raise
    return Services(database_url, redis_url, pg, rd, notes)
