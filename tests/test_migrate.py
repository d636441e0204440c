"""Migrations: in order, recorded, idempotent, and safe when two processes race."""

import asyncio

import asyncpg

from collab_server.storage import db as dbmod
from collab_server.storage.migrate import discover, migrate


async def test_template_has_every_migration_recorded(db: asyncpg.Connection) -> None:
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r["name"] for r in rows] == [m.name for m in discover()]


async def test_migrate_is_idempotent(db: asyncpg.Connection) -> None:
    assert await migrate(db) == []
    assert await migrate(db) == []


async def test_concurrent_migrations_apply_once(services, db_url: str) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import with_database

    name = "collab_mig_race"
    admin = await dbmod.connect(services.admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(services.admin_url, name)
        conns = [await dbmod.connect(url) for _ in range(3)]
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [r for r in results if r]
        assert len(applied) == 1 and applied[0] == [m.name for m in discover()]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(discover())
        for c in conns:
            await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
