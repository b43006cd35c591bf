"""SQL on the local managed instance: over its unix socket, with a timeout, errors in PostgreSQL's words."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ram.postgres.errors import SqlError
from ram.postgres.spec import ManagedInstanceSpec


def _translate(exc: BaseException, query: str | None) -> SqlError:
    if isinstance(exc, asyncpg.PostgresError):
        return SqlError(str(exc.args[0]) if exc.args else str(exc), getattr(exc, "sqlstate", None), query)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return SqlError(f"timed out: {query or 'connect'}", None, query)
    return SqlError(f"{type(exc).__name__}: {exc}", None, query)


@asynccontextmanager
async def local_connection(spec: ManagedInstanceSpec, dbname: str = "postgres") -> AsyncIterator[asyncpg.Connection]:
    """A connection to the local instance as the superuser over the unix socket (peer auth).

    Connect and every statement are bounded by ``spec.timeouts``; any failure — refused, auth,
    timeout, a query error — surfaces as :class:`SqlError` with the server's message.
    """
    try:
        conn = await asyncpg.connect(
            host=str(spec.sockdir),
            port=spec.port,
            user=spec.superuser,
            database=dbname,
            timeout=spec.timeouts.connect,
            command_timeout=spec.timeouts.query,
            server_settings={"application_name": "ram"},
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise _translate(exc, None) from exc
    try:
        yield conn
    except (asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, OSError) as exc:
        raise _translate(exc, None) from exc
    finally:
        try:
            await asyncio.wait_for(conn.close(), spec.timeouts.connect)
        except Exception:
            conn.terminate()


async def execute(spec: ManagedInstanceSpec, query: str, *args: Any, dbname: str = "postgres") -> str:
    """Run one statement on the local instance (a fresh connection: these are rare, admin steps)."""
    async with local_connection(spec, dbname) as conn:
        try:
            return str(await conn.execute(query, *args))
        except (asyncpg.PostgresError, TimeoutError) as exc:
            raise _translate(exc, query) from exc


async def fetch(spec: ManagedInstanceSpec, query: str, *args: Any, dbname: str = "postgres") -> list[asyncpg.Record]:
    """Rows of one query on the local instance."""
    async with local_connection(spec, dbname) as conn:
        try:
            return list(await conn.fetch(query, *args))
        except (asyncpg.PostgresError, TimeoutError) as exc:
            raise _translate(exc, query) from exc


def quote_literal(value: str) -> str:
    """A standard-conforming SQL string literal (utility statements such as CREATE ROLE take no $1)."""
    if "\0" in value:
        raise ValueError("NUL in SQL literal")
    return "'" + value.replace("'", "''") + "'"
