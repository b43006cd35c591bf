"""The HA clocks: since when something has held, as pure functions of observed times.

The arbiter and the keeper decide on durations (how long the primary has been down, how long an
operation has run, how long a standby has not streamed); the runtime only observes and remembers.
Each function takes what it knew before and what it sees now and returns what it knows next, so
that every timer can be tested without a clock, a loop or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ram.ha.candidates import MemberObservation
from ram.ha.settings import HASettings
from ram.projections.state import ClusterState, OperationRecord

__all__ = ["ArbiterClocks", "advance_arbiter_clocks", "due_switchover", "primary_seen_down", "since"]


def since(previous: float | None, holds: bool, now: float) -> float | None:
    """When a condition that holds now began: kept while it holds, None as soon as it does not."""
    if not holds:
        return None
    return now if previous is None else previous


def primary_seen_down(obs: MemberObservation | None, now: float, settings: HASettings) -> bool:
    """The committed primary counts as down when it has not reported within ``report_timeout_s``
    or reports its PostgreSQL not running."""
    return obs is None or now - obs.observed_at > settings.report_timeout_s or not obs.pg_running


@dataclass(frozen=True, slots=True)
class ArbiterClocks:
    """What the arbiter remembers between ticks (all on its own monotonic clock; reset when it
    loses Raft leadership, because another arbiter's clock is not ours).

    ``primary_down_since``: first tick that saw the committed primary down. ``primary_last_ok_at``:
    its last report as a running primary (a failover's outage starts there). ``operation_since``:
    when this arbiter first saw the operation that started at ``operation_key`` (its
    started_position) in progress."""

    primary_down_since: float | None = None
    primary_last_ok_at: float | None = None
    operation_key: int | None = None
    operation_since: float | None = None


def advance_arbiter_clocks(
    clocks: ArbiterClocks,
    state: ClusterState,
    observations: Mapping[str, MemberObservation],
    now: float,
    settings: HASettings,
) -> ArbiterClocks:
    """The clocks after this tick. Without a committed primary the primary's clocks stay as they
    are (nobody to watch); a new operation (another started_position) restarts the operation clock."""
    down_since, last_ok = clocks.primary_down_since, clocks.primary_last_ok_at
    if state.primary is not None:
        obs = observations.get(state.primary)
        if obs is not None and obs.pg_running and obs.role == "primary":
            last_ok = obs.observed_at
        down_since = since(down_since, primary_seen_down(obs, now, settings), now)
    op = state.current_operation
    key = op.started_position if op is not None else None
    op_since = clocks.operation_since
    if key != clocks.operation_key:
        op_since = now if key is not None else None
    return ArbiterClocks(down_since, last_ok, key, op_since)


def due_switchover(op: OperationRecord | None, wall_now: datetime) -> OperationRecord | None:
    """The in-progress switchover once its ``scheduled_at`` (wall-clock, set by an operator) has
    come; None while it is scheduled later, for an unscheduled one and for anything else (the
    arbiter treats those from the committed state alone)."""
    if op is None or op.kind != "switchover" or op.scheduled_at is None or op.scheduled_at > wall_now:
        return None
    return op
