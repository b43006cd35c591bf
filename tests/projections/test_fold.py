"""The pure fold: one test per event type, and split-invariance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ram.eventstore import events as e
from ram.projections.state import ClusterState, OperationRecord, TimelineRecord, fold

from .strategies import stored_sequences

T0 = datetime(2025, 1, 1, tzinfo=UTC)


class Log:
    """Builds StoredEvents at increasing positions."""

    def __init__(self) -> None:
        self.position = 0

    def __call__(self, *evs: e.Event) -> list[e.StoredEvent]:
        self.position += 1
        return [
            e.StoredEvent(position=self.position, sub=i, term=1, proposer=1, ts=self.ts, event=ev)
            for i, ev in enumerate(evs)
        ]

    @property
    def ts(self) -> datetime:
        return T0 + timedelta(seconds=self.position)


def spec(name: str, node_id: int, **kw: object) -> e.MemberSpec:
    return e.MemberSpec(
        name=name,
        node_id=node_id,
        raft_address=f"{name}:7000",
        api_address=f"{name}:8008",
        pg_host=name,
        pg_port=5432,
        **kw,
    )


def added(name: str, node_id: int, learner: bool = False) -> e.MemberAdded:
    return e.MemberAdded(**spec(name, node_id).model_dump(), as_learner=learner)


BOOT = e.ClusterBootstrapped(
    cluster_id="c-1",
    cluster_name="main",
    members=(spec("n1", 1), spec("n2", 2, tags=e.MemberTags(nofailover=True))),
    dynamic_config={"ttl": 30, "loop_wait": 10},
)


def booted() -> tuple[Log, ClusterState]:
    log = Log()
    return log, fold(ClusterState.empty(), log(BOOT, e.PrimaryPromoted(name="n1", timeline=1, lsn=100)))


def test_empty() -> None:
    s = ClusterState.empty()
    assert s.members == {} and s.primary is None and s.last_position == 0 and s.events_applied == 0
    assert fold(s, []) == s


def test_cluster_bootstrapped() -> None:
    log, s = booted()
    assert (s.cluster_id, s.cluster_name, s.bootstrapped_position) == ("c-1", "main", 1)
    assert set(s.members) == {"n1", "n2"}
    assert s.members["n2"].tags.nofailover and not s.members["n2"].is_learner
    assert s.dynamic_config == {"ttl": 30, "loop_wait": 10}
    assert s.last_position == 1 and s.events_applied == 2
    # A second bootstrap is ignored (but counted).
    other = e.ClusterBootstrapped(cluster_id="c-2", cluster_name="x", members=(spec("n9", 9),))
    s2 = fold(s, log(other))
    assert s2.cluster_id == "c-1" and "n9" not in s2.members and s2.events_applied == 3


def test_member_added_learner_promoted_and_conflicts() -> None:
    log, s = booted()
    s = fold(s, log(added("n3", 3, learner=True)))
    assert s.members["n3"].is_learner and s.members["n3"].added_position == 2
    assert s.voters == ("n1", "n2")
    same_name = fold(s, log(added("n3", 7)))
    same_id = fold(s, log(added("n7", 3)))
    assert same_name.members == s.members and same_id.members == s.members
    assert fold(s, log(e.LearnerPromoted(name="n3", node_id=4))).members["n3"].is_learner  # id mismatch
    s = fold(s, log(e.LearnerPromoted(name="n3", node_id=3)))
    assert not s.members["n3"].is_learner
    assert fold(s, log(e.LearnerPromoted(name="zz", node_id=3))).members == s.members


def test_member_removed() -> None:
    log, s = booted()
    s = fold(s, log(e.SynchronousStandbysChanged(mode="on", num_sync=1, standbys=("n2", "n1"))))
    assert s.sync_standbys == ("n1", "n2")
    assert set(fold(s, log(e.MemberRemoved(name="n2", node_id=5))).members) == {"n1", "n2"}
    s = fold(s, log(e.MemberRemoved(name="n2", node_id=2, reason="decommissioned")))
    assert set(s.members) == {"n1"} and s.sync_standbys == ("n1",) and s.primary == "n1"
    s = fold(s, log(e.MemberRemoved(name="n1", node_id=1)))
    assert s.primary is None and s.sync_standbys == () and s.timeline == 1


def test_member_tags_changed() -> None:
    log, s = booted()
    tags = e.MemberTags(nofailover=True, noloadbalance=True, nosync=True, failover_priority=0)
    s = fold(s, log(e.MemberTagsChanged(name="n1", tags=tags), e.MemberTagsChanged(name="nx", tags=tags)))
    assert s.members["n1"].tags == tags and "nx" not in s.members


def test_raft_leader_elected() -> None:
    log, s = booted()
    s = fold(s, log(e.RaftLeaderElected(term=3, leader_name="n2", leader_node_id=2)))
    assert (s.raft_leader, s.raft_leader_node_id, s.raft_term) == ("n2", 2, 3)
    stale = fold(s, log(e.RaftLeaderElected(term=2, leader_name="n1", leader_node_id=1)))
    assert (stale.raft_leader, stale.raft_term) == ("n2", 3)
    s = fold(s, log(e.RaftLeaderElected(term=4, leader_name="n1", leader_node_id=1)))
    assert (s.raft_leader, s.raft_term) == ("n1", 4)


def test_member_health_changed() -> None:
    log, s = booted()
    ev = e.MemberHealthChanged(
        name="n2", healthy=False, pg_running=True, role="replica", timeline=1, lsn=4096, lag_bytes=12, reason="lag"
    )
    s = fold(s, log(ev, e.MemberHealthChanged(name="ghost", healthy=True, pg_running=True)))
    m = s.members["n2"]
    assert (m.healthy, m.pg_running, m.reported_role, m.timeline, m.lsn, m.lag_bytes, m.health_reason) == (
        False,
        True,
        "replica",
        1,
        4096,
        12,
        "lag",
    )
    assert m.health_position == 2 and m.health_at == log.ts
    assert "ghost" not in s.members
    assert s.members["n1"].healthy is None


def test_failover_started_completed() -> None:
    log, s = booted()
    cand = (e.CandidateInfo(name="n2", lsn=200, eligible=True),)
    s = fold(s, log(e.FailoverStarted(old_primary="n1", reason="primary down", candidates=cand, chosen="n2")))
    assert s.current_operation is not None and s.current_operation.kind == "failover"
    started_ts = log.ts
    s = fold(
        s,
        log(e.FailoverCompleted(old_primary="n1", new_primary="n2", timeline=2, lsn=300, duration_ms=1500)),
    )
    assert s.primary == "n2" and s.timeline == 2
    assert s.operations == (
        OperationRecord(
            kind="failover",
            outcome="succeeded",
            started_position=2,
            started_at=started_ts,
            old_primary="n1",
            new_primary="n2",
            candidate="n2",
            candidates=cand,
            reason="primary down",
            completed_position=3,
            completed_at=log.ts,
            duration_ms=1500,
            timeline=2,
            lsn=300,
        ),
    )
    assert s.timeline_history == (
        TimelineRecord(timeline=1, primary="n1", lsn=100, position=1, at=T0 + timedelta(seconds=1)),
        TimelineRecord(timeline=2, primary="n2", lsn=300, position=3, at=log.ts),
    )
    assert s.current_operation is None


def test_failover_failed_and_superseded_and_orphan_completion() -> None:
    log, s = booted()
    s = fold(s, log(e.FailoverStarted(old_primary="n1", reason="down")))
    s = fold(s, log(e.FailoverStarted(old_primary="n1", reason="still down")))
    assert [o.outcome for o in s.operations] == ["superseded", "in_progress"]
    assert s.operations[0].completed_position == 3
    s = fold(s, log(e.FailoverFailed(old_primary="n1", reason="no candidate")))
    assert s.operations[1].outcome == "failed" and s.operations[1].error == "no candidate"
    assert s.primary == "n1"
    # A completion without a start is recorded as a closed operation of its own.
    s = fold(s, log(e.FailoverCompleted(old_primary=None, new_primary="n2", timeline=2, lsn=1, duration_ms=0)))
    last = s.operations[-1]
    assert (last.outcome, last.started_position, last.completed_position, last.new_primary) == ("succeeded", 5, 5, "n2")


def test_switchover() -> None:
    log, s = booted()
    at = T0 + timedelta(hours=1)
    s = fold(s, log(e.SwitchoverRequested(primary="n1", candidate="n2", scheduled_at=at, requested_by="alice")))
    op = s.operations[-1]
    assert (op.kind, op.outcome, op.candidate, op.scheduled_at, op.requested_by) == (
        "switchover",
        "in_progress",
        "n2",
        at,
        "alice",
    )
    s = fold(s, log(e.SwitchoverFailed(primary="n1", candidate=None, reason="n2 lagging")))
    op = s.operations[-1]
    assert (op.outcome, op.candidate, op.error) == ("failed", "n2", "n2 lagging")
    s = fold(s, log(e.SwitchoverRequested(primary="n1", requested_by="bob")))
    s = fold(s, log(e.SwitchoverCompleted(old_primary="n1", new_primary="n2", timeline=2, lsn=500, duration_ms=80)))
    op = s.operations[-1]
    assert (op.outcome, op.new_primary, op.duration_ms, op.lsn) == ("succeeded", "n2", 80, 500)
    assert s.primary == "n2" and s.timeline == 2 and len(s.timeline_history) == 2


def test_primary_promoted_history_only_on_change() -> None:
    log, s = booted()
    assert len(s.timeline_history) == 1
    s = fold(s, log(e.PrimaryPromoted(name="n1", timeline=1, lsn=999)))
    assert len(s.timeline_history) == 1
    s = fold(s, log(e.NodeFenced(name="n2", reason="lease")))
    assert s.members["n2"].fenced
    s = fold(s, log(e.PrimaryPromoted(name="n2", timeline=2, lsn=1000)))
    assert s.timeline_history[-1] == TimelineRecord(2, "n2", 1000, 4, log.ts)
    assert not s.members["n2"].fenced and s.members["n2"].following is None
    # An unknown member can still be recorded as primary (the committed fact).
    s = fold(s, log(e.PrimaryPromoted(name="ghost", timeline=3, lsn=2000)))
    assert s.primary == "ghost" and "ghost" not in s.members


def test_replica_following_rejoined_and_fencing() -> None:
    log, s = booted()
    s = fold(s, log(e.NodeFenced(name="n1", reason="lease expired", lease_expired_at_ms=123)))
    assert s.members["n1"].fenced and s.members["n1"].fence_reason == "lease expired"
    assert s.primary == "n1"  # fencing does not by itself change the committed primary
    s = fold(s, log(e.ReplicaRejoined(name="n1", primary="n2", method="rewind")))
    m = s.members["n1"]
    assert (m.fenced, m.following, m.rejoin_method) == (False, "n2", "rewind")
    s = fold(s, log(e.NodeFenced(name="n2", reason="x"), e.ReplicaFollowing(name="n2", primary="n1")))
    assert s.members["n2"].following == "n1" and not s.members["n2"].fenced
    assert fold(s, log(e.ReplicaFollowing(name="zz", primary="n1"))).members == s.members


def test_synchronous_standbys_changed() -> None:
    log, s = booted()
    s = fold(s, log(e.SynchronousStandbysChanged(mode="quorum", num_sync=1, standbys=("n3", "n2"), reason="x")))
    assert (s.sync_mode, s.num_sync, s.sync_standbys) == ("quorum", 1, ("n2", "n3"))
    s = fold(s, log(e.SynchronousStandbysChanged(mode="off", num_sync=0)))
    assert (s.sync_mode, s.num_sync, s.sync_standbys) == ("off", 0, ())


def test_maintenance_mode_changed() -> None:
    log, s = booted()
    s = fold(s, log(e.MaintenanceModeChanged(enabled=True, reason="upgrade", by="alice")))
    assert (s.maintenance, s.maintenance_reason, s.maintenance_by) == (True, "upgrade", "alice")
    s = fold(s, log(e.MaintenanceModeChanged(enabled=False, by="alice")))
    assert (s.maintenance, s.maintenance_reason) == (False, "")


def test_dynamic_config_changed() -> None:
    log, s = booted()
    ev = e.DynamicConfigChanged(
        changes={
            "ttl": e.ConfigChange(old=30, new=None),
            "max_connections": e.ConfigChange(new=200),
            "loop_wait": e.ConfigChange(old=10, new={"a": [1, 2.5]}),
        },
        pending_restart=("max_connections", "max_connections", "a"),
    )
    s = fold(s, log(ev))
    assert s.dynamic_config == {"max_connections": 200, "loop_wait": {"a": [1, 2.5]}}
    assert s.pending_restart == ("a", "max_connections")


def test_command_rejected_changes_only_counters() -> None:
    log, s = booted()
    s2 = fold(s, log(e.CommandRejected(command="add_member", reason="exists")))
    assert s2.last_position == 2 and s2.events_applied == s.events_applied + 1
    from dataclasses import replace

    assert replace(s2, last_position=s.last_position, events_applied=s.events_applied) == s


def test_fold_does_not_mutate_input() -> None:
    log, s = booted()
    before = (dict(s.members), dict(s.dynamic_config), s.operations)
    fold(s, log(e.MemberRemoved(name="n2", node_id=2)))
    fold(s, log(e.DynamicConfigChanged(changes={"ttl": e.ConfigChange(new=1)})))
    assert (dict(s.members), dict(s.dynamic_config), s.operations) == before


@settings(max_examples=300, deadline=None)
@given(stored_sequences(max_size=40), st.data())
def test_fold_is_split_invariant(seq: list[e.StoredEvent], data: st.DataObject) -> None:
    whole = fold(ClusterState.empty(), seq)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(seq)), max_size=5)))
    state = ClusterState.empty()
    prev = 0
    for cut in [*cuts, len(seq)]:
        state = fold(state, iter(seq[prev:cut]))  # any iterable, consumed once
        prev = cut
    assert state == whole
    assert whole.events_applied == len(seq)
    assert whole.last_position == (seq[-1].position if seq else 0)


def test_accepted_switchover_is_the_same_operation() -> None:
    """The arbiter's acceptance names the candidate of the request in progress: one history row."""
    log, s = booted()
    s = fold(s, log(e.SwitchoverRequested(primary="n1", candidate=None, requested_by="alice", reason="patching")))
    requested = s.operations[-1]
    accepted_reason = "switchover accepted: n2 has the most WAL"
    assert not requested.accepted
    s = fold(s, log(e.SwitchoverAccepted(primary="n1", candidate="n2", reason=accepted_reason)))
    assert len(s.operations) == 1
    op = s.operations[0]
    assert (op.outcome, op.candidate, op.reason, op.requested_by) == ("in_progress", "n2", accepted_reason, "alice")
    assert op.accepted
    assert op.started_at == requested.started_at and op.started_position == requested.started_position + 1
    s = fold(s, log(e.SwitchoverCompleted(old_primary="n1", new_primary="n2", timeline=2, lsn=9, duration_ms=700)))
    assert [o.outcome for o in s.operations] == ["succeeded"]
    # Without a switchover in progress an acceptance starts one (the fold is total).
    s = fold(s, log(e.SwitchoverAccepted(primary="n2", candidate="n1", reason=accepted_reason)))
    assert [o.outcome for o in s.operations] == ["succeeded", "in_progress"]
    assert s.operations[-1].accepted
    # A request is never an acceptance, whatever its reason says (revision 0005 ended the prefix).
    s = fold(s, log(e.SwitchoverRequested(primary="n2", candidate="n3", reason="accepted by the arbiter: x")))
    assert [(o.outcome, o.accepted) for o in s.operations[1:]] == [("superseded", True), ("in_progress", False)]
