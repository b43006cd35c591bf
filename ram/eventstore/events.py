"""The event catalogue: every cluster decision RAM records in ``pgraft.events``.

Each event type is a frozen pydantic model with a ``type`` literal (the discriminator, stored in
``pgraft.events.type``) and a class-level ``SCHEMA_VERSION`` (stored in ``schema_version``).  The
payload column holds ``model_dump(mode="json")`` minus ``type``.

Conventions shared by all events:

* Members are identified by ``name`` (1..63 chars, ``[A-Za-z0-9_][A-Za-z0-9_.-]*``) and, where an
  event creates or removes a member, also by ``node_id`` (1 .. 2**31-1; 0 means "unknown" and is only
  used for ``StoredEvent.proposer``).
* **LSNs are integers: the byte position in the WAL** (0 .. 2**64-1), i.e. PostgreSQL's
  ``'X/Y'::pg_lsn`` is ``X << 32 | Y``.  Convert with :mod:`ram.lsn` (re-exported
  here as :func:`lsn_to_text` / :func:`parse_lsn`).
* Free text (reasons, who did it) is at most 1000 characters and may not contain NUL (PostgreSQL
  text and jsonb reject it, and an event that can not be stored would stall the apply loop).
* Dynamic configuration values are JSON values (no NaN/Infinity, no NUL in strings).
* Construction in code is pydantic's lax mode (lists become tuples); decoding stored events is
  strict: no silent coercion of ``"5"`` to ``5``.

Decoding never skips: an unknown type, a schema version newer than this code, or a payload that
does not validate raises an :class:`EventDecodeError` subclass.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, Union, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from ram.lsn import MAX_LSN
from ram.lsn import format_lsn as lsn_to_text  # re-exported: the catalogue's name for it
from ram.lsn import parse_lsn as parse_lsn

__all__ = [
    "EVENT_TYPES",
    "CallbackRan",
    "CandidateInfo",
    "ClusterBootstrapped",
    "CommandRejected",
    "ConfigChange",
    "DynamicConfigChanged",
    "Event",
    "EventDecodeError",
    "FailoverCompleted",
    "FailoverFailed",
    "FailoverStarted",
    "LearnerPromoted",
    "MaintenanceModeChanged",
    "MalformedEvent",
    "MemberActionCompleted",
    "MemberActionRequested",
    "MemberAdded",
    "MemberHealthChanged",
    "MemberLeaseAnnounced",
    "MemberRemoved",
    "MemberSpec",
    "MemberTags",
    "MemberTagsChanged",
    "NodeFenced",
    "PrimaryPromoted",
    "RaftLeaderElected",
    "ReplicaFollowing",
    "ReplicaRejoined",
    "StoredEvent",
    "SwitchoverAccepted",
    "SwitchoverCompleted",
    "SwitchoverFailed",
    "SwitchoverRequested",
    "SynchronousStandbysChanged",
    "UnknownEventType",
    "decode_event",
    "encode_event",
    "encode_event_json",
    "lsn_to_text",
    "parse_lsn",
]

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1

# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")]
"""A member name: what operators type in ramctrl and see in pgraft.members."""

NodeId = Annotated[int, Field(ge=1, le=MAX_INT32)]
Port = Annotated[int, Field(ge=1, le=65535)]
Lsn = Annotated[int, Field(ge=0, le=MAX_LSN)]
"""WAL position in bytes (``'X/Y'::pg_lsn`` == ``X << 32 | Y``)."""
Timeline = Annotated[int, Field(ge=1, le=MAX_INT32)]
Term = Annotated[int, Field(ge=1, le=MAX_INT64)]
NonNegInt = Annotated[int, Field(ge=0, le=MAX_INT64)]
Text = Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00]*$")]
"""Free text (may be empty), no NUL."""
NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")]
Host = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\s\x00]+$")]
Address = Annotated[str, StringConstraints(min_length=3, max_length=300, pattern=r"^[^\s\x00]+:[0-9]{1,5}$")]
"""``host:port`` (IPv6 as ``[::1]:port``)."""
ConfigKey = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


def check_json_value(value: JsonValue, where: str = "value") -> JsonValue:
    """Reject what PostgreSQL jsonb can not hold: NUL in strings/keys, NaN and infinities."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: non-finite number {value!r} is not JSON")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where}: string contains NUL")
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]")
    if isinstance(value, dict):
        for k, item in value.items():
            if "\x00" in k:
                raise ValueError(f"{where}: key contains NUL")
            check_json_value(item, f"{where}.{k}")
    return value


ConfigValue = Annotated[JsonValue, AfterValidator(check_json_value)]


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)


class MemberTags(BaseModel):
    """Per-member tags (Patroni semantics).

    ``failover_priority``: higher is preferred among equally up-to-date candidates; 0 never.
    """

    model_config = _MODEL_CONFIG

    nofailover: bool = False
    noloadbalance: bool = False
    nosync: bool = False
    failover_priority: Annotated[int, Field(ge=0, le=MAX_INT32)] = 1


class MemberSpec(BaseModel):
    """A member as listed in ``cluster_bootstrapped``."""

    model_config = _MODEL_CONFIG

    name: Name
    node_id: NodeId
    raft_address: Address
    api_address: Address
    pg_host: Host
    pg_port: Port
    tags: MemberTags = MemberTags()


class CandidateInfo(BaseModel):
    """One candidate the leader considered for a failover, with what it knew of it."""

    model_config = _MODEL_CONFIG

    name: Name
    lsn: Lsn | None = None
    eligible: bool
    note: Text = ""


class ConfigChange(BaseModel):
    """One key of a dynamic configuration change. ``new=None`` means the key was removed."""

    model_config = _MODEL_CONFIG

    old: ConfigValue = None
    new: ConfigValue = None


class _EventBase(BaseModel):
    model_config = _MODEL_CONFIG
    SCHEMA_VERSION: ClassVar[int] = 1


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------


class ClusterBootstrapped(_EventBase):
    """The cluster was created: identity, initial members and initial dynamic configuration."""

    type: Literal["cluster_bootstrapped"] = "cluster_bootstrapped"
    cluster_id: NonEmptyText
    cluster_name: Name
    members: Annotated[tuple[MemberSpec, ...], Field(min_length=1)]
    dynamic_config: dict[ConfigKey, ConfigValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_members(self) -> ClusterBootstrapped:
        names = [m.name for m in self.members]
        ids = [m.node_id for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate member names: {names}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate node ids: {ids}")
        return self


class MemberAdded(_EventBase):
    """A member joined (a learner catches up first, then ``learner_promoted``)."""

    type: Literal["member_added"] = "member_added"
    name: Name
    node_id: NodeId
    raft_address: Address
    api_address: Address
    pg_host: Host
    pg_port: Port
    tags: MemberTags = MemberTags()
    as_learner: bool = False


class LearnerPromoted(_EventBase):
    """A non-voting learner became a voter."""

    type: Literal["learner_promoted"] = "learner_promoted"
    name: Name
    node_id: NodeId


class MemberRemoved(_EventBase):
    type: Literal["member_removed"] = "member_removed"
    name: Name
    node_id: NodeId
    reason: Text = ""


class MemberTagsChanged(_EventBase):
    """The member's tags were replaced by ``tags`` (all four, not a patch)."""

    type: Literal["member_tags_changed"] = "member_tags_changed"
    name: Name
    tags: MemberTags


class RaftLeaderElected(_EventBase):
    type: Literal["raft_leader_elected"] = "raft_leader_elected"
    term: Term
    leader_name: Name
    leader_node_id: NodeId


class MemberHealthChanged(_EventBase):
    """The leader observed a change in a member's PostgreSQL (LSN = received/replayed WAL bytes)."""

    type: Literal["member_health_changed"] = "member_health_changed"
    name: Name
    healthy: bool
    pg_running: bool
    role: Literal["primary", "replica", "unknown"] = "unknown"
    timeline: Timeline | None = None
    lsn: Lsn | None = None
    lag_bytes: NonNegInt | None = None
    reason: Text = ""


class FailoverStarted(_EventBase):
    type: Literal["failover_started"] = "failover_started"
    old_primary: Name | None
    reason: Text
    candidates: tuple[CandidateInfo, ...] = ()
    chosen: Name | None = None


class FailoverCompleted(_EventBase):
    type: Literal["failover_completed"] = "failover_completed"
    old_primary: Name | None
    new_primary: Name
    timeline: Timeline
    lsn: Lsn
    duration_ms: NonNegInt


class FailoverFailed(_EventBase):
    type: Literal["failover_failed"] = "failover_failed"
    old_primary: Name | None
    reason: Text


class SwitchoverRequested(_EventBase):
    """Planned switchover from ``primary`` (the brief's "from") to ``candidate`` ("to"; None = any)."""

    type: Literal["switchover_requested"] = "switchover_requested"
    primary: Name
    candidate: Name | None = None
    scheduled_at: AwareDatetime | None = None
    requested_by: Text = ""
    reason: Text = ""


class SwitchoverAccepted(_EventBase):
    """The arbiter accepted the switchover in progress, with the candidate it chose: the same
    operation goes on (now with its candidate, and its timers restarted from here), so a switchover
    is one row of the history. Its own type, so that no reader has to recognise an acceptance by
    the text of a reason (revision 0005 turned the older prefixed ``switchover_requested`` events
    into this). Without a switchover in progress it opens an accepted one (the fold is total)."""

    type: Literal["switchover_accepted"] = "switchover_accepted"
    primary: Name
    candidate: Name
    reason: Text = ""


class SwitchoverCompleted(_EventBase):
    type: Literal["switchover_completed"] = "switchover_completed"
    old_primary: Name
    new_primary: Name
    timeline: Timeline
    lsn: Lsn
    duration_ms: NonNegInt


class SwitchoverFailed(_EventBase):
    type: Literal["switchover_failed"] = "switchover_failed"
    primary: Name
    candidate: Name | None = None
    reason: Text


class PrimaryPromoted(_EventBase):
    """``name`` is the primary on ``timeline`` (also recorded for the first primary at bootstrap)."""

    type: Literal["primary_promoted"] = "primary_promoted"
    name: Name
    timeline: Timeline
    lsn: Lsn


class ReplicaFollowing(_EventBase):
    type: Literal["replica_following"] = "replica_following"
    name: Name
    primary: Name


class ReplicaRejoined(_EventBase):
    """A former primary (or diverged replica) rejoined ``primary`` by pg_rewind or a fresh clone."""

    type: Literal["replica_rejoined"] = "replica_rejoined"
    name: Name
    primary: Name
    method: Literal["rewind", "clone"]


class SynchronousStandbysChanged(_EventBase):
    """The committed synchronous set. ``standbys`` is a set (stored sorted, without duplicates)."""

    type: Literal["synchronous_standbys_changed"] = "synchronous_standbys_changed"
    mode: Literal["off", "on", "quorum"]
    num_sync: Annotated[int, Field(ge=0, le=1000)]
    standbys: tuple[Name, ...] = ()
    reason: Text = ""

    @model_validator(mode="after")
    def _consistent(self) -> SynchronousStandbysChanged:
        if len(set(self.standbys)) != len(self.standbys):
            raise ValueError(f"duplicate standbys: {list(self.standbys)}")
        if self.mode == "off" and (self.num_sync or self.standbys):
            raise ValueError("mode 'off' requires num_sync=0 and no standbys")
        if self.num_sync > len(self.standbys):
            raise ValueError(f"num_sync={self.num_sync} exceeds the {len(self.standbys)} standbys")
        return self


class MaintenanceModeChanged(_EventBase):
    """Maintenance (Patroni "pause"): no automatic failover while enabled."""

    type: Literal["maintenance_mode_changed"] = "maintenance_mode_changed"
    enabled: bool
    reason: Text = ""
    by: Text = ""


class DynamicConfigChanged(_EventBase):
    """Cluster-wide configuration changed.

    ``pending_restart`` is the complete set of keys that, after this change, await a PostgreSQL
    restart (computed by the proposer), not only the keys of this change.
    """

    type: Literal["dynamic_config_changed"] = "dynamic_config_changed"
    changes: Annotated[dict[ConfigKey, ConfigChange], Field(min_length=1)]
    pending_restart: tuple[ConfigKey, ...] = ()
    by: Text = ""


class NodeFenced(_EventBase):
    """A node stopped accepting writes (its primary lease expired or could not be renewed).

    ``lease_expired_at_ms``: the proposer's wall clock, milliseconds since the Unix epoch
    (informational; lease decisions use monotonic clocks).
    """

    type: Literal["node_fenced"] = "node_fenced"
    name: Name
    reason: Text
    lease_expired_at_ms: NonNegInt | None = None


class MemberLeaseAnnounced(_EventBase):
    """A node's primary lease length (its ``ha.lease_s``), committed so that every later Raft leader
    knows how long a lease of this member may last (``ram.ha.lease``: a new leader presumes the
    longest committed lease, at least 2 s, for grants it never saw). A node announces a lease
    longer than 2 s before it uses it, and a shorter one only after its previous process's leases
    have run out."""

    type: Literal["member_lease_announced"] = "member_lease_announced"
    name: Name
    lease_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]


class CommandRejected(_EventBase):
    """The apply loop refused a committed command (recorded so every node agrees it did nothing)."""

    type: Literal["command_rejected"] = "command_rejected"
    command: NonEmptyText
    reason: Text
    requested_by: Text = ""


class MemberActionRequested(_EventBase):
    """An operator asked a member to restart its PostgreSQL or to re-clone it from the primary
    (``reinit``). The member's own keeper carries it out and reports ``member_action_completed``."""

    type: Literal["member_action_requested"] = "member_action_requested"
    name: Name
    action: Literal["restart", "reinit"]
    requested_by: Text = ""


class MemberActionCompleted(_EventBase):
    """The member finished (``ok``) or gave up on the requested action; ``message`` says what happened."""

    type: Literal["member_action_completed"] = "member_action_completed"
    name: Name
    action: Literal["restart", "reinit"]
    ok: bool
    message: Text = ""


class CallbackRan(_EventBase):
    """A member ran one of its operator scripts (``[callbacks]``: on_start, on_stop, on_restart,
    on_role_change, on_reload) and this is how it ended. Informational: no state changes with it."""

    type: Literal["callback_ran"] = "callback_ran"
    name: Name
    hook: Literal["on_start", "on_stop", "on_restart", "on_role_change", "on_reload"]
    role: Literal["primary", "replica", "unknown"]
    outcome: Literal["ok", "failed", "timeout", "error"]
    exit_code: int | None = None
    duration_ms: Annotated[int, Field(ge=0, le=MAX_INT32)] = 0
    #: The end of what the script printed (stdout and stderr), or why it could not run.
    output: Text = ""


Event: TypeAlias = Annotated[
    Union[  # noqa: UP007
        ClusterBootstrapped,
        MemberAdded,
        LearnerPromoted,
        MemberRemoved,
        MemberTagsChanged,
        RaftLeaderElected,
        MemberHealthChanged,
        FailoverStarted,
        FailoverCompleted,
        FailoverFailed,
        SwitchoverRequested,
        SwitchoverAccepted,
        SwitchoverCompleted,
        SwitchoverFailed,
        PrimaryPromoted,
        ReplicaFollowing,
        ReplicaRejoined,
        SynchronousStandbysChanged,
        MaintenanceModeChanged,
        DynamicConfigChanged,
        NodeFenced,
        CommandRejected,
        MemberActionRequested,
        MemberActionCompleted,
        CallbackRan,
        MemberLeaseAnnounced,
    ],
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_TYPES: dict[str, type[_EventBase]] = {
    cls.model_fields["type"].default: cls for cls in get_args(get_args(Event)[0])
}
"""type name -> model class."""


# ---------------------------------------------------------------------------------------------
# Encoding / decoding
# ---------------------------------------------------------------------------------------------


class EventDecodeError(ValueError):
    """A stored event can not be turned back into a typed event."""


class UnknownEventType(EventDecodeError):
    def __init__(self, type_: str) -> None:
        self.type = type_
        super().__init__(f"unknown event type {type_!r}; known types: {', '.join(sorted(EVENT_TYPES))}")


class MalformedEvent(EventDecodeError):
    def __init__(self, type_: str, detail: str) -> None:
        self.type = type_
        self.detail = detail
        super().__init__(f"malformed {type_!r} event: {detail}")


def encode_event(ev: Event) -> tuple[str, int, dict[str, Any]]:
    """``(type, schema_version, payload)``; the payload is JSON-ready and omits ``type``."""
    payload = ev.model_dump(mode="json")
    type_ = payload.pop("type")
    return type_, type(ev).SCHEMA_VERSION, payload


_NOT_IN_PAYLOAD: Final[set[str]] = {"type"}


def encode_event_json(ev: Event) -> tuple[str, int, str]:
    """:func:`encode_event` with the payload as JSON text, serialized in one call (the apply path
    encodes every event of every batch on every node)."""
    return ev.type, type(ev).SCHEMA_VERSION, ev.model_dump_json(exclude=_NOT_IN_PAYLOAD)


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        path = e["loc"][1:] if e["loc"] and e["loc"][0] in EVENT_TYPES else e["loc"]  # drop the tag
        loc = ".".join(str(p) for p in path) or "<payload>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def decode_event(type: str, schema_version: int, payload: dict[str, Any] | str) -> Event:
    """The typed event stored as ``(type, schema_version, payload)``; raises, never skips."""
    cls = EVENT_TYPES.get(type)
    if cls is None:
        raise UnknownEventType(type)
    if not isinstance(schema_version, int) or schema_version < 1 or schema_version > cls.SCHEMA_VERSION:
        raise MalformedEvent(
            type,
            f"schema_version {schema_version!r} is not supported (this code knows 1..{cls.SCHEMA_VERSION})",
        )
    if isinstance(payload, str):
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise MalformedEvent(type, f"payload is not JSON: {exc}") from None
    else:
        data = payload
    if not isinstance(data, dict):
        raise MalformedEvent(type, f"payload must be a JSON object, not {data.__class__.__name__}")
    if "type" in data and data["type"] != type:
        raise MalformedEvent(type, f"payload names a different type {data['type']!r}")
    # Strict validation in JSON mode: ISO timestamps and arrays are accepted, "5" for an int is not.
    try:
        text = json.dumps({**data, "type": type}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(type, f"payload is not JSON-serialisable: {exc}") from None
    try:
        return EVENT_ADAPTER.validate_json(text, strict=True)
    except ValidationError as exc:
        raise MalformedEvent(type, _one_line(exc)) from None


class StoredEvent(BaseModel):
    """An event with its place in the log: ``(position, sub)`` orders all events of the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    position: Annotated[int, Field(ge=1, le=MAX_INT64)]
    sub: Annotated[int, Field(ge=0, le=MAX_INT32)] = 0
    term: Annotated[int, Field(ge=0, le=MAX_INT64)]
    proposer: Annotated[int, Field(ge=0, le=MAX_INT32)] = 0
    ts: AwareDatetime
    event: Event

    @property
    def key(self) -> tuple[int, int]:
        return (self.position, self.sub)
