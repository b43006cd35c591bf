import asyncpg

from ram.postgres.server import PostgresServer


async def test_real_server_answers(store_dsn: str, pg_server: PostgresServer) -> None:
    conn = await asyncpg.connect(store_dsn)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) >= 150000
        assert await conn.fetchval("SHOW fsync") == "on"
    finally:
        await conn.close()
    assert pg_server.postmaster_pid() is not None
