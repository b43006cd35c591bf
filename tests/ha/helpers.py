"""Builders for committed states and observations."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ram.eventstore.events import MemberTags
from ram.ha.candidates import MemberObservation
from ram.projections.state import ClusterState, Member, OperationRecord, TimelineRecord

NAMES = ("pg1", "pg2", "pg3")


def member(name: str, **kw: Any) -> Member:
    idx = int(name[2:]) if name[2:].isdigit() else 9
    tags = kw.pop("tags", None) or MemberTags(**{k: kw.pop(k) for k in list(kw) if k in MemberTags.model_fields})
    base = Member(
        name=name,
        node_id=idx,
        raft_address=f"10.0.0.{idx}:7000",
        api_address=f"10.0.0.{idx}:8008",
        pg_host=f"10.0.0.{idx}",
        pg_port=5432,
        tags=tags,
        healthy=True,
        pg_running=True,
        reported_role="replica",
        timeline=1,
        lsn=1000,
    )
    return replace(base, **kw)


def cluster(
    primary: str | None = "pg1",
    members: dict[str, dict[str, Any]] | None = None,
    names: tuple[str, ...] = NAMES,
    **kw: Any,
) -> ClusterState:
    members = members or {}
    ms = {}
    for n in names:
        extra = dict(members.get(n, {}))
        if n == primary:
            extra.setdefault("reported_role", "primary")
        ms[n] = member(n, **extra)
    hist: tuple[TimelineRecord, ...] = ()
    if primary is not None:
        import datetime as dt

        hist = (
            TimelineRecord(
                timeline=kw.get("timeline", 1),
                primary=primary,
                lsn=0,
                position=1,
                at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            ),
        )
    base = ClusterState(
        cluster_id="c1",
        cluster_name="test",
        members=ms,
        primary=primary,
        timeline=1 if primary is not None else None,
        timeline_history=hist,
        last_position=10,
    )
    return replace(base, **kw)


def operation(kind: str, old: str | None, candidate: str | None, **kw: Any) -> OperationRecord:
    import datetime as dt

    return OperationRecord(
        kind=kind,  # type: ignore[arg-type]
        outcome="in_progress",
        started_position=5,
        started_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        old_primary=old,
        candidate=candidate,
        **kw,
    )


def obs(name: str, **kw: Any) -> MemberObservation:
    base = MemberObservation(
        name=name,
        reachable=True,
        pg_running=True,
        role="replica",
        timeline=1,
        received_lsn=1000,
        replayed_lsn=1000,
        lag_bytes=0,
        observed_at=100.0,
        state_position=10,
    )
    return replace(base, **kw)


def observations(
    primary: str | None = "pg1", names: tuple[str, ...] = NAMES, **per: dict[str, Any]
) -> dict[str, MemberObservation]:
    out = {}
    for n in names:
        extra = dict(per.get(n, {}))
        if n == primary:
            extra.setdefault("role", "primary")
        out[n] = obs(n, **extra)
    return out
