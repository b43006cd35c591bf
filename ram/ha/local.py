"""What this node knows about its own PostgreSQL between ticks, shared by the HA controller's parts.

The observer writes most of it, the executor marks what its actions changed (a rewind that failed,
a demotion under way), the lease runner reads the status to fence; all of it is plain data here so
each part's job stays visible in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass

from ram.ha.streaming import LocalReplication
from ram.postgres.status import InstanceStatus

__all__ = ["LocalFacts", "StoppedHistory"]


@dataclass(frozen=True, slots=True)
class StoppedHistory:
    """A stopped data directory, from pg_controldata: what the keeper needs to tell whether it may
    simply start streaming or must be rewound first."""

    #: The latest checkpoint's timeline.
    timeline: int
    #: It was a standby when it stopped ("shut down in recovery", "in archive recovery").
    was_standby: bool
    #: After a clean stop, the shutdown checkpoint: its last WAL record (None otherwise).
    stopped_lsn: int | None


@dataclass
class LocalFacts:
    status: InstanceStatus | None = None
    #: This standby's own replication sample (None unless a running standby).
    replication: LocalReplication | None = None
    #: Since when PostgreSQL has not been running and accepting (this node's clock).
    pg_down_since: float | None = None
    #: Since when this standby runs, pointed at a healthy committed primary, without streaming.
    not_streaming_since: float | None = None
    #: The last rewind ran and failed (not: could not reach its source).
    rewind_failed: bool = False
    #: A rewind was already tried for a standby stuck without streaming (next time: re-clone).
    stuck_rewound: bool = False
    #: This node gave its lease up (switchover) and says so in its reports until granted again.
    lease_released: bool = False
    stopped_history: StoppedHistory | None = None
    #: What the primary enforces as synchronous_standby_names (None: not a running primary).
    sync_names: str | None = None
    #: This primary's timeline and where it forked from its parent (the timeline history file).
    timeline_start: int | None = None
    timeline_start_for: int | None = None
    #: initdb runs a private server that is not the instance: nothing observes or fences it.
    initializing: bool = False
    #: A switchover's clean stop is under way: the watchdog must not turn it into an immediate stop.
    demoting: bool = False
    #: Whom this replica last reported following (once per change).
    following: str | None = None
    following_reported_at: float = 0.0
    #: The operator's restart / reinit request this node carried out last (by its position).
    action_done_position: int | None = None
    #: PostgreSQL's own list of parameters waiting for a restart.
    pending_restart_names: tuple[str, ...] = ()
