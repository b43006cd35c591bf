"""``ram store …``: manage a node's store database (schema `pgraft`)."""

from __future__ import annotations

import asyncio

import asyncpg
import click

from ram.cli.errors import UserError, friendly_errors
from ram.eventstore import schema

DSN_HELP = "libpq URI of the store database, e.g. postgresql://postgres@127.0.0.1:5432/ram_store"


@click.group("store")
def store_group() -> None:
    """Manage a node's store database (schema pgraft)."""


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise UserError(f"cannot connect to store {dsn!r}: {exc}") from exc


@store_group.command("upgrade")
@click.option("--dsn", required=True, envvar="RAM_STORE_DSN", help=DSN_HELP)
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@friendly_errors(asyncpg.PostgresError, ValueError)
def store_upgrade(dsn: str, revision: str) -> None:
    """Create or upgrade schema pgraft in the store database.

    \b
    Example:
      ram store upgrade --dsn postgresql://postgres@127.0.0.1:5432/ram_store
    """

    async def check() -> None:
        conn = await _connect(dsn)
        await conn.close()

    asyncio.run(check())
    schema.upgrade(dsn, revision)
    click.echo(f"store schema at revision {revision} ({schema.head_revision()} is the newest)")


@store_group.command("downgrade")
@click.option("--dsn", required=True, envvar="RAM_STORE_DSN", help=DSN_HELP)
@click.option("--revision", default="base", show_default=True, help="'base' removes schema pgraft.")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors(asyncpg.PostgresError, ValueError)
def store_downgrade(dsn: str, revision: str, force: bool) -> None:
    """Downgrade schema pgraft (base drops it, with the Raft log and all events).

    \b
    Example:
      ram store downgrade --dsn postgresql://postgres@127.0.0.1:5432/ram_store --revision base --force
    """
    if not force:
        click.confirm(f"Downgrade the store to {revision!r}? Data in dropped tables is lost", abort=True)
    schema.downgrade(dsn, revision)
    click.echo(f"store schema downgraded to {revision}")


@store_group.command("rebuild-projections")
@click.option("--dsn", required=True, envvar="RAM_STORE_DSN", help=DSN_HELP)
@friendly_errors(asyncpg.PostgresError, ValueError)
def store_rebuild(dsn: str) -> None:
    """Recompute every projection table from pgraft.events, in one transaction.

    \b
    Example:
      ram store rebuild-projections --dsn postgresql://postgres@127.0.0.1:5432/ram_store
    """

    async def run() -> int:
        conn = await _connect(dsn)
        try:
            if await schema.current_revision(conn) is None:
                raise UserError("schema pgraft is missing; run 'ram store upgrade' first")
            async with conn.transaction():
                await conn.execute("SELECT pgraft.rebuild_projections()")
                return int(await conn.fetchval("SELECT count(*) FROM pgraft.events"))
        finally:
            await conn.close()

    count = asyncio.run(run())
    click.echo(f"projections rebuilt from {count} events")
