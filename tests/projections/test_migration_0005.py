"""Revision 0005 on a store written before it: the prefixed ``switchover_requested`` acceptances
become ``switchover_accepted`` events, the projection marks the switchover accepted, and the
result equals the Python fold of the rewritten events; downgrade restores the old form."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ram.eventstore import events as e
from ram.eventstore import schema
from ram.projections.sql import load_state
from ram.projections.state import ClusterState, fold

from .test_fold import BOOT, Log
from .test_sql_projection import insert

OLD_PREFIX = "accepted by the arbiter: "


@pytest.fixture
async def conn_0004(store_dsn: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    await asyncio.to_thread(schema.upgrade, store_dsn, "0004")
    c = await asyncpg.connect(store_dsn)
    try:
        yield store_dsn, c
    finally:
        await c.close()


async def test_upgrade_rewrites_acceptances_and_downgrade_restores_them(
    conn_0004: tuple[str, asyncpg.Connection],
) -> None:
    dsn, conn = conn_0004
    log = Log()
    accepted_reason = OLD_PREFIX + "n2 has the most WAL"
    old = [
        *log(BOOT, e.PrimaryPromoted(name="n1", timeline=1, lsn=100)),
        *log(e.SwitchoverRequested(primary="n1", requested_by="ops")),
        *log(e.SwitchoverRequested(primary="n1", candidate="n2", requested_by="ops", reason=accepted_reason)),
    ]
    await insert(conn, old)
    await conn.fetchval("SELECT pgraft.rebuild_projections()")
    (before,) = await conn.fetch("SELECT candidate, reason FROM pgraft.operation_history")
    assert (before["candidate"], before["reason"]) == ("n2", accepted_reason)

    await asyncio.to_thread(schema.upgrade, dsn)
    rows = await conn.fetch("SELECT position, type, schema_version, payload FROM pgraft.events ORDER BY position")
    assert [r["type"] for r in rows][-2:] == ["switchover_requested", "switchover_accepted"]
    events = [
        se.model_copy(update={"event": e.decode_event(r["type"], r["schema_version"], r["payload"])})
        for se, r in zip(old, rows, strict=True)
    ]
    accepted = events[-1].event
    assert isinstance(accepted, e.SwitchoverAccepted)
    assert (accepted.candidate, accepted.reason) == ("n2", "n2 has the most WAL")
    state = await load_state(conn)
    assert state == fold(ClusterState.empty(), events)
    op = state.operations[-1]
    assert op.accepted and op.requested_by == "ops" and op.reason == "n2 has the most WAL"
    # A rebuild from the rewritten events gives the same projection.
    await conn.fetchval("SELECT pgraft.rebuild_projections()")
    assert await load_state(conn) == state

    await asyncio.to_thread(schema.downgrade, dsn, "0004")
    row = await conn.fetchrow(
        "SELECT type, payload FROM pgraft.events WHERE type = 'switchover_requested' ORDER BY position DESC LIMIT 1"
    )
    assert row is not None and row["type"] == "switchover_requested"
    restored = e.decode_event(row["type"], 1, row["payload"])
    assert isinstance(restored, e.SwitchoverRequested) and restored.reason == accepted_reason
    (after,) = await conn.fetch("SELECT reason FROM pgraft.operation_history")
    assert after["reason"] == accepted_reason
