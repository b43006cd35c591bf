"""The apply path writes the projection rows from the Python fold (``ram.projections.rows`` through
``pgraft.apply_committed``); the SQL fold (``pgraft.rebuild_projections``) must write the very same
rows, table by table, whatever the events and however they are cut into batches."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from ram.eventstore import events as e
from ram.eventstore.store import EntryEvents, batch_columns
from ram.projections.rows import projection_changes
from ram.projections.sql import load_state
from ram.projections.state import ClusterState, fold

from .strategies import stored_sequences
from .test_fold import T0, added
from .test_sql_projection import DB_SETTINGS, conn, edge_case_log

__all__ = ["conn"]

_APPLY = (
    "SELECT pgraft.apply_committed($1, $2, $3::bigint[], $4::integer[], $5::text[], $6::integer[], "
    "$7::jsonb[], $8::bigint[], $9::integer[], $10::timestamptz[], $11::jsonb)"
)
_RESET = "TRUNCATE pgraft.events; UPDATE pgraft.applied SET applied_index = 0; SELECT pgraft.rebuild_projections();"
_TABLES = {
    "cluster": "SELECT * FROM pgraft.cluster",
    "member": "SELECT * FROM pgraft.member ORDER BY name",
    "timeline_history": "SELECT * FROM pgraft.timeline_history ORDER BY seq",
    "operation_history": "SELECT * FROM pgraft.operation_history ORDER BY seq",
    "dynamic_config": "SELECT key, value::text FROM pgraft.dynamic_config ORDER BY key",
    "projection_state": "SELECT * FROM pgraft.projection_state",
}


async def tables(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, sql in _TABLES.items():
        rows = [dict(r) for r in await conn.fetch(sql)]
        if name == "dynamic_config":
            rows = [{"key": r["key"], "value": json.loads(r["value"])} for r in rows]
        if name == "operation_history":
            for r in rows:
                r["candidates"] = json.loads(r["candidates"])
        out[name] = rows
    return out


def differences(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Column by column, where two table dumps differ (empty: identical)."""
    out = []
    for table in a:
        if len(a[table]) != len(b[table]):
            out.append(f"{table}: {len(a[table])} rows vs {len(b[table])}")
            continue
        for i, (x, y) in enumerate(zip(a[table], b[table], strict=True)):
            out.extend(f"{table}[{i}].{k}: {x[k]!r} vs {y.get(k)!r}" for k in x if x[k] != y.get(k))
    return out


async def apply_in_batches(conn: asyncpg.Connection, seq: list[e.StoredEvent], cuts: list[int]) -> ClusterState:
    """Apply every position 1..last of ``seq`` (positions without events too) in batches ending at ``cuts``."""
    last = seq[-1].position if seq else 0
    by_position: dict[int, list[e.StoredEvent]] = {}
    for se in seq:
        by_position.setdefault(se.position, []).append(se)
    state = ClusterState.empty()
    first = 1
    for cut in [*sorted(c for c in set(cuts) if 0 < c < last), last]:
        if cut < first:
            continue
        stored = [se for p in range(first, cut + 1) for se in by_position.get(p, [])]
        new = fold(state, stored)
        batch = [_entry(p, by_position.get(p, [])) for p in range(first, cut + 1)]
        rows = json.dumps(projection_changes(state, new))
        assert await conn.fetchval(_APPLY, first, cut, *batch_columns(batch), rows) == cut
        state, first = new, cut + 1
    return state


def one_entry_one_origin(seq: list[e.StoredEvent]) -> list[e.StoredEvent]:
    """Events of one position come from one Raft entry: one term, proposer and timestamp."""
    first: dict[int, e.StoredEvent] = {}
    out = []
    for se in seq:
        head = first.setdefault(se.position, se)
        out.append(se.model_copy(update={"term": head.term, "proposer": head.proposer, "ts": head.ts}))
    return out


def _entry(position: int, group: list[e.StoredEvent]) -> EntryEvents:
    """A committed entry: its events, or none (positions without events are applied too)."""
    if not group:
        return EntryEvents(position, 1, 0, T0, [])
    return EntryEvents(position, group[0].term, group[0].proposer, group[0].ts, [se.event for se in group])


@DB_SETTINGS
@given(seq=stored_sequences(max_size=30), data=st.data())
async def test_rows_from_the_fold_equal_the_sql_fold(
    conn: asyncpg.Connection, seq: list[e.StoredEvent], data: st.DataObject
) -> None:
    await conn.execute(_RESET)
    seq = one_entry_one_origin(seq)
    last = seq[-1].position if seq else 0
    cuts = data.draw(st.lists(st.integers(1, max(1, last)), max_size=5))
    state = await apply_in_batches(conn, seq, cuts)
    assert state == fold(ClusterState.empty(), seq)
    assert await load_state(conn) == state
    written = await tables(conn)
    await conn.fetchval("SELECT pgraft.rebuild_projections()")
    assert differences(written, await tables(conn)) == []


async def test_edge_cases_and_idempotence(conn: asyncpg.Connection) -> None:
    log = edge_case_log()
    await conn.execute(_RESET)
    state = await apply_in_batches(conn, log, [3, 7, 8, 12])
    assert await load_state(conn) == state
    written = await tables(conn)
    await conn.fetchval("SELECT pgraft.rebuild_projections()")
    assert differences(written, await tables(conn)) == []
    # A retry of a batch already applied, and a batch after a gap, write nothing.
    last = log[-1].position
    again = batch_columns([_entry(last, [se for se in log if se.position == last])])
    assert await conn.fetchval(_APPLY, last, last, *again, "{}") == last
    later = batch_columns([EntryEvents(last + 2, 1, 0, T0, [added("n7", 7)])])
    assert await conn.fetchval(_APPLY, last + 2, last + 2, *later, "{}") == last
    assert await tables(conn) == written
