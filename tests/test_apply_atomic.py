"""The apply path is one transaction: a connection killed mid-apply leaves no partial events, no
projection rows and no applied-index movement — and re-applying afterwards writes everything once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from ram.eventstore import schema
from ram.eventstore.events import ClusterBootstrapped, DynamicConfigChanged, MemberSpec
from ram.eventstore.store import EntryEvents, append_entries, applied_index, read_range
from ram.projections.sql import load_state

TS = datetime(2026, 11, 26, tzinfo=UTC)


def batch() -> list[EntryEvents]:
    members = (
        MemberSpec(name="pg1", node_id=1, raft_address="127.0.0.1:7401", api_address="127.0.0.1:8001",
                   pg_host="127.0.0.1", pg_port=5432),
    )
    first = EntryEvents(1, 1, 1, TS, [ClusterBootstrapped(cluster_id="c", cluster_name="c", members=members)])
    rest = [
        EntryEvents(i, 1, 1, TS, [DynamicConfigChanged.model_validate({"changes": {f"k{i}": {"new": i}}})])
        for i in range(2, 200)
    ]
    return [first, *rest]


async def test_killed_connection_mid_apply_leaves_nothing(store_dsn: str) -> None:
    await asyncio.to_thread(schema.upgrade, store_dsn)
    victim = await asyncpg.connect(store_dsn)
    killer = await asyncpg.connect(store_dsn)
    try:
        before = await load_state(killer)
        pid = victim.get_server_pid()
        tx = victim.transaction()
        await tx.start()
        assert await append_entries(victim, batch()) == 199  # written, not committed
        # The connection dies before COMMIT (a crash of the node, a network cut to the store).
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        await asyncio.sleep(0.2)
        assert victim.is_closed() or not await _alive(victim)
        assert await applied_index(killer) == 0
        assert await killer.fetchval("SELECT count(*) FROM pgraft.events") == 0
        assert await killer.fetchval("SELECT count(*) FROM pgraft.member") == 0
        assert await load_state(killer) == before
        # Applying again (what the node does after a restart) writes everything exactly once.
        assert await append_entries(killer, batch()) == 199
        assert await append_entries(killer, batch()) == 199, "re-applying must write nothing new"
        assert await killer.fetchval("SELECT count(*) FROM pgraft.events") == 199
        assert len(await read_range(killer, after=0, limit=1000)) == 199
        state = await load_state(killer)
        assert state.dynamic_config["k199"] == 199 and "pg1" in state.members
    finally:
        victim.terminate()
        await killer.close()


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True
