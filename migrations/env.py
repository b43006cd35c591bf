"""Alembic environment for the `pgraft` schema.

All runtime SQL goes through asyncpg, so migrations do too: SQLAlchemy drives an asyncpg connection
made from the node's plain libpq DSN (unix-socket DSNs included). The version table lives in
`public` (as `pgraft_alembic_version`) so that `downgrade base` removes the `pgraft` schema whole.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

#: Kept outside `pgraft` so that `downgrade base` can drop the whole schema and still record it.
VERSION_TABLE = "pgraft_alembic_version"
VERSION_SCHEMA = "public"


def _dsn() -> str:
    dsn = context.config.attributes.get("dsn") or context.get_x_argument(as_dictionary=True).get("dsn")
    dsn = dsn or os.environ.get("RAM_STORE_DSN")
    if not dsn:
        raise SystemExit("no store DSN: pass -x dsn=postgresql://... or set RAM_STORE_DSN")
    return str(dsn)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=VERSION_SCHEMA,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    dsn = _dsn()

    async def creator() -> Any:
        return await asyncpg.connect(dsn)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=creator, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run against a database")
asyncio.run(_run_async())
