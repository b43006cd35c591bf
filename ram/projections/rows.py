"""The projection rows a batch of applied entries changes, from the Python fold (pure).

Folding events in PL/pgSQL (``pgraft.apply_events``) costs about 0.1 ms per event in the store;
on the apply path that was most of the cost of a committed command, on every node. The node already
folds every event in memory, so the apply path writes the projection rows the fold changed instead:
one JSON document per batch (``pgraft.apply_committed``), where only what changed is listed, by
object identity (the fold copies what it changes and shares the rest). ``pgraft.apply_events`` stays
the reference: ``pgraft.rebuild_projections()`` refolds in SQL, and a test checks that both write
the very same rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ram.lsn import format_lsn
from ram.projections.state import ClusterState, Member, OperationRecord, TimelineRecord

__all__ = ["projection_changes"]


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _lsn(value: int | None) -> str | None:
    return None if value is None else format_lsn(value)


def _cluster_key(s: ClusterState) -> tuple[Any, ...]:
    return (
        s.cluster_id, s.cluster_name, s.bootstrapped_position, s.primary, s.timeline, s.raft_leader,
        s.raft_leader_node_id, s.raft_term, s.sync_mode, s.num_sync, s.sync_standbys, s.maintenance,
        s.maintenance_reason, s.maintenance_by, s.pending_restart,
    )


def _cluster_row(s: ClusterState) -> dict[str, Any]:
    return {
        "cluster_id": s.cluster_id,
        "cluster_name": s.cluster_name,
        "bootstrapped_position": s.bootstrapped_position,
        "primary_name": s.primary,
        "timeline": s.timeline,
        "raft_leader": s.raft_leader,
        "raft_leader_node_id": s.raft_leader_node_id,
        "raft_term": s.raft_term,
        "sync_mode": s.sync_mode,
        "num_sync": s.num_sync,
        "sync_standbys": list(s.sync_standbys),
        "maintenance": s.maintenance,
        "maintenance_reason": s.maintenance_reason,
        "maintenance_by": s.maintenance_by,
        "pending_restart": list(s.pending_restart),
    }


def _member_row(m: Member) -> dict[str, Any]:
    return {
        "name": m.name,
        "node_id": m.node_id,
        "raft_address": m.raft_address,
        "api_address": m.api_address,
        "pg_host": m.pg_host,
        "pg_port": m.pg_port,
        "nofailover": m.tags.nofailover,
        "noloadbalance": m.tags.noloadbalance,
        "nosync": m.tags.nosync,
        "failover_priority": m.tags.failover_priority,
        "is_learner": m.is_learner,
        "added_position": m.added_position,
        "healthy": m.healthy,
        "pg_running": m.pg_running,
        "reported_role": m.reported_role,
        "timeline": m.timeline,
        "lsn": _lsn(m.lsn),
        "lag_bytes": m.lag_bytes,
        "health_reason": m.health_reason,
        "health_position": m.health_position,
        "health_at": _ts(m.health_at),
        "following": m.following,
        "fenced": m.fenced,
        "fence_reason": m.fence_reason,
        "rejoin_method": m.rejoin_method,
        "pending_action": m.pending_action,
        "pending_action_position": m.pending_action_position,
        "lease_s": m.lease_s,
    }


def _timeline_row(seq: int, t: TimelineRecord) -> dict[str, Any]:
    return {"seq": seq, "timeline": t.timeline, "primary_name": t.primary, "lsn": _lsn(t.lsn),
            "position": t.position, "at": _ts(t.at)}


def _operation_row(seq: int, o: OperationRecord) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": o.kind,
        "outcome": o.outcome,
        "started_position": o.started_position,
        "started_at": _ts(o.started_at),
        "old_primary": o.old_primary,
        "new_primary": o.new_primary,
        "candidate": o.candidate,
        "candidates": [c.model_dump(mode="json") for c in o.candidates],
        "reason": o.reason,
        "requested_by": o.requested_by,
        "scheduled_at": _ts(o.scheduled_at),
        "error": o.error,
        "completed_position": o.completed_position,
        "completed_at": _ts(o.completed_at),
        "duration_ms": o.duration_ms,
        "timeline": o.timeline,
        "lsn": _lsn(o.lsn),
        "accepted": o.accepted,
    }


def _changed_seqs(old: tuple[Any, ...], new: tuple[Any, ...]) -> list[int]:
    """1-based positions of ``new`` that are not the very object at that position of ``old``."""
    return [i + 1 for i, item in enumerate(new) if i >= len(old) or old[i] is not item]


def projection_changes(old: ClusterState, new: ClusterState) -> dict[str, Any]:
    """What ``pgraft.apply_committed`` must write so the projection tables show ``new`` (they show
    ``old``): a JSON-ready document with only the changed rows."""
    doc: dict[str, Any] = {"last_event_position": new.last_position, "events_applied": new.events_applied}
    if new is old:
        return doc
    if _cluster_key(new) != _cluster_key(old):
        doc["cluster"] = _cluster_row(new)
    if new.members is not old.members:
        changed = [_member_row(m) for name, m in new.members.items() if old.members.get(name) is not m]
        removed = [name for name in old.members if name not in new.members]
        if changed:
            doc["members"] = changed
        if removed:
            doc["members_removed"] = removed
    if new.timeline_history is not old.timeline_history:
        seqs = _changed_seqs(old.timeline_history, new.timeline_history)
        if seqs:
            doc["timelines"] = [_timeline_row(s, new.timeline_history[s - 1]) for s in seqs]
        if len(new.timeline_history) < len(old.timeline_history):
            doc["timelines_keep"] = len(new.timeline_history)
    if new.operations is not old.operations:
        seqs = _changed_seqs(old.operations, new.operations)
        if seqs:
            doc["operations"] = [_operation_row(s, new.operations[s - 1]) for s in seqs]
        if len(new.operations) < len(old.operations):
            doc["operations_keep"] = len(new.operations)
    if new.dynamic_config is not old.dynamic_config:
        before = old.dynamic_config
        changed_config = {k: v for k, v in new.dynamic_config.items() if k not in before or before[k] is not v}
        removed_keys = [k for k in before if k not in new.dynamic_config]
        if changed_config:
            doc["config"] = changed_config
        if removed_keys:
            doc["config_removed"] = removed_keys
    return doc
