"""Arbiter rules: one row per rule (main table, health table), grant policy, event mapping."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ram.eventstore.events import (
    FailoverCompleted,
    FailoverFailed,
    FailoverStarted,
    MemberHealthChanged,
    PrimaryPromoted,
    SwitchoverAccepted,
    SwitchoverCompleted,
    SwitchoverFailed,
    SynchronousStandbysChanged,
)
from ram.ha.arbiter import (
    HEALTH_RULES,
    RULES,
    ArbiterInput,
    Decision,
    arbitrate,
    decide_grant,
    grant_policy,
    steady_holder,
)
from ram.ha.candidates import MemberObservation
from ram.ha.lease import ArbiterLeaseView
from ram.ha.settings import HASettings
from ram.projections.state import ClusterState

from .helpers import cluster, observations, operation

S = HASettings()
NOW = 100.5


def view(expired: bool = True, holder: str | None = "pg1") -> ArbiterLeaseView:
    v = ArbiterLeaseView(S)
    v.on_became_leader(0.0 if expired else NOW - 0.1, steady_holder=holder)
    return v


def run(
    state: ClusterState,
    ob: dict[str, MemberObservation],
    *,
    expired: bool | None = None,
    settings: HASettings = S,
    **kw: Any,
) -> list[Decision]:
    """``expired`` None: the primary's lease is expired exactly when its own report says it is not
    a running primary (what a live primary renewing its lease looks like), so rows about other
    rules need not say it."""
    if expired is None:
        o = ob.get(state.primary or "")
        expired = not (o is not None and o.reachable and o.pg_running and o.role == "primary")
    return arbitrate(ArbiterInput(now=NOW, state=state, observations=ob, lease=view(expired), settings=settings, **kw))


def main(ds: list[Decision]) -> Decision | None:
    rest = [d for d in ds if not d.rule.startswith("health:") and d.rule != "sync-set"]
    assert len(rest) <= 1, rest
    return rest[0] if rest else None


#: A decision that proposes nothing (it waits; its reason says for what).
WAIT = "wait"


def kind(d: Decision | None) -> type | str | None:
    """What a decision records: the type of its (first) event, or WAIT."""
    return None if d is None else WAIT if d.waits else type(d.events[0])


def event(d: Decision | None) -> object:
    assert d is not None and len(d.events) == 1, d
    return d.to_events()[0]


def health(ds: list[Decision], name: str | None = None) -> list[tuple[Decision, MemberHealthChanged]]:
    out = []
    for d in ds:
        ev = d.events[0] if d.events else None
        if isinstance(ev, MemberHealthChanged) and (name is None or ev.name == name):
            out.append((d, ev))
    return out


def sync_changes(ds: list[Decision]) -> list[tuple[Decision, SynchronousStandbysChanged]]:
    return [(d, ev) for d in ds for ev in d.events if isinstance(ev, SynchronousStandbysChanged)]


PRIMARY_DOWN = {"pg1": {"pg_running": False}}
FAILOVER = cluster(operations=(operation("failover", "pg1", "pg2"),))
SWITCH_REQ = cluster(operations=(operation("switchover", "pg1", "pg3"),))
SWITCH_ANY = cluster(operations=(operation("switchover", "pg1", None),))
SWITCH_OK = cluster(operations=(operation("switchover", "pg1", "pg2", reason="x", accepted=True),))

ROWS: list[tuple[str, ClusterState, dict[str, dict[str, Any]], dict[str, Any], type | str | None, str]] = [
    ("not-bootstrapped", ClusterState(), {}, {}, WAIT, "cluster not bootstrapped yet"),
    (
        "bootstrap-lowest-id",
        cluster(primary=None),
        {},
        {},
        PrimaryPromoted,
        "choose the initial primary: pg1 has the lowest node id among reachable voters",
    ),
    (
        "bootstrap-existing-data",
        cluster(primary=None),
        {"pg3": {"role": "primary"}},
        {},
        PrimaryPromoted,
        "choose the initial primary: pg3 already runs a primary with the most WAL",
    ),
    (
        "bootstrap-nobody",
        cluster(primary=None),
        {n: {"reachable": False} for n in ("pg1", "pg2", "pg3")},
        {},
        WAIT,
        "choose the initial primary: no reachable voter",
    ),
    (
        "failover-completed",
        FAILOVER,
        {"pg2": {"role": "primary", "timeline": 2, "timeline_start_lsn": 900}, **PRIMARY_DOWN},
        {"operation_since": NOW - 1},
        FailoverCompleted,
        "failover completed: pg2 runs as primary on timeline 2",
    ),
    (
        "failover-candidate-lost",
        FAILOVER,
        {"pg2": {"reachable": False}, **PRIMARY_DOWN},
        {},
        FailoverFailed,
        "failover failed: candidate unreachable and its lease expired: pg2",
    ),
    (
        "failover-timeout",
        FAILOVER,
        PRIMARY_DOWN,
        {"operation_since": NOW - 31},
        FailoverFailed,
        "failover failed: no promotion within primary_start_timeout_s: pg2",
    ),
    (
        "failover-in-progress",
        FAILOVER,
        PRIMARY_DOWN,
        {"operation_since": NOW - 1},
        WAIT,
        "failover in progress: waiting for the promotion (failover pg1 -> pg2)",
    ),
    (
        "switchover-refused-target",
        SWITCH_REQ,
        {"pg3": {"pg_running": False}},
        {},
        SwitchoverFailed,
        "switchover refused: pg3 is not eligible: not running: PostgreSQL is down",
    ),
    (
        "switchover-refused-primary",
        SWITCH_REQ,
        PRIMARY_DOWN,
        {},
        SwitchoverFailed,
        "switchover refused: the primary pg1 is not healthy",
    ),
    (
        # A new arbiter that has no report from the target yet waits instead of refusing.
        "switchover-wait-new-arbiter",
        SWITCH_REQ,
        {"pg3": {"reachable": False}},
        {"arbiter_since": NOW - 0.5},
        WAIT,
        "switchover waits: this arbiter is new",
    ),
    (
        "switchover-refused-unreachable-settled",
        SWITCH_REQ,
        {"pg3": {"reachable": False}},
        {"arbiter_since": NOW - 5},
        SwitchoverFailed,
        "switchover refused: pg3 is not eligible: unreachable",
    ),
    ("switchover-accepted", SWITCH_REQ, {}, {}, SwitchoverAccepted, "switchover accepted: pg3"),
    (
        "switchover-accepted-best",
        SWITCH_ANY,
        {"pg3": {"received_lsn": 2000}},
        {},
        SwitchoverAccepted,
        "switchover accepted: pg3",
    ),
    (
        "switchover-completed",
        SWITCH_OK,
        {"pg2": {"role": "primary", "timeline": 2, "timeline_start_lsn": 900}, "pg1": {"role": "replica"}},
        {},
        SwitchoverCompleted,
        "switchover completed: pg2 runs as primary on timeline 2",
    ),
    (
        "switchover-timeout",
        SWITCH_OK,
        {"pg1": {"role": "replica"}},
        {"operation_since": NOW - 40},
        SwitchoverFailed,
        "switchover failed: no promotion within primary_start_timeout_s: pg2",
    ),
    ("switchover-in-progress", SWITCH_OK, {}, {}, WAIT, "switchover in progress: demote, catch up, promote"),
    (
        "promotion-recorded",
        cluster(),
        {"pg1": {"timeline": 2, "timeline_start_lsn": 900}},
        {},
        PrimaryPromoted,
        "the primary promoted itself onto a new timeline: timeline 2",
    ),
    ("primary-healthy", cluster(), {}, {"expired": False}, None, ""),
    (
        # Fresh reports do not hold a failover back once the lease is gone: the primary fenced itself.
        "failover-lease-expired",
        cluster(),
        {},
        {"expired": True},
        FailoverStarted,
        "failover: lease of primary pg1 expired (no renewal for",
    ),
    ("maintenance", cluster(maintenance=True), PRIMARY_DOWN, {}, WAIT, "maintenance mode: no automatic failover"),
    (
        "lease-valid",
        cluster(),
        PRIMARY_DOWN,
        {"expired": False, "primary_down_since": NOW - 0.5},
        WAIT,
        "waiting for the primary's lease: PostgreSQL of primary pg1 is down for 0.5 s; lease of pg1 expires in 2.0 s",
    ),
    (
        "no-candidate",
        cluster(members={"pg2": {"nofailover": True}, "pg3": {"is_learner": True}}),
        {"pg1": {"reachable": False}},
        {},
        WAIT,
        "no failover possible: primary pg1 unreachable; no eligible candidate: pg1: excluded",
    ),
    (
        "failover",
        cluster(),
        {"pg1": {"reachable": False}, "pg3": {"received_lsn": 1001}},
        {},
        FailoverStarted,
        "failover: primary pg1 unreachable; pg3 has the most WAL (1001) among 2 eligible",
    ),
    ("failover-no-primary", replace(cluster(), primary=None), {}, {}, FailoverStarted, "failover: no primary; pg1 has"),
]


@pytest.mark.parametrize(("state", "per", "kw", "cls", "reason"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_arbiter_rule(
    state: ClusterState, per: dict[str, dict[str, Any]], kw: dict[str, Any], cls: type | str | None, reason: str
) -> None:
    kw = dict(kw)  # the table's rows are shared with other tests
    expired = kw.pop("expired", None)
    ob = observations(primary=state.primary, **per) if state.cluster_id else {}
    d = main(run(state, ob, expired=expired, **kw))
    if cls is None:
        assert d is None
        return
    assert kind(d) == cls, d
    assert d is not None and d.reason.startswith(reason), d.reason


def test_every_main_rule_is_exercised() -> None:
    covered = {r[0] for r in ROWS}
    assert not {r.name for r in RULES if not any(c.startswith(r.name) for c in covered)}


def test_failover_decision_contents_and_events() -> None:
    ds = run(cluster(), observations(pg1={"reachable": False}, pg3={"received_lsn": 1001}))
    d = main(ds)
    ev = event(d)
    assert isinstance(ev, FailoverStarted) and d is not None
    assert ev.chosen == "pg3" and ev.old_primary == "pg1" and d.revokes == "pg1"
    assert [(c.name, c.eligible) for c in ev.candidates] == [("pg1", False), ("pg2", True), ("pg3", True)]


def test_switchover_accept_event_and_revokes() -> None:
    d = main(run(SWITCH_REQ, observations()))
    assert d is not None and d.revokes is None
    ev = event(d)
    assert isinstance(ev, SwitchoverAccepted) and ev.candidate == "pg3" and ev.reason.startswith("switchover accepted")
    # An accepted switchover that fails takes the candidate's lease away; a refused request has none.
    f = main(run(SWITCH_OK, observations(pg1={"role": "replica"}), operation_since=NOW - 40))
    assert kind(f) is SwitchoverFailed and f is not None and f.revokes == "pg2"
    refused = main(run(SWITCH_REQ, observations(pg3={"pg_running": False})))
    assert kind(refused) is SwitchoverFailed and refused is not None and refused.revokes is None
    ff = main(run(FAILOVER, observations(**PRIMARY_DOWN), operation_since=NOW - 31))
    assert kind(ff) is FailoverFailed and ff is not None and ff.revokes == "pg2"


def test_scheduled_switchover_waits_until_due() -> None:
    import datetime as dt

    op = operation("switchover", "pg1", "pg3", scheduled_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    st = cluster(operations=(op,))
    assert main(run(st, observations())) is None
    assert kind(main(run(st, observations(), pending_switchover=op))) is SwitchoverAccepted


# --- health ---------------------------------------------------------------------------------------

HEALTH_ROWS: list[tuple[str, str, dict[str, Any], dict[str, Any], bool | None, str]] = [
    ("unreachable", "pg2", {"reachable": False}, {}, False, "pg2 unhealthy: unreachable: last report"),
    ("pg-down", "pg2", {"pg_running": False}, {}, False, "pg2 unhealthy: PostgreSQL is down"),
    ("primary-ok", "pg1", {}, {"healthy": False}, True, "pg1 healthy: running as primary"),
    ("primary-not-primary", "pg1", {"role": "replica"}, {}, False, "pg1 unhealthy: expected primary, reports"),
    ("unexpected-primary", "pg2", {"role": "primary"}, {}, False, "pg2 unhealthy: reports primary but is not"),
    ("timeline", "pg2", {"timeline": 2}, {}, False, "pg2 unhealthy: not on the cluster's timeline (role replica"),
    ("role-unknown", "pg2", {"role": "unknown"}, {}, False, "pg2 unhealthy: role unknown"),
    ("replica-streaming", "pg2", {}, {"healthy": False}, True, "pg2 healthy: streaming (reported by the replica)"),
    ("unchanged", "pg2", {}, {}, None, ""),
]

#: Rules that need the arbiter's own context: (rule, member, observation, member state, ArbiterInput
#: extras, healthy or None for "no verdict", reason prefix).
_SEEN = {"pg2": (True, "streaming from pg1"), "pg3": (True, "streaming from pg1")}
HEALTH_ROWS_CTX: list[tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any], bool | None, str]] = [
    ("unreachable-new-arbiter", "pg2", {"reachable": False}, {}, {"arbiter_since": NOW - 0.5}, None, ""),
    ("unreachable", "pg2", {"reachable": False}, {}, {"arbiter_since": NOW - 5}, False, "pg2 unhealthy: unreachable"),
    ("replica-primary-unknown", "pg2", {}, {"healthy": False}, {"streaming": {}}, None, ""),
    ("replica-streaming", "pg2", {}, {"healthy": False}, {"streaming": _SEEN}, True, "pg2 healthy: streaming from pg1"),
    ("replica-no-evidence", "pg2", {}, {"healthy": False}, {"streaming": {"pg2": (None, "watching")}}, None, ""),
    ("replica-no-evidence", "pg2", {"streaming": False, "replication_reason": "WAL receiver is waiting"},
     {"healthy": False}, {"streaming": _SEEN}, None, ""),
    ("replica-not-streaming", "pg2", {}, {}, {"streaming": {"pg2": (False, "not streaming: not connected")}},
     False, "pg2 unhealthy: not streaming: not connected"),
    ("replica-no-evidence", "pg2", {}, {}, {"streaming": {"pg2": (False, "not streaming")}, "arbiter_since": NOW - 1},
     None, ""),
]


@pytest.mark.parametrize(
    ("name", "o", "m", "kw", "healthy", "reason"),
    [r[1:] for r in HEALTH_ROWS_CTX],
    ids=[f"{r[0]}-{i}" for i, r in enumerate(HEALTH_ROWS_CTX)],
)
def test_health_rule_in_context(
    name: str, o: dict[str, Any], m: dict[str, Any], kw: dict[str, Any], healthy: bool | None, reason: str
) -> None:
    """Streaming is judged from the primary's side; a new arbiter and a missing primary judge nothing."""
    obs = observations(**{name: o})
    if kw.get("streaming") == {}:
        obs = observations(pg1={"reachable": False}, **{name: o})
    ds = health(run(cluster(members={name: m}), obs, **kw), name)
    if healthy is None:
        assert ds == []
        return
    ((d, ev),) = ds
    assert ev.healthy is healthy and d.reason.startswith(reason), d.reason


@pytest.mark.parametrize(
    ("name", "o", "m", "healthy", "reason"), [r[1:] for r in HEALTH_ROWS], ids=[r[0] for r in HEALTH_ROWS]
)
def test_health_rule(name: str, o: dict[str, Any], m: dict[str, Any], healthy: bool | None, reason: str) -> None:
    ds = health(run(cluster(members={name: m}), observations(**{name: o})))
    if healthy is None:
        assert ds == []
        return
    ((d, ev),) = ds
    assert ev.name == name and ev.healthy is healthy and d.reason.startswith(reason), d.reason


def test_promotion_is_recorded_only_with_its_fork_point() -> None:
    """The fork point goes into the committed timeline history, against which every replica's
    divergence is judged: a report without it (or with the previous timeline's) records nothing."""
    ob = observations(pg2={"role": "primary", "timeline": 2}, **PRIMARY_DOWN)
    assert kind(main(run(FAILOVER, ob, operation_since=NOW - 1))) is not FailoverCompleted
    ob = observations(pg2={"role": "primary", "timeline": 2, "timeline_start_lsn": 900}, **PRIMARY_DOWN)
    ev = event(main(run(FAILOVER, ob, operation_since=NOW - 1)))
    assert isinstance(ev, FailoverCompleted) and ev.lsn == 900


def test_failover_duration_is_the_write_outage() -> None:
    """Recorded from the old primary's last report as primary (what clients lived through), not from
    the decision (2.4 s vs 1 s); without that report, from the decision."""
    ob = observations(pg2={"role": "primary", "timeline": 2, "timeline_start_lsn": 900}, **PRIMARY_DOWN)
    ev = event(main(run(FAILOVER, ob, operation_since=NOW - 1, primary_last_ok_at=NOW - 2.4)))
    assert isinstance(ev, FailoverCompleted) and ev.duration_ms == 2400
    ev = event(main(run(FAILOVER, ob, operation_since=NOW - 1)))
    assert isinstance(ev, FailoverCompleted) and ev.duration_ms == 1000


def test_every_health_rule_is_exercised() -> None:
    assert {r.name for r in HEALTH_RULES} <= {r[0] for r in HEALTH_ROWS} | {r[0] for r in HEALTH_ROWS_CTX}


# --- sync set -------------------------------------------------------------------------------------


def test_sync_change_emitted_only_when_primary_healthy_and_idle() -> None:
    on = HASettings(synchronous_mode="on")
    ds = run(cluster(), observations(pg1={"sync_standby_names": ""}), settings=on)
    ((d, ev),) = sync_changes(ds)
    assert ev.mode == "on" and ev.num_sync == 0
    st = cluster(sync_mode="on")
    ds = run(st, observations(pg1={"sync_standby_names": 'FIRST 1 ("pg2")'}), settings=on)
    ((d, ev),) = sync_changes(ds)
    assert ev.standbys == ("pg2",) and d.guard_position == 10 and d.reason.startswith("step 2/2")
    # a health change in the same tick suppresses the guarded step
    ds = run(st, observations(pg1={"sync_standby_names": 'FIRST 1 ("pg2")'}, pg3={"reachable": False}), settings=on)
    assert not sync_changes(ds)
    assert not sync_changes(run(FAILOVER, observations(), settings=on))


def test_degraded_event_reason() -> None:
    on = HASettings(synchronous_mode="on")
    st = cluster(
        sync_mode="on",
        num_sync=1,
        sync_standbys=("pg2",),
        members={"pg2": {"healthy": False}, "pg3": {"healthy": False}},
    )
    ob = observations(pg2={"pg_running": False}, pg3={"pg_running": False})
    ((d, ev),) = sync_changes(run(st, ob, settings=on))
    assert ev.num_sync == 0 and ev.standbys == () and "degraded to async" in d.reason
    assert "degraded to async" in event(d).reason  # type: ignore[attr-defined]


# --- lease grant policy -----------------------------------------------------------------------------

STOPPED: dict[str, Any] = {
    "pg_running": False, "role": "unknown", "received_lsn": None, "replayed_lsn": None, "lease_released": True
}


@pytest.mark.parametrize(
    ("state", "per", "holder", "granted", "reason"),
    [
        (cluster(), {}, "pg1", True, "pg1 is the primary"),
        (cluster(), {}, "pg2", False, "pg2 is not the primary (pg1 is)"),
        (cluster(primary=None), {}, "pg1", False, "no primary"),
        (FAILOVER, {}, "pg2", True, "pg2 is the failover candidate"),
        (FAILOVER, {}, "pg1", False, "failover to pg2 in progress"),
        (SWITCH_OK, {}, "pg1", True, "pg1 is demoting for the switchover"),
        (SWITCH_OK, {}, "pg2", False, "pg1 has not demoted yet"),
        (SWITCH_OK, {"pg1": {"role": "replica", "received_lsn": 2000}}, "pg2", False, "pg2 has not caught up"),
        (SWITCH_OK, {"pg1": {"role": "replica"}}, "pg2", True, "pg2 is the switchover candidate and has caught up"),
        (SWITCH_OK, {"pg1": {"role": "replica"}}, "pg3", False, "switchover pg1 -> pg2 in progress"),
        # Stopped cleanly, not yet a standby: judged by where its shutdown checkpoint starts.
        (SWITCH_OK, {"pg1": STOPPED}, "pg2", False, "pg1 stopped; its final WAL position is not known"),
        (
            SWITCH_OK,
            {"pg1": {**STOPPED, "stopped_lsn": 1000}, "pg2": {"received_lsn": 1000, "replayed_lsn": 900}},
            "pg2",
            False,
            "pg2 has not received pg1's shutdown checkpoint (1000 <= 1000)",
        ),
        (
            SWITCH_OK,
            {"pg1": {**STOPPED, "stopped_lsn": 1000}, "pg2": {"received_lsn": 1104, "replayed_lsn": 900}},
            "pg2",
            True,
            "pg2 is the switchover candidate and has caught up",
        ),
    ],
)
def test_grant_policy(
    state: ClusterState, per: dict[str, dict[str, Any]], holder: str, granted: bool, reason: str
) -> None:
    v = grant_policy(state, observations(**per), S, holder, NOW)
    assert v.granted is granted and v.reason.startswith(reason), v.reason


def test_grant_refused_after_primary_start_timeout() -> None:
    v = grant_policy(cluster(), observations(pg1={"pg_running": False}), S, "pg1", NOW, primary_down_since=NOW - 31)
    assert not v.granted and "primary_start_timeout_s" in v.reason


def test_decide_grant_combines_policy_and_view() -> None:
    lv = ArbiterLeaseView(S)
    lv.on_became_leader(NOW - 0.1, steady_holder=steady_holder(cluster()))
    inp = ArbiterInput(now=NOW, state=FAILOVER, observations=observations(), lease=lv, settings=S)
    r = decide_grant(inp, "pg2")
    assert not r.granted and r.reason.startswith("lease of pg1 may be valid")
    assert steady_holder(FAILOVER) is None
    assert decide_grant(replace(inp, now=NOW - 0.1 + lv.presumed_wait), "pg2").granted


def test_released_old_primary_does_not_delay_the_candidate() -> None:
    """A clean demotion ends the old primary's grant at once; a merely silent one does not."""
    lv = ArbiterLeaseView(S)
    lv.on_became_leader(NOW - 0.1, steady_holder="pg1")
    lv.on_grant("pg1", NOW - 0.05)
    caught_up = {"pg2": {"received_lsn": 5000}}
    stopped = observations(pg1={**STOPPED, "stopped_lsn": 1000}, **caught_up)
    not_released = observations(pg1={**STOPPED, "stopped_lsn": 1000, "lease_released": False}, **caught_up)
    r = decide_grant(ArbiterInput(now=NOW, state=SWITCH_OK, observations=not_released, lease=lv, settings=S), "pg2")
    assert not r.granted and r.reason.startswith("lease of pg1 may be valid"), r.reason
    r = decide_grant(ArbiterInput(now=NOW, state=SWITCH_OK, observations=stopped, lease=lv, settings=S), "pg2")
    assert r.granted, r.reason
    # Only the switchover's candidate benefits; the release is not a licence for anyone else.
    lv2 = ArbiterLeaseView(S)
    lv2.on_became_leader(NOW - 0.1, steady_holder="pg1")
    r = decide_grant(ArbiterInput(now=NOW, state=FAILOVER, observations=stopped, lease=lv2, settings=S), "pg2")
    assert not r.granted, r.reason


def test_decisions_carry_their_rule_into_the_events() -> None:
    """The table's order decides priority; the winning row's name travels with the decision."""
    names = {r.name for r in RULES}
    for row_id, state, per, kw, cls, _ in ROWS:
        if cls is None:
            continue
        kw = dict(kw)
        expired = kw.pop("expired", None)
        ob = observations(primary=state.primary, **per) if state.cluster_id else {}
        d = main(run(state, ob, expired=expired, **kw))
        assert d is not None and d.rule in names, (row_id, d)
        assert d.reason.startswith(next(r.reason for r in RULES if r.name == d.rule)), (row_id, d.rule)
        reasons = [str(ev.reason) for ev in d.to_events() if hasattr(ev, "reason")]
        assert all(r.endswith(f"[rule {d.rule}]") for r in reasons), reasons
    ((h, _),) = health(run(cluster(), observations(pg2={"pg_running": False})))
    ev = event(h)
    assert h.rule == "health:pg-down" and isinstance(ev, MemberHealthChanged)
    assert ev.reason.endswith("[rule health:pg-down]")
