"""The pure fold: events -> current cluster state.

``fold(state, events)`` is deterministic and total: every sequence of valid events folds without
error, and ``fold(fold(s, a), b) == fold(s, a + b)``.  ``pgraft.apply_events`` (migration 0002)
implements the same rules in SQL; the property tests check they agree.

Rules (the SQL must match them exactly):

* Members are keyed by name; node ids are unique too.  ``member_added`` (and each member of
  ``cluster_bootstrapped``) is ignored when its name or node id is already taken.
* Events about a member that is not known are ignored for the member rows (``member_removed`` and
  ``learner_promoted`` additionally need the node id to match).  Cluster-level facts are recorded
  regardless of membership: the primary set by a promotion/failover/switchover, the Raft leader,
  the synchronous set, history records.
* ``cluster_bootstrapped`` applies only once (while ``cluster_id`` is unset); it sets identity, adds
  the listed members and replaces the dynamic configuration.  A second one is ignored.
* ``raft_leader_elected`` is ignored when its term is lower than the recorded term.
* ``primary_promoted``, ``failover_completed`` and ``switchover_completed`` make ``name`` the
  primary on ``timeline``; a timeline-history record ``(timeline, primary, lsn, position)`` is
  appended whenever the (primary, timeline) pair changes.  The new primary's member row (if any)
  is unfenced and follows nobody.
* ``replica_following`` / ``replica_rejoined`` set the member's upstream and clear its fence;
  ``node_fenced`` sets the fence.  ``member_removed`` of the primary clears the primary; a removed
  member also leaves the synchronous set.
* Operations (failover / switchover history): a ``*_started`` / ``switchover_requested`` event marks
  any in-progress operation of the same kind ``superseded`` and appends an ``in_progress`` record;
  ``*_completed`` / ``*_failed`` closes the newest in-progress record of that kind (outcome
  ``succeeded`` / ``failed``), or appends a closed record when none is in progress.
* ``synchronous_standbys_changed`` stores the set sorted; ``dynamic_config_changed`` sets or (with
  ``new=None``) removes keys and replaces ``pending_restart`` (stored sorted, unique).
* ``command_rejected`` changes nothing but the counters.
* ``last_position`` is the position of the last event folded, ``events_applied`` counts events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from pydantic import JsonValue

from ram.eventstore.events import (
    CallbackRan,
    CandidateInfo,
    ClusterBootstrapped,
    CommandRejected,
    DynamicConfigChanged,
    Event,
    FailoverCompleted,
    FailoverFailed,
    FailoverStarted,
    LearnerPromoted,
    MaintenanceModeChanged,
    MemberActionCompleted,
    MemberActionRequested,
    MemberAdded,
    MemberHealthChanged,
    MemberLeaseAnnounced,
    MemberRemoved,
    MemberTags,
    MemberTagsChanged,
    NodeFenced,
    PrimaryPromoted,
    RaftLeaderElected,
    ReplicaFollowing,
    ReplicaRejoined,
    SwitchoverAccepted,
    SwitchoverCompleted,
    SwitchoverFailed,
    SwitchoverRequested,
    SynchronousStandbysChanged,
)

__all__ = ["ClusterState", "Member", "OperationRecord", "PlacedEvent", "TimelineRecord", "fold"]

class PlacedEvent(Protocol):
    """What the fold reads of an event with its place in the log. A ``StoredEvent`` is one; the
    apply path passes a lighter object (building a validated model per event cost more than the fold)."""

    @property
    def position(self) -> int: ...

    @property
    def ts(self) -> datetime: ...

    @property
    def event(self) -> Event: ...


Role = Literal["primary", "replica", "unknown"]
OperationKind = Literal["failover", "switchover"]
Outcome = Literal["in_progress", "succeeded", "failed", "superseded"]


_T = TypeVar("_T")


def replace(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` without re-running ``__init__``: the fold runs once per event on every
    node, and the generic version dominated the apply path. Field names are checked, types are
    the caller's (the fold's) responsibility, as they were built from validated events."""
    names = _field_names(type(obj))
    new = _copy(obj)
    for name, value in changes.items():
        if name not in names:
            raise TypeError(f"{type(obj).__name__} has no field {name!r}")
        object.__setattr__(new, name, value)
    return new


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return names


_COPIERS: dict[type, Callable[[Any], Any]] = {}


def _copy(obj: _T) -> _T:
    """A shallow copy of a frozen slots dataclass. ``copy.copy`` goes through pickle's slow path, and
    a loop over the field names costs twice what a function written for the class does, which is
    what this makes once per class (the way ``dataclasses`` writes ``__init__``): the fold copies
    the state once per event, on every node."""
    cls = type(obj)
    copier = _COPIERS.get(cls)
    if copier is None:
        body = "".join(f"    _set(new, {name!r}, obj.{name})\n" for name in _field_names(cls))
        source = f"def copy(obj):\n    new = _new(cls)\n{body}    return new\n"
        namespace: dict[str, Any] = {"_new": object.__new__, "_set": object.__setattr__, "cls": cls}
        exec(source, namespace)  # the names are the dataclass's own field names
        copier = _COPIERS[cls] = namespace["copy"]
    return copier(obj)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    node_id: int
    raft_address: str
    api_address: str
    pg_host: str
    pg_port: int
    tags: MemberTags = field(default_factory=MemberTags)
    is_learner: bool = False
    added_position: int = 0
    # Last health report (None: never reported).
    healthy: bool | None = None
    pg_running: bool | None = None
    reported_role: Role = "unknown"
    timeline: int | None = None
    lsn: int | None = None
    lag_bytes: int | None = None
    health_reason: str = ""
    health_position: int | None = None
    health_at: datetime | None = None
    # Replication / fencing.
    following: str | None = None
    fenced: bool = False
    fence_reason: str = ""
    rejoin_method: Literal["rewind", "clone"] | None = None
    # An operator's restart / reinit request not yet carried out (and the position it was asked at).
    pending_action: Literal["restart", "reinit"] | None = None
    pending_action_position: int | None = None
    #: The primary lease length this member announced (``member_lease_announced``); None: never
    #: announced, so it uses at most 2 s (``ram.ha.lease.UNANNOUNCED_LEASE_S``).
    lease_s: float | None = None


@dataclass(frozen=True, slots=True)
class TimelineRecord:
    timeline: int
    primary: str
    lsn: int
    position: int
    at: datetime


@dataclass(frozen=True, slots=True)
class OperationRecord:
    kind: OperationKind
    outcome: Outcome
    started_position: int
    started_at: datetime
    old_primary: str | None = None
    new_primary: str | None = None
    candidate: str | None = None
    candidates: tuple[CandidateInfo, ...] = ()
    reason: str = ""
    requested_by: str = ""
    scheduled_at: datetime | None = None
    error: str = ""
    completed_position: int | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    timeline: int | None = None
    lsn: int | None = None
    #: A switchover the arbiter accepted (``switchover_accepted``): its candidate is final and the
    #: lease moves; before that it is only a request the arbiter may still refuse.
    accepted: bool = False


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Current state; treat the mappings as read-only (every fold step copies what it changes)."""

    cluster_id: str | None = None
    cluster_name: str | None = None
    bootstrapped_position: int | None = None
    members: Mapping[str, Member] = field(default_factory=dict)
    primary: str | None = None
    timeline: int | None = None
    timeline_history: tuple[TimelineRecord, ...] = ()
    raft_leader: str | None = None
    raft_leader_node_id: int | None = None
    raft_term: int = 0
    sync_mode: Literal["off", "on", "quorum"] = "off"
    num_sync: int = 0
    sync_standbys: tuple[str, ...] = ()
    maintenance: bool = False
    maintenance_reason: str = ""
    maintenance_by: str = ""
    dynamic_config: Mapping[str, JsonValue] = field(default_factory=dict)
    pending_restart: tuple[str, ...] = ()
    operations: tuple[OperationRecord, ...] = ()
    last_position: int = 0
    events_applied: int = 0

    @classmethod
    def empty(cls) -> ClusterState:
        return cls()

    def fold(self, events: Iterable[PlacedEvent]) -> ClusterState:
        return fold(self, events)

    # Convenience for readers (API, HA controller).
    @property
    def voters(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, m in self.members.items() if not m.is_learner))

    @property
    def current_operation(self) -> OperationRecord | None:
        for op in reversed(self.operations):
            if op.outcome == "in_progress":
                return op
        return None


# ---------------------------------------------------------------------------------------------


def _with_member(state: ClusterState, member: Member) -> ClusterState:
    members = dict(state.members)
    members[member.name] = member
    return replace(state, members=members)


def _add_member(state: ClusterState, member: Member) -> ClusterState:
    if member.name in state.members or any(m.node_id == member.node_id for m in state.members.values()):
        return state
    return _with_member(state, member)


def _update_member(state: ClusterState, name: str, **changes: object) -> ClusterState:
    m = state.members.get(name)
    if m is None:
        return state
    return _with_member(state, replace(m, **changes))


def _set_primary(state: ClusterState, name: str, timeline: int, lsn: int, se: PlacedEvent) -> ClusterState:
    if state.primary != name or state.timeline != timeline:
        rec = TimelineRecord(timeline=timeline, primary=name, lsn=lsn, position=se.position, at=se.ts)
        state = replace(state, timeline_history=(*state.timeline_history, rec))
    state = replace(state, primary=name, timeline=timeline)
    return _update_member(state, name, fenced=False, fence_reason="", following=None)


def _opened(kind: OperationKind, se: PlacedEvent) -> OperationRecord:
    """An operation in progress that starts at ``se``."""
    return OperationRecord(kind=kind, outcome="in_progress", started_position=se.position, started_at=se.ts)


def _start_operation(state: ClusterState, rec: OperationRecord) -> ClusterState:
    ops = tuple(
        replace(op, outcome="superseded", completed_position=rec.started_position, completed_at=rec.started_at)
        if op.kind == rec.kind and op.outcome == "in_progress"
        else op
        for op in state.operations
    )
    return replace(state, operations=(*ops, rec))


def _close_operation(
    state: ClusterState, kind: OperationKind, outcome: Outcome, se: PlacedEvent, **changes: object
) -> ClusterState:
    ops = list(state.operations)
    for i in range(len(ops) - 1, -1, -1):
        if ops[i].kind == kind and ops[i].outcome == "in_progress":
            idx = i
            break
    else:
        ops.append(OperationRecord(kind=kind, outcome="in_progress", started_position=se.position, started_at=se.ts))
        idx = len(ops) - 1
    ops[idx] = replace(
        ops[idx],
        outcome=outcome,
        completed_position=se.position,
        completed_at=se.ts,
        **changes,
    )
    return replace(state, operations=tuple(ops))


def _apply(state: ClusterState, se: PlacedEvent) -> ClusterState:
    ev = se.event
    pos = se.position
    match ev:
        case ClusterBootstrapped():
            if state.cluster_id is not None:
                return state
            state = replace(
                state,
                cluster_id=ev.cluster_id,
                cluster_name=ev.cluster_name,
                bootstrapped_position=pos,
                dynamic_config=dict(ev.dynamic_config),
            )
            for spec in ev.members:
                state = _add_member(
                    state,
                    Member(
                        name=spec.name,
                        node_id=spec.node_id,
                        raft_address=spec.raft_address,
                        api_address=spec.api_address,
                        pg_host=spec.pg_host,
                        pg_port=spec.pg_port,
                        tags=spec.tags,
                        is_learner=False,
                        added_position=pos,
                    ),
                )
            return state
        case MemberAdded():
            return _add_member(
                state,
                Member(
                    name=ev.name,
                    node_id=ev.node_id,
                    raft_address=ev.raft_address,
                    api_address=ev.api_address,
                    pg_host=ev.pg_host,
                    pg_port=ev.pg_port,
                    tags=ev.tags,
                    is_learner=ev.as_learner,
                    added_position=pos,
                ),
            )
        case LearnerPromoted():
            m = state.members.get(ev.name)
            if m is None or m.node_id != ev.node_id:
                return state
            return _with_member(state, replace(m, is_learner=False))
        case MemberRemoved():
            m = state.members.get(ev.name)
            if m is None or m.node_id != ev.node_id:
                return state
            members = dict(state.members)
            del members[ev.name]
            return replace(
                state,
                members=members,
                primary=None if state.primary == ev.name else state.primary,
                sync_standbys=tuple(s for s in state.sync_standbys if s != ev.name),
            )
        case MemberTagsChanged():
            return _update_member(state, ev.name, tags=ev.tags)
        case RaftLeaderElected():
            if ev.term < state.raft_term:
                return state
            return replace(state, raft_term=ev.term, raft_leader=ev.leader_name, raft_leader_node_id=ev.leader_node_id)
        case MemberHealthChanged():
            return _update_member(
                state,
                ev.name,
                healthy=ev.healthy,
                pg_running=ev.pg_running,
                reported_role=ev.role,
                timeline=ev.timeline,
                lsn=ev.lsn,
                lag_bytes=ev.lag_bytes,
                health_reason=ev.reason,
                health_position=pos,
                health_at=se.ts,
            )
        case FailoverStarted():
            return _start_operation(
                state,
                OperationRecord(
                    kind="failover",
                    outcome="in_progress",
                    started_position=pos,
                    started_at=se.ts,
                    old_primary=ev.old_primary,
                    candidate=ev.chosen,
                    candidates=ev.candidates,
                    reason=ev.reason,
                ),
            )
        case FailoverCompleted():
            state = _close_operation(
                state,
                "failover",
                "succeeded",
                se,
                old_primary=ev.old_primary,
                new_primary=ev.new_primary,
                duration_ms=ev.duration_ms,
                timeline=ev.timeline,
                lsn=ev.lsn,
            )
            return _set_primary(state, ev.new_primary, ev.timeline, ev.lsn, se)
        case FailoverFailed():
            return _close_operation(state, "failover", "failed", se, old_primary=ev.old_primary, error=ev.reason)
        case SwitchoverAccepted():
            current = state.current_operation
            changes = {"old_primary": ev.primary, "candidate": ev.candidate, "reason": ev.reason, "accepted": True}
            if current is None or current.kind != "switchover":
                # The fold is total: an acceptance with no request in progress opens an accepted one.
                return _start_operation(state, replace(_opened("switchover", se), **changes))
            # The arbiter accepted the request in progress: the same operation, now with its
            # candidate (and a new started_position, which restarts the operation's timers).
            accepted = replace(current, started_position=pos, **changes)
            return replace(state, operations=tuple(accepted if op is current else op for op in state.operations))
        case SwitchoverRequested():
            return _start_operation(
                state,
                replace(
                    _opened("switchover", se),
                    old_primary=ev.primary,
                    candidate=ev.candidate,
                    reason=ev.reason,
                    requested_by=ev.requested_by,
                    scheduled_at=ev.scheduled_at,
                ),
            )
        case SwitchoverCompleted():
            state = _close_operation(
                state,
                "switchover",
                "succeeded",
                se,
                old_primary=ev.old_primary,
                new_primary=ev.new_primary,
                duration_ms=ev.duration_ms,
                timeline=ev.timeline,
                lsn=ev.lsn,
            )
            return _set_primary(state, ev.new_primary, ev.timeline, ev.lsn, se)
        case SwitchoverFailed():
            current = next(
                (o for o in reversed(state.operations) if o.kind == "switchover" and o.outcome == "in_progress"),
                None,
            )
            candidate = ev.candidate if ev.candidate is not None else (current.candidate if current else None)
            return _close_operation(
                state, "switchover", "failed", se, old_primary=ev.primary, candidate=candidate, error=ev.reason
            )
        case PrimaryPromoted():
            return _set_primary(state, ev.name, ev.timeline, ev.lsn, se)
        case ReplicaFollowing():
            return _update_member(state, ev.name, following=ev.primary, fenced=False, fence_reason="")
        case ReplicaRejoined():
            return _update_member(
                state, ev.name, following=ev.primary, fenced=False, fence_reason="", rejoin_method=ev.method
            )
        case SynchronousStandbysChanged():
            return replace(
                state, sync_mode=ev.mode, num_sync=ev.num_sync, sync_standbys=tuple(sorted(set(ev.standbys)))
            )
        case MaintenanceModeChanged():
            return replace(state, maintenance=ev.enabled, maintenance_reason=ev.reason, maintenance_by=ev.by)
        case DynamicConfigChanged():
            config = dict(state.dynamic_config)
            for key, change in ev.changes.items():
                if change.new is None:
                    config.pop(key, None)
                else:
                    config[key] = change.new
            return replace(state, dynamic_config=config, pending_restart=tuple(sorted(set(ev.pending_restart))))
        case NodeFenced():
            return _update_member(state, ev.name, fenced=True, fence_reason=ev.reason)
        case MemberLeaseAnnounced():
            return _update_member(state, ev.name, lease_s=ev.lease_s)
        case CommandRejected() | CallbackRan():
            return state
        case MemberActionRequested():
            return _update_member(state, ev.name, pending_action=ev.action, pending_action_position=pos)
        case MemberActionCompleted():
            m = state.members.get(ev.name)
            if m is None or m.pending_action != ev.action:
                return state
            return _update_member(state, ev.name, pending_action=None, pending_action_position=None)
    raise AssertionError(f"unhandled event type {type(ev).__name__}")  # pragma: no cover - exhaustive


def fold(state: ClusterState, events: Iterable[PlacedEvent]) -> ClusterState:
    """Apply ``events`` (in log order) to ``state``; returns a new state, ``state`` is unchanged."""
    for se in events:
        applied = _apply(state, se)
        if applied is state:
            applied = _copy(state)
        object.__setattr__(applied, "last_position", se.position)
        object.__setattr__(applied, "events_applied", state.events_applied + 1)
        state = applied
    return state
