"""Upgrade, downgrade and re-upgrade of the `pgraft` schema on a real PostgreSQL."""

import asyncio

import asyncpg

from ram.eventstore import schema


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pgraft'"
        )
        return {r["table_name"] for r in rows}
    finally:
        await conn.close()


async def test_upgrade_downgrade_reupgrade(store_dsn: str) -> None:
    await asyncio.to_thread(schema.upgrade, store_dsn)
    tables = await _tables(store_dsn)
    assert {"events", "log", "hard_state", "snapshot", "applied"} <= tables
    conn = await asyncpg.connect(store_dsn)
    try:
        assert await schema.current_revision(conn) == schema.head_revision()
        await conn.fetch("SELECT * FROM pgraft.events")
    finally:
        await conn.close()

    await asyncio.to_thread(schema.downgrade, store_dsn, "base")
    assert await _tables(store_dsn) == set()
    conn = await asyncpg.connect(store_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgraft'") == 0
        assert await schema.current_revision(conn) is None
    finally:
        await conn.close()

    await asyncio.to_thread(schema.upgrade, store_dsn)
    assert {"events", "log", "hard_state", "snapshot", "applied"} <= await _tables(store_dsn)
    # Upgrading an up-to-date store is a no-op, not an error.
    await asyncio.to_thread(schema.upgrade, store_dsn)


def test_schema_head_constant_matches_the_migrations() -> None:
    """ensure_schema skips Alembic when the store is at SCHEMA_HEAD: the constant must be the real head."""
    assert schema.head_revision() == schema.SCHEMA_HEAD


async def test_ensure_schema_upgrades_once_then_only_checks(store_dsn: str) -> None:
    await schema.ensure_schema(store_dsn)
    conn = await asyncpg.connect(store_dsn)
    try:
        assert await schema.current_revision(conn) == schema.SCHEMA_HEAD
        await conn.execute("CREATE TABLE pgraft.ensure_marker ()")  # survives only if nothing is re-run
    finally:
        await conn.close()
    await schema.ensure_schema(store_dsn)
    conn = await asyncpg.connect(store_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('pgraft.ensure_marker') IS NOT NULL")
        await conn.execute("DROP TABLE pgraft.ensure_marker")
    finally:
        await conn.close()
