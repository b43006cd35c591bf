"""Moving Raft leadership off the primary's node (ram.ha.leadership): one case per outcome."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ram.ha.leadership import LEADER_MOVE_AFTER_S, LeadershipMove, plan_leadership_move
from ram.ha.settings import HASettings

from .helpers import cluster, observations, operation

S = HASettings()
NOW = 100.5


def plan(**kw: Any) -> LeadershipMove:
    args: dict[str, Any] = {
        "state": cluster(),
        "me": "pg1",
        "now": NOW,
        "leader_since": 1.0,
        "steady_primary_since": 1.0,
        "moved_at": 0.0,
        "observations": observations(),
        "settings": S,
    }
    args.update(kw)
    return plan_leadership_move(**args)


def test_moves_to_healthy_reporting_replicas_once_settled() -> None:
    m = plan()
    assert (m.rule, m.targets, m.steady_primary_since) == ("move-off-primary", frozenset({2, 3}), 1.0)


def test_stays_when_not_hosting_the_steady_primary() -> None:
    assert plan(me="pg2").rule == "not-the-primary" and plan(me="pg2").steady_primary_since is None
    busy = replace(cluster(), operations=(operation("failover", "pg1", "pg2"),))
    assert plan(state=busy).rule == "not-the-primary"
    assert plan(leader_since=0.0).rule == "not-the-primary"  # leadership start unknown


def test_waits_until_settled() -> None:
    first = plan(steady_primary_since=None)  # starts hosting now: wait
    assert (first.rule, first.steady_primary_since, first.targets) == ("settling", NOW, frozenset())
    assert plan(leader_since=NOW - LEADER_MOVE_AFTER_S + 0.1).rule == "settling"
    assert plan(moved_at=NOW - 1.0).rule == "settling"  # at most this often


def test_needs_a_healthy_fresh_replica() -> None:
    sick = cluster(members={"pg2": {"healthy": False}, "pg3": {"is_learner": True}})
    assert plan(state=sick).rule == "no-healthy-replica"
    stale = observations(pg2={"observed_at": 0.0}, pg3={"observed_at": 0.0})
    assert plan(observations=stale).rule == "no-healthy-replica"
    assert plan(state=cluster(members={"pg3": {"reported_role": "unknown"}})).targets == frozenset({2})
