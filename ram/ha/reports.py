"""The member report: what each node tells the arbiter about its PostgreSQL, on the wire and back.

Kept apart from the controller so both directions are one pure function each (and testable): the
sending node builds the document from its observation, the Raft leader parses it into a
:class:`~ram.ha.candidates.MemberObservation` stamped with its own clock. Parsing is strict (a
pydantic schema: types, ranges, no coercion of ``"no"`` into ``True``): a report that does not match
is dropped, never half-believed.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ram.ha.candidates import MemberObservation
from ram.ha.streaming import LocalReplication, StandbyRow
from ram.postgres.status import InstanceStatus

__all__ = ["MalformedReport", "build_report", "parse_report"]

Lsn = Annotated[int, Field(ge=0, lt=2**64)]
Count = Annotated[int, Field(ge=0, lt=2**63)]
Timeline = Annotated[int, Field(ge=1, lt=2**32)]
Short = Annotated[str, Field(max_length=200)]


class MalformedReport(ValueError):
    """The report does not match the schema (the message says which field)."""


class _Standby(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    name: Short
    state: Short
    flush_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None


class _Report(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    name: Short
    pg_running: bool
    role: Literal["primary", "replica", "unknown"]
    timeline: Timeline | None = None
    received_lsn: Lsn | None = None
    replayed_lsn: Lsn | None = None
    state_position: Count
    lease_released: bool
    timeline_start_lsn: Lsn | None = None
    stopped_lsn: Lsn | None = None
    sync_standby_names: Annotated[str, Field(max_length=10_000)] | None = None
    streaming: bool | None = None
    replication_reason: Annotated[str, Field(max_length=1000)] = ""
    receive_lag_bytes: Count | None = None
    replay_lag_bytes: Count | None = None
    standbys: Annotated[list[_Standby], Field(max_length=1000)] = []
    pending_restart: Annotated[list[Short], Field(max_length=1000)] = []


def build_report(
    name: str,
    status: InstanceStatus,
    *,
    state_position: int,
    lease_released: bool,
    timeline_start_lsn: int | None = None,
    stopped_lsn: int | None = None,
    sync_standby_names: str | None = None,
    replication: LocalReplication | None = None,
    pending_restart: tuple[str, ...] = (),
) -> bytes:
    """``timeline_start_lsn`` is sent only by a running primary, ``stopped_lsn`` only for a stopped
    server, ``replication`` (streaming and lags) only by a running standby, the standbys the primary
    sees only by a primary; for a primary, both WAL positions are its current one."""
    running = status.running and status.accepting
    role: Literal["primary", "replica", "unknown"] = "unknown"
    if running:
        role = "replica" if status.in_recovery else "primary"
    primary = running and status.in_recovery is False
    replica = running and status.in_recovery is True
    report = _Report(
        name=name,
        pg_running=running,
        role=role,
        timeline=status.timeline or None,
        received_lsn=status.current_lsn if primary else status.received_lsn,
        replayed_lsn=status.current_lsn if primary else status.replayed_lsn,
        state_position=state_position,
        lease_released=lease_released,
        timeline_start_lsn=timeline_start_lsn if primary else None,
        stopped_lsn=stopped_lsn if not running else None,
        sync_standby_names=sync_standby_names,
        streaming=replication.streaming if replica and replication is not None else None,
        replication_reason=replication.reason if replica and replication is not None else "",
        receive_lag_bytes=replication.receive_lag_bytes if replica and replication is not None else None,
        replay_lag_bytes=replication.replay_lag_bytes if replica and replication is not None else None,
        standbys=[
            _Standby(name=c.application_name[:200], state=c.state[:200], flush_lsn=c.flush_lsn, replay_lsn=c.replay_lsn)
            for c in status.replication
        ]
        if primary
        else [],
        pending_restart=list(pending_restart) if running else [],
    )
    return report.model_dump_json(exclude_defaults=True).encode()


def parse_report(body: bytes, observed_at: float) -> MemberObservation:
    """The arbiter's view of one report; raises :class:`MalformedReport` (a ValueError) when it does
    not match the schema."""
    try:
        doc = _Report.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ())) or "report"
        raise MalformedReport(f"{where}: {first.get('msg', 'invalid')}") from None
    return MemberObservation(
        name=doc.name,
        reachable=True,
        pg_running=doc.pg_running,
        role=doc.role,
        timeline=doc.timeline,
        received_lsn=doc.received_lsn,
        replayed_lsn=doc.replayed_lsn,
        lag_bytes=doc.replay_lag_bytes,
        observed_at=observed_at,
        state_position=doc.state_position,
        lease_released=doc.lease_released,
        timeline_start_lsn=doc.timeline_start_lsn,
        sync_standby_names=doc.sync_standby_names,
        stopped_lsn=doc.stopped_lsn,
        streaming=doc.streaming,
        replication_reason=doc.replication_reason,
        receive_lag_bytes=doc.receive_lag_bytes,
        standbys=tuple(StandbyRow(s.name, s.state, s.flush_lsn, s.replay_lsn) for s in doc.standbys),
        pending_restart=tuple(doc.pending_restart),
    )
