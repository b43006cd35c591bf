"""Reading the SQL projections (migration 0002) back as a :class:`ClusterState`.

The projection tables are written by ``pgraft.apply_events`` inside the apply transaction; this
module only reads them, in one round trip per table, inside one repeatable-read snapshot when the
caller is not already in a transaction.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import cast

import asyncpg
from pydantic import JsonValue, TypeAdapter

from ram.eventstore.events import CandidateInfo, MemberTags
from ram.projections.state import ClusterState, Member, OperationRecord, TimelineRecord

__all__ = ["load_state"]

_CANDIDATES: TypeAdapter[tuple[CandidateInfo, ...]] = TypeAdapter(tuple[CandidateInfo, ...])

# pg_lsn comes back as text; subtracting '0/0' gives the byte position as numeric.
_MEMBERS = """
SELECT m.*, (m.lsn - '0/0'::pg_lsn) AS lsn_bytes FROM pgraft.member m ORDER BY m.name
"""
_TIMELINES = """
SELECT h.*, (h.lsn - '0/0'::pg_lsn) AS lsn_bytes FROM pgraft.timeline_history h ORDER BY h.seq
"""
_OPERATIONS = """
SELECT o.*, o.candidates::text AS candidates_json, (o.lsn - '0/0'::pg_lsn) AS lsn_bytes
FROM pgraft.operation_history o ORDER BY o.seq
"""


def _int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


async def _load(conn: asyncpg.Connection) -> ClusterState:
    c = await conn.fetchrow("SELECT * FROM pgraft.cluster")
    ps = await conn.fetchrow("SELECT * FROM pgraft.projection_state")
    if c is None or ps is None:
        raise RuntimeError("pgraft projection rows are missing; run the migrations (revision 0002)")
    member_rows = await conn.fetch(_MEMBERS)
    timeline_rows = await conn.fetch(_TIMELINES)
    op_rows = await conn.fetch(_OPERATIONS)
    config_rows = await conn.fetch("SELECT key, value::text AS value FROM pgraft.dynamic_config")

    members: dict[str, Member] = {}
    for r in member_rows:
        members[r["name"]] = Member(
            name=r["name"],
            node_id=r["node_id"],
            raft_address=r["raft_address"],
            api_address=r["api_address"],
            pg_host=r["pg_host"],
            pg_port=r["pg_port"],
            tags=MemberTags(
                nofailover=r["nofailover"],
                noloadbalance=r["noloadbalance"],
                nosync=r["nosync"],
                failover_priority=r["failover_priority"],
            ),
            is_learner=r["is_learner"],
            added_position=r["added_position"],
            healthy=r["healthy"],
            pg_running=r["pg_running"],
            reported_role=r["reported_role"],
            timeline=r["timeline"],
            lsn=_int(r["lsn_bytes"]),
            lag_bytes=r["lag_bytes"],
            health_reason=r["health_reason"],
            health_position=r["health_position"],
            health_at=r["health_at"],
            following=r["following"],
            fenced=r["fenced"],
            fence_reason=r["fence_reason"],
            rejoin_method=r["rejoin_method"],
            pending_action=r.get("pending_action"),  # columns of revision 0004
            pending_action_position=r.get("pending_action_position"),
            lease_s=r.get("lease_s"),  # column of revision 0008
        )
    timelines = tuple(
        TimelineRecord(
            timeline=r["timeline"],
            primary=r["primary_name"],
            lsn=int(r["lsn_bytes"]),
            position=r["position"],
            at=r["at"],
        )
        for r in timeline_rows
    )
    operations = tuple(
        OperationRecord(
            kind=r["kind"],
            outcome=r["outcome"],
            started_position=r["started_position"],
            started_at=r["started_at"],
            old_primary=r["old_primary"],
            new_primary=r["new_primary"],
            candidate=r["candidate"],
            candidates=_CANDIDATES.validate_json(r["candidates_json"]),
            reason=r["reason"],
            requested_by=r["requested_by"],
            scheduled_at=r["scheduled_at"],
            error=r["error"],
            completed_position=r["completed_position"],
            completed_at=r["completed_at"],
            duration_ms=r["duration_ms"],
            timeline=r["timeline"],
            lsn=_int(r["lsn_bytes"]),
            accepted=r.get("accepted", False),  # column of revision 0005
        )
        for r in op_rows
    )
    config: dict[str, JsonValue] = {r["key"]: cast(JsonValue, json.loads(r["value"])) for r in config_rows}
    return ClusterState(
        cluster_id=c["cluster_id"],
        cluster_name=c["cluster_name"],
        bootstrapped_position=c["bootstrapped_position"],
        members=members,
        primary=c["primary_name"],
        timeline=c["timeline"],
        timeline_history=timelines,
        raft_leader=c["raft_leader"],
        raft_leader_node_id=c["raft_leader_node_id"],
        raft_term=c["raft_term"],
        sync_mode=c["sync_mode"],
        num_sync=c["num_sync"],
        sync_standbys=tuple(c["sync_standbys"]),
        maintenance=c["maintenance"],
        maintenance_reason=c["maintenance_reason"],
        maintenance_by=c["maintenance_by"],
        dynamic_config=config,
        pending_restart=tuple(c["pending_restart"]),
        operations=operations,
        last_position=ps["last_event_position"],
        events_applied=ps["events_applied"],
    )


async def load_state(conn: asyncpg.Connection) -> ClusterState:
    """The projections as a :class:`ClusterState` (consistent snapshot of all projection tables)."""
    if conn.is_in_transaction():
        return await _load(conn)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _load(conn)
