"""Commands: what a node proposes through Raft, and the pure rule that turns one into events.

A command is a request ("add this member", "turn maintenance on"); an event is a fact. The apply
loop decides, for each committed command, which events it yields given the state folded from all
earlier events — identically on every node, since the state and the rule are the same everywhere.
A command that does not fit the state (removing a member that does not exist) yields one
``command_rejected`` event, and its proposer gets the reason as an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ram.eventstore.events import (
    CallbackRan,
    CandidateInfo,
    ClusterBootstrapped,
    CommandRejected,
    ConfigChange,
    DynamicConfigChanged,
    Event,
    FailoverStarted,
    LearnerPromoted,
    MaintenanceModeChanged,
    MemberActionCompleted,
    MemberActionRequested,
    MemberAdded,
    MemberHealthChanged,
    MemberLeaseAnnounced,
    MemberRemoved,
    MemberSpec,
    MemberTags,
    MemberTagsChanged,
    NodeFenced,
    RaftLeaderElected,
    ReplicaFollowing,
    ReplicaRejoined,
    SwitchoverRequested,
    SynchronousStandbysChanged,
)
from ram.ha.candidates import target_refusal
from ram.projections.state import ClusterState

_CONFIG = ConfigDict(extra="forbid", frozen=True)


class _Command(BaseModel):
    model_config = _CONFIG


class BootstrapCluster(_Command):
    """Record the cluster's identity and first members (proposed once, by the first leader)."""

    kind: Literal["bootstrap_cluster"] = "bootstrap_cluster"
    cluster_id: str
    cluster_name: str
    members: tuple[MemberSpec, ...]
    dynamic_config: dict[str, Any] = Field(default_factory=dict)


class RecordLeader(_Command):
    """A new leader's announcement of itself, the first entry it proposes in its term."""

    kind: Literal["record_leader"] = "record_leader"
    node_id: int


class AddMember(_Command):
    """Add a member; proposed as a Raft configuration change (learner first, voter later)."""

    kind: Literal["add_member"] = "add_member"
    member: MemberSpec
    as_learner: bool = True


class PromoteLearner(_Command):
    """Make a caught-up learner a voter (a Raft configuration change)."""

    kind: Literal["promote_learner"] = "promote_learner"
    node_id: int


class RemoveMember(_Command):
    """Remove a member (a Raft configuration change)."""

    kind: Literal["remove_member"] = "remove_member"
    node_id: int
    reason: str = ""


class SetMaintenance(_Command):
    kind: Literal["set_maintenance"] = "set_maintenance"
    enabled: bool
    reason: str = ""
    by: str = ""


class SetTags(_Command):
    kind: Literal["set_tags"] = "set_tags"
    name: str
    tags: MemberTags


class PatchConfig(_Command):
    """Change dynamic configuration keys (``None`` removes a key)."""

    kind: Literal["patch_config"] = "patch_config"
    changes: dict[str, Any]
    pending_restart: tuple[str, ...] = ()
    by: str = ""


class StartFailover(_Command):
    """The arbiter (or an operator, ``forced``) starts a failover to ``candidate``."""

    kind: Literal["start_failover"] = "start_failover"
    old_primary: str | None
    candidate: str
    candidates: tuple[CandidateInfo, ...] = ()
    reason: str
    forced: bool = False


class RequestSwitchover(_Command):
    """A planned switchover from the current primary to ``candidate``."""

    kind: Literal["request_switchover"] = "request_switchover"
    #: None: the arbiter picks the best eligible replica with its live reports.
    candidate: str | None = None
    scheduled_at: AwareDatetime | None = None
    requested_by: str = ""


FactEvent = Annotated[
    Union[  # noqa: UP007
        MemberHealthChanged, ReplicaFollowing, ReplicaRejoined, NodeFenced, SynchronousStandbysChanged,
        MemberActionCompleted, CallbackRan, MemberLeaseAnnounced,
    ],
    Field(discriminator="type"),
]


class RequestMemberAction(_Command):
    """An operator asks member ``name`` to restart its PostgreSQL or to re-clone it (``reinit``)."""

    kind: Literal["request_member_action"] = "request_member_action"
    name: str
    action: Literal["restart", "reinit"]
    requested_by: str = ""


class Arbitrate(_Command):
    """Events the arbiter (the Raft leader's HA logic) decided, computed from the state at
    ``based_on`` (its last event position). If any event was committed in between, the decision is
    stale and yields nothing: the arbiter simply decides again on fresh state."""

    kind: Literal["arbitrate"] = "arbitrate"
    events: tuple[Event, ...]
    based_on: int
    reason: str = ""


class ReportFact(_Command):
    """A fact a node observed about itself or the arbiter decided (health, following, fenced, sync set)."""

    kind: Literal["report_fact"] = "report_fact"
    event: FactEvent


#: The release level of these commands, announced to peers (``RuntimeSettings.app_level``). A node
#: that announces a lower one (0: every release before levels were announced) can not decode what
#: :func:`required_level` puts above it: it would record such an entry as a rejected command, and
#: its events would differ from every other node's. Raise it with every new command or fact type.
APP_LEVEL = 1

#: Facts that level 0 (releases up to store schema 0005) does not know.
_LEVEL_1_FACTS = (CallbackRan, MemberLeaseAnnounced)


def required_level(command: object) -> int:
    """The lowest release level that can apply ``command``."""
    if isinstance(command, ReportFact) and isinstance(command.event, _LEVEL_1_FACTS):
        return 1
    return 0


Command = Annotated[
    Union[  # noqa: UP007 - a discriminated union needs the Union form for pydantic
        BootstrapCluster,
        RecordLeader,
        AddMember,
        PromoteLearner,
        RemoveMember,
        SetMaintenance,
        SetTags,
        PatchConfig,
        StartFailover,
        RequestSwitchover,
        ReportFact,
        Arbitrate,
        RequestMemberAction,
    ],
    Field(discriminator="kind"),
]

#: Commands that change Raft membership and therefore travel as CONF_CHANGE entries.
MEMBERSHIP_COMMANDS = (AddMember, PromoteLearner, RemoveMember)


class CommandEnvelope(BaseModel):
    """A command as stored in a Raft entry: who proposed it, and when (so events carry one timestamp)."""

    model_config = _CONFIG

    command: Command
    proposer: int
    ts: AwareDatetime


_ENVELOPE = TypeAdapter(CommandEnvelope)


class CommandDecodeError(ValueError):
    """A Raft entry's payload is not a command this code understands."""


def encode_envelope(envelope: CommandEnvelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode_envelope(data: bytes) -> CommandEnvelope:
    try:
        return _ENVELOPE.validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CommandDecodeError(f"invalid command: {where}: {first['msg']}") from None


class Rejected(Exception):
    """A command that does not fit the current state; the reason is shown to the proposer."""


def _reject(command: _Command, reason: str) -> CommandRejected:
    return CommandRejected(command=str(getattr(command, "kind", type(command).__name__)), reason=reason)


def decide(state: ClusterState, command: _Command, ts: datetime, term: int) -> list[Event]:
    """The events a committed command yields in ``state`` (pure and deterministic).

    ``term`` is the Raft term of the entry carrying the command. Never raises for a well-formed
    command: an unfit one yields a single ``command_rejected``.
    """
    try:
        return _decide(state, command, ts, term)
    except Rejected as exc:
        return [_reject(command, str(exc))]
    except ValidationError as exc:
        first = exc.errors()[0]
        return [_reject(command, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")]


def _member_name(state: ClusterState, node_id: int) -> str | None:
    for name, member in state.members.items():
        if member.node_id == node_id:
            return name
    return None


def _decide(state: ClusterState, command: _Command, ts: datetime, term: int) -> list[Event]:
    if state.cluster_id is None and not isinstance(command, (BootstrapCluster, RecordLeader)):
        # Bootstrapping sets the cluster's identity and first state; anything decided before it would
        # be decided against an empty cluster (and its configuration overwritten by the bootstrap).
        raise Rejected("the cluster is not bootstrapped yet; retry in a moment")
    if isinstance(command, BootstrapCluster):
        if state.cluster_id is not None:
            raise Rejected(f"cluster {state.cluster_id!r} is already bootstrapped")
        return [
            ClusterBootstrapped(
                cluster_id=command.cluster_id,
                cluster_name=command.cluster_name,
                members=command.members,
                dynamic_config=command.dynamic_config,
            )
        ]
    if isinstance(command, RecordLeader):
        name = _member_name(state, command.node_id) or f"node{command.node_id}"
        return [RaftLeaderElected(term=term, leader_name=name, leader_node_id=command.node_id)]
    if isinstance(command, AddMember):
        spec = command.member
        if spec.name in state.members:
            raise Rejected(f"member {spec.name!r} already exists")
        if _member_name(state, spec.node_id) is not None:
            raise Rejected(f"node id {spec.node_id} is already used by {_member_name(state, spec.node_id)!r}")
        return [MemberAdded(**spec.model_dump(), as_learner=command.as_learner)]
    if isinstance(command, PromoteLearner):
        learner = _member_name(state, command.node_id)
        if learner is None:
            raise Rejected(f"no member with node id {command.node_id}")
        if not state.members[learner].is_learner:
            raise Rejected(f"member {learner!r} is already a voter")
        return [LearnerPromoted(name=learner, node_id=command.node_id)]
    if isinstance(command, RemoveMember):
        removed = _member_name(state, command.node_id)
        if removed is None:
            raise Rejected(f"no member with node id {command.node_id}")
        return [MemberRemoved(name=removed, node_id=command.node_id, reason=command.reason)]
    if isinstance(command, SetMaintenance):
        if state.maintenance == command.enabled:
            return []
        return [MaintenanceModeChanged(enabled=command.enabled, reason=command.reason, by=command.by)]
    if isinstance(command, SetTags):
        if command.name not in state.members:
            raise Rejected(f"no member named {command.name!r}")
        return [MemberTagsChanged(name=command.name, tags=command.tags)]
    if isinstance(command, PatchConfig):
        changes = {
            key: ConfigChange(old=state.dynamic_config.get(key), new=value)
            for key, value in sorted(command.changes.items())
            if state.dynamic_config.get(key) != value
        }
        if not changes:
            return []
        return [DynamicConfigChanged(changes=changes, pending_restart=command.pending_restart, by=command.by)]
    if isinstance(command, (StartFailover, RequestSwitchover)):
        return _decide_operation(state, command)
    if isinstance(command, RequestMemberAction):
        return [_member_action(state, command)]
    if isinstance(command, Arbitrate):
        if state.last_position != command.based_on:
            return []
        return list(command.events)
    if isinstance(command, ReportFact):
        fact = command.event
        subject: str | None = getattr(fact, "name", None)
        if subject is not None and subject not in state.members:
            raise Rejected(f"no member named {subject!r}")
        return [fact]
    raise Rejected(f"unknown command {type(command).__name__}")


def _member_action(state: ClusterState, command: RequestMemberAction) -> MemberActionRequested:
    member = state.members.get(command.name)
    if member is None:
        raise Rejected(f"no member named {command.name!r}")
    if member.pending_action is not None:
        raise Rejected(f"{command.name} has a {member.pending_action} pending already (asked at position "
                       f"{member.pending_action_position}); wait for it to complete")
    op = state.current_operation
    if op is not None:
        raise Rejected(f"a {op.kind} is in progress; retry when it has completed")
    if command.action == "reinit" and command.name == state.primary:
        raise Rejected(f"{command.name} is the primary and can not be re-cloned; switch over first")
    return MemberActionRequested(name=command.name, action=command.action, requested_by=command.requested_by)


def _eligible_target(state: ClusterState, name: str, *, forced: bool) -> None:
    """The one candidate rule (:func:`ram.ha.candidates.target_refusal`), as a rejection."""
    refusal = target_refusal(state, name, forced=forced)
    if refusal is not None:
        raise Rejected(refusal)


def _decide_operation(state: ClusterState, command: _Command) -> list[Event]:
    """Failover and switchover bookkeeping: at most one operation runs at a time."""
    current = state.current_operation
    if isinstance(command, StartFailover):
        if state.maintenance and not command.forced:
            raise Rejected("maintenance mode is on: no automatic failover")
        if current is not None and not command.forced:
            raise Rejected(f"a {current.kind} is already in progress (to {current.candidate!r})")
        if command.candidate == state.primary:
            raise Rejected(f"{command.candidate!r} is already the primary")
        _eligible_target(state, command.candidate, forced=command.forced)
        return [
            FailoverStarted(
                old_primary=command.old_primary, reason=command.reason, candidates=command.candidates,
                chosen=command.candidate,
            )
        ]
    if isinstance(command, RequestSwitchover):
        if state.primary is None:
            raise Rejected("the cluster has no primary to switch over from")
        if current is not None:
            raise Rejected(f"a {current.kind} is already in progress (to {current.candidate!r})")
        if command.candidate is not None:
            if command.candidate == state.primary:
                raise Rejected(f"{command.candidate!r} is already the primary")
            _eligible_target(state, command.candidate, forced=False)
        return [
            SwitchoverRequested(
                primary=state.primary, candidate=command.candidate, scheduled_at=command.scheduled_at,
                requested_by=command.requested_by,
            )
        ]
    raise Rejected(f"unknown operation command {type(command).__name__}")
