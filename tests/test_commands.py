"""The pure rule from committed commands to events: HA operations keep one operation at a time and
refuse targets that may not take over."""

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ram.eventstore.commands import (
    Arbitrate,
    BootstrapCluster,
    ReportFact,
    RequestMemberAction,
    RequestSwitchover,
    SetMaintenance,
    SetTags,
    StartFailover,
    decide,
)
from ram.eventstore.events import (
    Event,
    FailoverCompleted,
    MemberActionCompleted,
    MemberHealthChanged,
    MemberSpec,
    MemberTags,
    PrimaryPromoted,
    StoredEvent,
    SwitchoverFailed,
)
from ram.projections.state import ClusterState, fold

TS = datetime(2026, 11, 26, tzinfo=UTC)


def apply(state: ClusterState, command: object, position: int) -> tuple[ClusterState, list[str]]:
    events = decide(state, command, TS, 2)  # type: ignore[arg-type]
    stored = [StoredEvent(position=position, sub=i, term=2, proposer=1, ts=TS, event=e) for i, e in enumerate(events)]
    return fold(state, stored), [e.type for e in events]


def cluster() -> ClusterState:
    members = tuple(
        MemberSpec(name=f"pg{i}", node_id=i, raft_address=f"127.0.0.1:{7400 + i}", api_address=f"127.0.0.1:{8000 + i}",
                   pg_host="127.0.0.1", pg_port=5432 + i)
        for i in (1, 2, 3)
    )
    state, _ = apply(ClusterState.empty(), BootstrapCluster(cluster_id="c", cluster_name="c", members=members), 1)
    state, types = apply(state, arbitrated(state, PrimaryPromoted(name="pg1", timeline=1, lsn=0)), 2)
    assert types == ["primary_promoted"] and state.primary == "pg1"
    return state


def arbitrated(state: ClusterState, *events: Event) -> Arbitrate:
    """The arbiter's proposal of ``events`` decided on ``state`` (how operations complete or fail)."""
    return Arbitrate(events=events, based_on=state.last_position)


def test_arbiter_decisions_on_stale_state_yield_nothing() -> None:
    state = cluster()
    stale = Arbitrate(events=(PrimaryPromoted(name="pg2", timeline=2, lsn=5),), based_on=state.last_position - 1)
    state, types = apply(state, stale, 3)
    assert types == [] and state.primary == "pg1"


def test_failover_lifecycle() -> None:
    state, types = apply(cluster(), StartFailover(old_primary="pg1", candidate="pg2", reason="lease expired"), 3)
    assert types == ["failover_started"]
    state, types = apply(state, StartFailover(old_primary="pg1", candidate="pg3", reason="again"), 4)
    assert types == ["command_rejected"], "one operation at a time"
    done = FailoverCompleted(old_primary="pg1", new_primary="pg2", timeline=2, lsn=1, duration_ms=5)
    state, types = apply(state, arbitrated(state, done), 6)
    assert types == ["failover_completed"] and state.primary == "pg2" and state.timeline == 2
    assert state.current_operation is None


def test_failover_refusals() -> None:
    state = cluster()
    maint, _ = apply(state, SetMaintenance(enabled=True), 3)
    _, types = apply(maint, StartFailover(old_primary="pg1", candidate="pg2", reason="x"), 4)
    assert types == ["command_rejected"]
    _, types = apply(maint, StartFailover(old_primary="pg1", candidate="pg2", reason="x", forced=True), 4)
    assert types == ["failover_started"], "a forced (manual) failover ignores maintenance"
    tagged, _ = apply(state, SetTags(name="pg2", tags=MemberTags(nofailover=True)), 3)
    _, types = apply(tagged, StartFailover(old_primary="pg1", candidate="pg2", reason="x"), 4)
    assert types == ["command_rejected"]
    _, types = apply(state, StartFailover(old_primary="pg1", candidate="pg1", reason="x"), 4)
    assert types == ["command_rejected"]


def test_targets_follow_the_one_candidate_rule() -> None:
    """Command validation uses ram.ha.candidates.target_refusal: a forced failover overrides
    nofailover (tag or priority 0) but never promotes a learner."""
    state = cluster()
    zero, _ = apply(state, SetTags(name="pg2", tags=MemberTags(failover_priority=0)), 3)
    _, types = apply(zero, RequestSwitchover(candidate="pg2"), 4)
    assert types == ["command_rejected"]
    _, types = apply(zero, StartFailover(old_primary="pg1", candidate="pg2", reason="x", forced=True), 4)
    assert types == ["failover_started"]
    learner = replace(state, members={**state.members, "pg3": replace(state.members["pg3"], is_learner=True)})
    _, types = apply(learner, StartFailover(old_primary="pg1", candidate="pg3", reason="x", forced=True), 4)
    assert types == ["command_rejected"]


@pytest.mark.parametrize("target", ["pg1", "nope"])
def test_switchover_refusals(target: str) -> None:
    _, types = apply(cluster(), RequestSwitchover(candidate=target), 3)
    assert types == ["command_rejected"]


def test_switchover_fail_then_retry() -> None:
    state, types = apply(cluster(), RequestSwitchover(candidate="pg3"), 3)
    assert types == ["switchover_requested"]
    failed = SwitchoverFailed(primary="pg1", candidate="pg3", reason="target lagging")
    state, types = apply(state, arbitrated(state, failed), 4)
    assert types == ["switchover_failed"] and state.primary == "pg1"
    state, types = apply(state, RequestSwitchover(candidate="pg3"), 5)
    assert types == ["switchover_requested"]


def test_facts_need_a_known_member() -> None:
    ok = MemberHealthChanged(name="pg2", healthy=True, pg_running=True, role="replica")
    bad = MemberHealthChanged(name="ghost", healthy=True, pg_running=True, role="replica")
    _, types = apply(cluster(), ReportFact(event=ok), 3)
    assert types == ["member_health_changed"]
    _, types = apply(cluster(), ReportFact(event=bad), 3)
    assert types == ["command_rejected"]


def test_member_action_lifecycle() -> None:
    """One pending action per member; the primary is never re-cloned; the member's report clears it
    only for the action that was asked."""
    state, types = apply(cluster(), RequestMemberAction(name="pg2", action="restart", requested_by="op"), 3)
    assert types == ["member_action_requested"]
    assert (state.members["pg2"].pending_action, state.members["pg2"].pending_action_position) == ("restart", 3)
    again, types = apply(state, RequestMemberAction(name="pg2", action="reinit"), 4)
    assert types == ["command_rejected"] and again.members["pg2"].pending_action == "restart"
    other, types = apply(state, ReportFact(event=MemberActionCompleted(name="pg2", action="reinit", ok=True)), 4)
    assert types == ["member_action_completed"] and other.members["pg2"].pending_action == "restart"
    done, _ = apply(state, ReportFact(event=MemberActionCompleted(name="pg2", action="restart", ok=True)), 4)
    assert done.members["pg2"].pending_action is None and done.members["pg2"].pending_action_position is None
    _, types = apply(cluster(), RequestMemberAction(name="pg1", action="reinit"), 3)
    assert types == ["command_rejected"]
    _, types = apply(cluster(), RequestMemberAction(name="ghost", action="restart"), 3)
    assert types == ["command_rejected"]
    busy, _ = apply(cluster(), RequestSwitchover(candidate="pg3"), 3)
    assert busy.current_operation is not None
    _, types = apply(busy, RequestMemberAction(name="pg2", action="restart"), 4)
    assert types == ["command_rejected"]
