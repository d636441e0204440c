"""Apply the numbered SQL files in `sql/` once each, in order, under an advisory lock.

Two processes starting together (a release step racing a web worker, parallel test
sessions) must not apply a migration twice, so the whole run holds a cluster-wide
advisory lock and re-reads what is applied after taking it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("collab.migrate")

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
# An arbitrary constant: the lock key only has to be the same in every process.
MIGRATION_LOCK_KEY = 0x636F6C6C6162  # "collab"
_NAME = re.compile(r"^(\d{3,})_[A-Za-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        migrations.append(Migration(match.group(1), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


async def migrate(conn: asyncpg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    migrations = discover(sql_dir)
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    text PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {r["version"]: r for r in rows}
        for m in migrations:
            if m.version in done:
                if done[m.version]["checksum"] != m.checksum:
                    log.warning("%s changed after it was applied; not re-applied", m.name)
                continue
            log.info("applying %s", m.name)
            async with conn.transaction():
                try:
                    await conn.execute(m.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"{m.name}: {exc.__class__.__name__}: {exc}") from exc
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            applied_now.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
