"""The SQL projections (migration 0002) against the Python fold, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ram.eventstore import events as e
from ram.eventstore import schema
from ram.projections.sql import load_state
from ram.projections.state import ClusterState, fold

from .strategies import stored_sequences
from .test_fold import BOOT, Log, added

_INSERT = """
INSERT INTO pgraft.events (position, sub, type, schema_version, payload, term, proposer, ts)
SELECT u.position, u.sub, u.type, u.schema_version, u.payload::jsonb, u.term, u.proposer, u.ts
FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::integer[], $5::text[], $6::bigint[],
            $7::integer[], $8::timestamptz[])
     AS u(position, sub, type, schema_version, payload, term, proposer, ts)
"""
_RESET = "TRUNCATE pgraft.events; SELECT pgraft.rebuild_projections();"

DB_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


async def insert(conn: asyncpg.Connection, seq: Sequence[e.StoredEvent]) -> None:
    cols: tuple[list[object], ...] = ([], [], [], [], [], [], [], [])
    for se in seq:
        type_, version, payload = e.encode_event(se.event)
        row = (se.position, se.sub, type_, version, json.dumps(payload), se.term, se.proposer, se.ts)
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    await conn.execute(_INSERT, *cols)


@pytest.fixture
async def conn(store_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    await asyncio.to_thread(schema.upgrade, store_dsn)
    c = await asyncpg.connect(store_dsn)
    try:
        yield c
    finally:
        await c.close()


async def test_fresh_projection_is_empty_state(conn: asyncpg.Connection) -> None:
    assert await load_state(conn) == ClusterState.empty()
    status = await conn.fetchrow("SELECT * FROM pgraft.cluster_status")
    assert status is not None
    assert status["member_count"] == 0 and status["primary_name"] is None and status["sync_mode"] == "off"
    assert await conn.fetch("SELECT * FROM pgraft.members") == []
    assert await conn.fetch("SELECT * FROM pgraft.failover_history") == []


@DB_SETTINGS
@given(seq=stored_sequences(max_size=30))
async def test_rebuild_equals_python_fold(conn: asyncpg.Connection, seq: list[e.StoredEvent]) -> None:
    await conn.execute(_RESET)
    await insert(conn, seq)
    n = await conn.fetchval("SELECT pgraft.rebuild_projections()")
    assert n == len(seq)
    assert await load_state(conn) == fold(ClusterState.empty(), seq)
    # What the store reads back decodes to exactly what was written.
    rows = await conn.fetch("SELECT type, schema_version, payload FROM pgraft.events ORDER BY position, sub")
    assert [e.decode_event(r["type"], r["schema_version"], r["payload"]) for r in rows] == [s.event for s in seq]


@DB_SETTINGS
@given(seq=stored_sequences(max_size=30), data=st.data())
async def test_incremental_apply_equals_python_fold(
    conn: asyncpg.Connection, seq: list[e.StoredEvent], data: st.DataObject
) -> None:
    await conn.execute(_RESET)
    await insert(conn, seq)
    last = seq[-1].position if seq else 0
    # Chunk boundaries anywhere in [0, last + 2]: empty ranges and ranges without events included.
    cuts = sorted(set(data.draw(st.lists(st.integers(0, last + 2), max_size=4))) | {last})
    prev = 0
    for cut in cuts:
        await conn.fetchval("SELECT pgraft.apply_events($1, $2)", prev, cut)
        prev = max(prev, cut)
    state = await load_state(conn)
    assert state == fold(ClusterState.empty(), seq)
    assert await conn.fetchval("SELECT applied_position FROM pgraft.projection_state") == max(cuts)


async def test_apply_events_contract(conn: asyncpg.Connection) -> None:
    log = Log()
    seq = [*log(BOOT), *log(added("n3", 3)), *log(e.PrimaryPromoted(name="n1", timeline=1, lsn=0x3000060))]
    await insert(conn, seq)
    assert await conn.fetchval("SELECT pgraft.apply_events(0, 0)") == 0  # empty range
    assert await conn.fetchval("SELECT pgraft.apply_events(5, 2)") == 0  # empty (reversed) range
    with pytest.raises(asyncpg.DataError, match="never applied"):
        await conn.fetchval("SELECT pgraft.apply_events(1, 3)")  # would skip position 1
    assert await conn.fetchval("SELECT pgraft.apply_events(0, 2)") == 2
    with pytest.raises(asyncpg.DataError, match="already applied"):
        await conn.fetchval("SELECT pgraft.apply_events(1, 3)")  # would re-apply position 2
    assert await conn.fetchval("SELECT pgraft.apply_events(2, 3)") == 1
    assert await load_state(conn) == fold(ClusterState.empty(), seq)

    status = await conn.fetchrow("SELECT * FROM pgraft.cluster_status")
    assert status is not None
    assert (status["cluster_name"], status["primary_name"], status["timeline"]) == ("main", "n1", 1)
    assert (status["member_count"], status["healthy_count"], status["applied_position"]) == (3, 0, 3)
    members = await conn.fetch("SELECT name, role, raft_role, nofailover, pg_port FROM pgraft.members")
    assert [tuple(r) for r in members] == [
        ("n1", "primary", "voter", False, 5432),
        ("n2", "replica", "voter", True, 5432),
        ("n3", "replica", "voter", False, 5432),
    ]
    tl = await conn.fetchrow("SELECT lsn::text AS lsn FROM pgraft.timeline_history")
    assert tl is not None and tl["lsn"] == "0/3000060"


def edge_case_log() -> list[e.StoredEvent]:
    """A hand-written sequence hitting every fold rule's corner (random sequences rarely line them up)."""
    log = Log()
    tags = e.MemberTags(nofailover=True, nosync=True, failover_priority=0)
    return [
        *log(e.MemberHealthChanged(name="n1", healthy=True, pg_running=True)),  # before bootstrap: unknown
        *log(
            e.ClusterBootstrapped(
                cluster_id="c-1",
                cluster_name="main",
                members=BOOT.members,
                dynamic_config={"ttl": 30, "nothing": None, "nested": {"a": [1, 2.5, "x"]}},
            )
        ),
        *log(BOOT.model_copy(update={"cluster_id": "c-2"})),  # second bootstrap: ignored
        *log(added("n1", 9), added("n9", 2), added("n3", 3, learner=True), added("n4", 4, learner=True)),
        *log(e.LearnerPromoted(name="n3", node_id=4), e.LearnerPromoted(name="n4", node_id=4)),
        *log(e.MemberTagsChanged(name="n3", tags=tags), e.MemberTagsChanged(name="zz", tags=tags)),
        *log(e.RaftLeaderElected(term=2, leader_name="n1", leader_node_id=1)),
        *log(e.RaftLeaderElected(term=2, leader_name="n2", leader_node_id=2)),  # same term: later wins
        *log(e.RaftLeaderElected(term=1, leader_name="n3", leader_node_id=3)),  # stale: ignored
        *log(e.PrimaryPromoted(name="n1", timeline=1, lsn=10)),
        *log(e.PrimaryPromoted(name="n1", timeline=1, lsn=20)),  # same pair: no history row
        *log(e.SynchronousStandbysChanged(mode="quorum", num_sync=1, standbys=("n4", "n2", "n3"))),
        *log(
            e.MemberHealthChanged(
                name="n2", healthy=True, pg_running=True, role="replica", timeline=1, lsn=2**64 - 1, lag_bytes=0
            )
        ),
        *log(e.SwitchoverRequested(primary="n1", candidate="n2", requested_by="alice", reason="patching")),
        *log(e.SwitchoverFailed(primary="n1", candidate=None, reason="n2 lagging")),  # keeps candidate n2
        *log(e.SwitchoverFailed(primary="n1", candidate="n3", reason="orphan")),  # closed record of its own
        *log(e.FailoverStarted(old_primary="n1", reason="down", chosen="n2")),
        *log(
            e.FailoverStarted(
                old_primary="n1",
                reason="down again",
                chosen="n3",
                candidates=(e.CandidateInfo(name="n3", eligible=True),),
            )
        ),  # supersedes
        *log(e.NodeFenced(name="n1", reason="lease", lease_expired_at_ms=5), e.NodeFenced(name="n3", reason="x")),
        *log(e.FailoverCompleted(old_primary="n1", new_primary="n3", timeline=2, lsn=30, duration_ms=7)),
        *log(e.FailoverCompleted(old_primary="n3", new_primary="n2", timeline=3, lsn=40, duration_ms=8)),  # orphan
        *log(e.FailoverFailed(old_primary=None, reason="orphan failure")),
        *log(e.ReplicaRejoined(name="n1", primary="n2", method="clone"), e.ReplicaFollowing(name="n3", primary="n2")),
        *log(e.MemberRemoved(name="n4", node_id=99), e.MemberRemoved(name="n4", node_id=4, reason="gone")),
        *log(e.MemberRemoved(name="n2", node_id=2)),  # the primary: cleared
        *log(
            e.DynamicConfigChanged(
                changes={
                    "ttl": e.ConfigChange(old=30, new=None),
                    "absent": e.ConfigChange(new=None),
                    "work_mem": e.ConfigChange(new="64MB"),
                },
                pending_restart=("work_mem", "max_connections"),
            )
        ),
        *log(e.MaintenanceModeChanged(enabled=True, reason="r", by="b")),
        *log(e.CommandRejected(command="remove_member", reason="no such member")),
        *log(e.PrimaryPromoted(name="n1", timeline=4, lsn=50)),
        *log(e.PrimaryPromoted(name="n3", timeline=4, lsn=60)),  # same timeline, other primary: a new row
    ]


async def test_edge_cases_sql_equals_python(conn: asyncpg.Connection) -> None:
    seq = edge_case_log()
    expected = fold(ClusterState.empty(), seq)
    assert (expected.raft_leader, expected.primary, expected.cluster_id) == ("n2", "n3", "c-1")
    assert [o.outcome for o in expected.operations] == [
        "failed",
        "failed",
        "superseded",
        "succeeded",
        "succeeded",
        "failed",
    ]
    assert expected.operations[0].candidate == "n2"
    assert len(expected.timeline_history) == 5
    assert not expected.members["n3"].fenced and expected.members["n3"].tags.nofailover
    assert "n4" not in expected.members and "n9" not in expected.members
    assert expected.sync_standbys == ("n3",)
    await insert(conn, seq)
    # One go, and one position at a time.
    await conn.fetchval("SELECT pgraft.rebuild_projections()")
    assert await load_state(conn) == expected
    await conn.execute(
        "TRUNCATE pgraft.member, pgraft.timeline_history, pgraft.operation_history,"
        " pgraft.dynamic_config, pgraft.cluster; INSERT INTO pgraft.cluster DEFAULT VALUES;"
        " UPDATE pgraft.projection_state SET applied_position = 0, last_event_position = 0,"
        " events_applied = 0"
    )
    for pos in range(seq[-1].position):
        await conn.fetchval("SELECT pgraft.apply_events($1, $2)", pos, pos + 1)
    assert await load_state(conn) == expected


async def test_unknown_type_and_newer_version_are_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO pgraft.events VALUES (1, 0, 'member_exploded', 1, '{}', 1, 1, now())")
    with pytest.raises(asyncpg.DataError, match="unknown event type member_exploded"):
        await conn.fetchval("SELECT pgraft.apply_events(0, 1)")
    await conn.execute("UPDATE pgraft.events SET type = 'command_rejected', schema_version = 2")
    with pytest.raises(asyncpg.DataError, match="schema_version 2"):
        await conn.fetchval("SELECT pgraft.rebuild_projections()")


async def test_views_after_failover(conn: asyncpg.Connection) -> None:
    log = Log()
    seq = [
        *log(BOOT, e.PrimaryPromoted(name="n1", timeline=1, lsn=100)),
        *log(e.RaftLeaderElected(term=2, leader_name="n2", leader_node_id=2)),
        *log(e.MemberHealthChanged(name="n2", healthy=True, pg_running=True, role="replica", lsn=90, lag_bytes=10)),
        *log(e.SynchronousStandbysChanged(mode="on", num_sync=1, standbys=("n2",))),
        *log(e.FailoverStarted(old_primary="n1", reason="n1 unreachable", chosen="n2")),
        *log(e.NodeFenced(name="n1", reason="lease expired")),
        *log(e.FailoverCompleted(old_primary="n1", new_primary="n2", timeline=2, lsn=200, duration_ms=2100)),
        *log(e.SwitchoverRequested(primary="n2", candidate="n1", requested_by="ops")),
    ]
    await insert(conn, seq)
    await conn.fetchval("SELECT pgraft.apply_events(0, $1)", log.position)
    status = await conn.fetchrow("SELECT * FROM pgraft.cluster_status")
    assert status is not None
    assert (status["primary_name"], status["timeline"], status["raft_leader"], status["raft_term"]) == (
        "n2",
        2,
        "n2",
        2,
    )
    assert (status["sync_mode"], status["sync_standbys"], status["healthy_count"]) == ("on", ["n2"], 1)
    assert status["operation_in_progress"] == "switchover"
    rows = {r["name"]: r for r in await conn.fetch("SELECT * FROM pgraft.members")}
    assert (rows["n1"]["role"], rows["n1"]["fenced"]) == ("fenced", True)
    assert (rows["n2"]["role"], rows["n2"]["raft_role"], rows["n2"]["sync_standby"]) == ("primary", "leader", True)
    assert rows["n2"]["lag"] == "10 bytes"
    hist = await conn.fetch("SELECT kind, outcome, old_primary, new_primary, duration_ms FROM pgraft.failover_history")
    assert [tuple(r) for r in hist] == [
        ("switchover", "in_progress", "n2", None, None),
        ("failover", "succeeded", "n1", "n2", 2100),
    ]
    assert await load_state(conn) == fold(ClusterState.empty(), seq)


async def test_upgrade_with_existing_events_rebuilds_and_downgrade_drops(store_dsn: str) -> None:
    await asyncio.to_thread(schema.upgrade, store_dsn, "0001")
    log = Log()
    seq = [*log(BOOT), *log(e.PrimaryPromoted(name="n2", timeline=1, lsn=1))]
    c = await asyncpg.connect(store_dsn)
    try:
        await insert(c, seq)
        await c.execute("UPDATE pgraft.applied SET applied_index = 5")
        await asyncio.to_thread(schema.upgrade, store_dsn, "0002")
        assert await load_state(c) == fold(ClusterState.empty(), seq)
        assert await c.fetchval("SELECT applied_position FROM pgraft.projection_state") == 5
        await asyncio.to_thread(schema.downgrade, store_dsn, "0001")
        left = await c.fetchval(
            """SELECT count(*) FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
               WHERE n.nspname = 'pgraft' AND cl.relname IN
                 ('cluster', 'member', 'timeline_history', 'operation_history', 'dynamic_config',
                  'projection_state', 'cluster_status', 'members', 'failover_history')"""
        )
        funcs = await c.fetchval(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'pgraft' AND p.proname <> 'notify_events'"
        )
        assert (left, funcs) == (0, 0)
        assert await c.fetchval("SELECT count(*) FROM pgraft.events") == 2
        await asyncio.to_thread(schema.upgrade, store_dsn)
        await c.reload_schema_state()  # later revisions add columns: plans cached above are stale
        assert (await load_state(c)).primary == "n2"
    finally:
        await c.close()
