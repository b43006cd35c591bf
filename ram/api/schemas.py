"""Request and response models of the HTTP API (they are also the OpenAPI schema at ``/schema``).

Requests are strict (unknown fields are errors, so a typo is never silently ignored); responses
describe exactly what the handlers return, so a schema-driven fuzzer can check every answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ram.eventstore.events import Address, Host, MemberTags, Name, NodeId, Port, Text

PgRole = Literal["primary", "replica", "unknown"]
MemberStateName = Literal["running", "stopped", "unhealthy", "fenced", "unknown"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# ------------------------------------------------------------------------------------- errors


class ErrorBody(_Response):
    """Every error: one line saying what is wrong, and the HTTP status repeated."""

    error: str
    status: int
    leader: str | None = Field(default=None, description="Raft leader's address, when a write could not reach it.")
    leader_name: str | None = Field(default=None, description="The Raft leader's member name, when known (503).")
    leader_api: str | None = Field(
        default=None,
        description="The Raft leader's HTTP API, `http://host:port`, when known and not this node (503): send the "
        "request there. The `Location` header names the same request on it.",
    )


# ------------------------------------------------------------------------------------ cluster


class MemberTagsOut(_Response):
    nofailover: bool
    noloadbalance: bool
    nosync: bool
    failover_priority: int


class MemberOut(_Response):
    name: str
    node_id: int
    api_address: str
    raft_address: str
    pg_address: str = Field(description="The managed PostgreSQL, host:port.")
    role: PgRole = Field(description="primary when the committed state names this member primary.")
    state: MemberStateName
    healthy: bool | None = Field(description="Last reported health; null when never reported.")
    health_reason: str
    timeline: int | None
    lsn: int | None = Field(description="WAL position in bytes (live on the Raft leader, else last recorded).")
    lag_bytes: int | None = Field(
        description="Replica: replay lag in bytes behind the primary's latest reported WAL position, measured (on "
        "the Raft leader for every member; elsewhere only for the answering node itself). Null: not known here."
    )
    receive_lag_bytes: int | None = Field(
        default=None, description="Replica: received (flushed) WAL lag in bytes, measured like lag_bytes."
    )
    streaming: bool | None = Field(
        default=None,
        description="Replica: streams from the primary and keeps up, as the primary's pg_stat_replication shows "
        "(null: not known by the answering node).",
    )
    streaming_reason: str = Field(default="", description="Why streaming is what it is.")
    ram_reachable: bool | None = Field(
        default=None,
        description="The member's RAM process reports in time (null: not known here). A member whose RAM is down "
        "may still run and stream: see streaming / seen_by_primary.",
    )
    seen_by_primary: str | None = Field(
        default=None, description="The primary's pg_stat_replication state for this member (null: not connected)."
    )
    pending_restart: list[str] = Field(
        default_factory=list, description="Parameters its PostgreSQL reports pending a restart (measured)."
    )
    live: bool = Field(
        default=False, description="True when the measured fields above come from this node's live view."
    )
    following: str | None
    fenced: bool
    tags: MemberTagsOut
    is_learner: bool = Field(description="A non-voting Raft learner that is still catching up.")
    is_raft_leader: bool
    sync_standby: bool
    lease_s: float | None = Field(
        default=None,
        description="The primary lease length this member committed (its ha.lease_s, announced when longer than "
        "2 s or changed); null: never announced, so it uses at most 2 s.",
    )


class SyncOut(_Response):
    mode: Literal["off", "on", "quorum"]
    num_sync: int
    standbys: list[str]


_STALE = (
    "false: a Raft read barrier confirmed that this state includes every write committed before the request. "
    "true: this node's own applied state, not confirmed (no leader reachable, barrier timed out, or ?stale=ok); "
    "it may be behind the cluster."
)


class ReadFreshness(_Response):
    """How current a read of the replicated state is (``ram.api.freshness``)."""

    applied_index: int = Field(description="How far this node has applied the Raft log (the state's position).")
    node: str = Field(description="The member answering this request.")
    stale: bool = Field(description=_STALE)
    stale_reason: str = Field(description="Why the state is not confirmed current; empty when it is.")
    read_index: int | None = Field(
        description="Commit index the Raft read barrier confirmed (the state includes it); null when stale."
    )


class ClusterOut(ReadFreshness):
    cluster_id: str | None
    cluster_name: str | None
    members: list[MemberOut]
    raft_leader: str | None = Field(description="Name of the member leading Raft, as this node knows it.")
    raft_leader_api: str | None = Field(description="The Raft leader's HTTP API, `http://host:port`, when known.")
    raft_term: int
    primary: str | None
    timeline: int | None
    synchronous: SyncOut
    maintenance: bool
    maintenance_reason: str
    pending_restart: list[str]
    commit_index: int


class MemberReadOut(MemberOut, ReadFreshness):
    """``GET /members/{name}``: the member, and how current this node's view of it is."""


# ------------------------------------------------------------------------------------- events


class EventOut(_Response):
    position: int = Field(description="The Raft index of the entry that produced the event.")
    sub: int = Field(description="Order of the event within its entry.")
    id: str = Field(description="'<position>.<sub>', also the SSE event id.")
    type: str
    term: int
    proposer: int
    ts: datetime
    payload: dict[str, Any] = Field(
        description="The event's body, as in the `payload` column of `pgraft.events` (its fields depend on `type`)."
    )


class EventPage(ReadFreshness):
    events: list[EventOut]
    next_after: int = Field(description="Pass as ?after= to read the next (newer) page.")
    more: bool = Field(
        description="Whether the page was full: there may be more events (newer ones when paging forward, older "
        "ones with ?last=)."
    )
    next_before: int | None = Field(
        default=None,
        description="Oldest position on this page: pass as ?before= (with ?last=) to read the events before it; "
        "null when the page is empty.",
    )


# ------------------------------------------------------------------------------------ history


class TimelineOut(_Response):
    timeline: int
    primary: str
    lsn: int
    position: int
    at: datetime


class OperationOut(_Response):
    kind: Literal["failover", "switchover"]
    outcome: Literal["in_progress", "succeeded", "failed", "superseded"]
    started_position: int
    started_at: datetime
    old_primary: str | None
    new_primary: str | None
    candidate: str | None
    reason: str
    requested_by: str
    scheduled_at: datetime | None
    error: str
    completed_position: int | None
    completed_at: datetime | None
    duration_ms: int | None = Field(
        description="Failover: from the old primary's last report as a running primary to the new primary's "
        "first report as primary (the write outage clients saw, within one report interval). Switchover: from "
        "the request's acceptance to the promotion."
    )
    timeline: int | None
    lsn: int | None


class HistoryOut(ReadFreshness):
    operations: list[OperationOut]
    timelines: list[TimelineOut]


# ------------------------------------------------------------------------------------ actions


class WriteOut(_Response):
    """Where a write was committed (it is applied on the answering node)."""

    index: int
    term: int
    events: list[str] = Field(description="Types of the events the command produced (empty: nothing changed).")


class MaintenanceRequest(_Request):
    reason: Text = ""
    by: Text = ""


class MaintenanceOut(_Response):
    maintenance: bool
    reason: str
    by: str
    write: WriteOut


class ConfigOut(_Response):
    config: dict[str, Any] = Field(description="The committed dynamic configuration: key -> JSON value.")
    pending_restart: list[str] = Field(
        description="PostgreSQL parameters whose change awaits a restart on some member (measured on the members "
        "by pg_settings.pending_restart when this node is the Raft leader; else the keys recorded at the change)."
    )
    effective: dict[str, Any] = Field(
        default_factory=dict,
        description="What runs on this node: every HA setting (node file overridden by dynamic keys) and the "
        "dynamic PostgreSQL parameters.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Built-in default of every HA setting.")
    pending_restart_members: dict[str, list[str]] = Field(
        default_factory=dict, description="Member -> parameters it runs with a value pending a restart (measured)."
    )


class ConfigReadOut(ConfigOut, ReadFreshness):
    """``GET /config``: the configuration, and how current this node's view of it is."""


class ConfigPatchOut(ConfigOut):
    write: WriteOut | None = Field(description="Null when the patch changed nothing (no entry was proposed).")


class AddMemberRequest(_Request):
    name: Name
    node_id: NodeId
    raft_address: Address
    api_address: Address
    pg_host: Host
    pg_port: Port = 5432
    tags: MemberTags = MemberTags()


class MemberWriteOut(_Response):
    member: str
    node_id: int
    write: WriteOut


class OperationAcceptedOut(_Response):
    """An operation the high-availability layer carries out after this answer."""

    operation: str
    write: WriteOut


class SwitchoverRequest(_Request):
    candidate: Name | None = None
    scheduled_at: AwareDatetime | None = None
    reason: Text = ""


class FailoverRequest(_Request):
    candidate: Name
    reason: Text = ""


# ------------------------------------------------------------------------------------- health


class HealthOut(_Response):
    ok: bool
    name: str
    role: PgRole
    state: str
    raft_role: str
    raft_leader: str | None
    reason: str = ""
