"""Creating and upgrading the `pgraft` schema with Alembic, from code.

`ram store upgrade` and `ram node run` call these; they are synchronous (Alembic is), so async
callers run them in a worker thread with ``asyncio.to_thread``. Alembic is imported only when a
migration actually runs: a node starting on an up-to-date store (every restart but the first) checks
the revision with one query (:func:`ensure_schema`) and does not pay Alembic's import time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from alembic.config import Config

#: The newest revision in migrations/ (a test checks it against Alembic's own view).
SCHEMA_HEAD = "0008"

#: Inside the package, so an installed wheel carries them (in a source checkout ``ram/_migrations``
#: links to ``migrations/``, where Alembic's own ``alembic.ini`` finds them too).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "_migrations"


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script inside a migration.

    SQLAlchemy's asyncpg dialect prepares every statement, and PostgreSQL refuses to prepare
    several commands at once; asyncpg's own ``execute`` without arguments uses the simple query
    protocol, which accepts a whole script (plpgsql bodies included) in one round trip.
    """
    from alembic import op
    from sqlalchemy.util import await_only

    raw = op.get_bind().connection.driver_connection
    if raw is None:
        raise RuntimeError("migration has no live database connection")
    await_only(raw.execute(sql))


def alembic_config(dsn: str) -> Config:
    """An Alembic config pointing at our migrations and the given store DSN."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").exists():
        raise FileNotFoundError(f"migrations not found at {MIGRATIONS_DIR}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["dsn"] = dsn
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Bring the store's `pgraft` schema up to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str = "base") -> None:
    """Take the schema down to ``revision``; ``base`` removes schema `pgraft` entirely."""
    from alembic import command

    command.downgrade(alembic_config(dsn), revision)


def head_revision() -> str:
    """The newest revision this code knows (from the migration scripts; see :data:`SCHEMA_HEAD`)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("unused")).get_current_head()
    assert head is not None
    return head


async def current_revision(conn: object) -> str | None:
    """The store's current revision, read with asyncpg (``None`` when never migrated)."""
    fetchval = conn.fetchval  # type: ignore[attr-defined]
    exists = await fetchval("SELECT to_regclass('public.pgraft_alembic_version') IS NOT NULL")
    if not exists:
        return None
    value = await fetchval("SELECT version_num FROM public.pgraft_alembic_version")
    return str(value) if value is not None else None


async def ensure_schema(dsn: str) -> None:
    """Upgrade the store to :data:`SCHEMA_HEAD` unless it is there already (one query then)."""
    conn = await asyncpg.connect(dsn)
    try:
        current = await current_revision(conn)
    finally:
        await conn.close()
    if current != SCHEMA_HEAD:
        await asyncio.to_thread(upgrade, dsn)


__all__ = [
    "MIGRATIONS_DIR",
    "SCHEMA_HEAD",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "execute_script",
    "head_revision",
    "upgrade",
]
