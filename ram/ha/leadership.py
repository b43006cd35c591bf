"""Where the Raft leader should be: never on the primary's node, once things have settled.

When one node is both the Raft leader and the primary, losing it costs an election AND then the
full lease wait of the new leader (which must presume the last grant happened as late as its own
election) before a failover; with the leader elsewhere the survivors only wait out the lease. So a
leader that hosts the steady primary hands leadership to a healthy replica's node, but only once
it has led, hosted the primary and last moved leadership at least :data:`LEADER_MOVE_AFTER_S` ago
(the follow-up decisions of a failover commit first, and leadership does not bounce).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ram.ha.arbiter import steady_holder
from ram.ha.candidates import MemberObservation, is_fresh
from ram.ha.settings import HASettings
from ram.projections.state import ClusterState

__all__ = ["LEADER_MOVE_AFTER_S", "LeadershipMove", "plan_leadership_move"]

#: A leader that hosts the steady primary moves leadership once it has led this long (and at most
#: this often).
LEADER_MOVE_AFTER_S = 2.0


@dataclass(frozen=True, slots=True)
class LeadershipMove:
    """``targets``: node ids to hand leadership to (empty: stay). ``steady_primary_since``: what
    the runner remembers for the next tick (since when this node hosts the steady primary)."""

    rule: str
    reason: str
    steady_primary_since: float | None
    targets: frozenset[int] = frozenset()


def plan_leadership_move(
    *,
    state: ClusterState,
    me: str,
    now: float,
    leader_since: float,
    steady_primary_since: float | None,
    moved_at: float,
    observations: Mapping[str, MemberObservation],
    settings: HASettings,
) -> LeadershipMove:
    """Should this leader (member ``me``, leading since ``leader_since``, 0: unknown) move Raft
    leadership off its node now, and to which nodes?"""
    if steady_holder(state) != me or not leader_since:
        return LeadershipMove("not-the-primary", "this node does not host the steady primary", None)
    hosting = now if steady_primary_since is None else steady_primary_since
    settled = min(now - leader_since, now - hosting, now - moved_at)
    if settled < LEADER_MOVE_AFTER_S:
        return LeadershipMove("settling", f"settled for {settled:.1f} s < {LEADER_MOVE_AFTER_S} s", hosting)
    replicas = frozenset(
        m.node_id
        for m in state.members.values()
        if m.name != me
        and not m.is_learner
        and m.healthy
        and m.reported_role == "replica"
        and is_fresh(observations.get(m.name), now, settings)
    )
    if not replicas:
        return LeadershipMove("no-healthy-replica", "no healthy, reporting replica to lead instead", hosting)
    return LeadershipMove(
        "move-off-primary", "a node loss would otherwise need an election before the failover", hosting, replicas
    )
