"""The leader's view of one follower: how far it matches, where to send next, and how hard to push.

Three modes (as in etcd's raft, re-derived here):

- PROBE: we do not know where the follower's log matches ours. Send one append at a time and wait
  for its answer (or a heartbeat response) before sending another, walking ``next`` back on each
  rejection using the follower's hint.
- REPLICATE: the follower is known to match; stream appends optimistically (``next`` jumps past
  what was sent) with at most ``max_inflight`` unacknowledged messages, so a slow follower cannot
  make the leader buffer an unbounded amount.
- SNAPSHOT: the entries the follower needs are compacted; a snapshot was sent and we wait for the
  follower to report an index at or past it (or give up after a while and probe again).
"""

from __future__ import annotations

from collections import deque

from ram.consensus.types import ProgressInfo, ProgressState


class Inflights:
    """Last indexes of unacknowledged appends, in send order, bounded by ``cap``."""

    __slots__ = ("_q", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Acknowledge every append whose last index is <= ``index``."""
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.cap

    def reset(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


class Progress:
    """Replication state of one member, as tracked by the leader."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
        "state_ticks",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.is_learner = is_learner
        self.state_ticks = 0
        self.inflights = Inflights(max_inflight)

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        """Fall back to one-at-a-time probing, resuming after a snapshot if one was in flight."""
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record an ack of index ``n``; returns True if it moved ``match`` forward."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """Handle a rejection of the append whose previous index was ``rejected``.

        Returns False when the rejection is stale (an answer to an older message), True if ``next``
        moved back. ``hint`` is the highest index at which the logs may still match.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def info(self) -> ProgressInfo:
        return ProgressInfo(self.match, self.next, self.state, self.is_learner, self.recent_active)
