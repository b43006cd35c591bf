"""Which messages of a Ready may leave before its write, and which must wait for it.

Shared by the runtime (``runtime/node.py``) and the simulator (``sim.py``), so that the simulator
checks the order that production really uses, not a stricter one of its own.

Why a leader may send before its own write (Raft thesis 10.2.1): its appends, heartbeats, snapshots
and TIMEOUT_NOW do not promise anything about its own disk. The leader counts its own log toward a
commit only up to what ``advance()`` reported durable, so sending its entries while it writes them
overlaps the leader's and the followers' fsyncs without weakening the commit rule.

What such a message still depends on is the leader's TERM (and the vote that won it): a leader that
sends as leader of term T and then crashes before T is on disk may come back in T-1, vote for
someone else in T, and let a second leader of T overwrite what the first one already sent. The
core reports this case in ``Ready.new_term_or_vote``; then every message waits for the write. In a
cluster of several voters the term is always durable before a leader's first Ready (its vote
requests waited for it), so this only holds back a leader that won alone (a single voter).

Everything else waits for the write: vote replies depend on the durable vote, append
acknowledgements on the durable entries, and a Ready that installs a snapshot replaces the log
that any message would describe.

Commit announcements (:class:`HeldAnnouncements`): when a leader learns a commit it tells the
followers with an empty append, which each follower answers. Under load the next entries follow
at once and their appends carry the same commit index, so the runtime holds an announcement for a
moment and drops it when an append to the same follower supersedes it: two frames per follower and
commit instead of four. Holding is a delay and dropping a loss, both of which Raft tolerates; what
is held leaves anyway when the moment is over.
"""

from __future__ import annotations

from ram.consensus.types import Message, MessageType, Ready, Role

__all__ = ["EARLY_TYPES", "HeldAnnouncements", "split_sends"]

EARLY_TYPES: frozenset[MessageType] = frozenset(
    {MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT, MessageType.TIMEOUT_NOW}
)
"""Leader-originated replication traffic: the only messages that may leave before the write."""


def split_sends(rd: Ready) -> tuple[list[Message], list[Message]]:
    """Split ``rd.messages`` into (send before persisting, send after persisting), order kept."""
    if rd.role is not Role.LEADER or rd.snapshot is not None or rd.new_term_or_vote:
        return [], list(rd.messages)
    early: list[Message] = []
    late: list[Message] = []
    for m in rd.messages:
        (early if m.type in EARLY_TYPES else late).append(m)
    return early, late


class HeldAnnouncements:
    """A leader's commit announcements (appends without entries) waiting for a moment, newest per
    follower, so that the next appends can carry them instead."""

    __slots__ = ("_held", "until")

    def __init__(self) -> None:
        self._held: dict[int, Message] = {}
        #: When what is held must leave: ``hold``'s deadline for the first of them.
        self.until = 0.0

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, messages: list[Message], until: float) -> list[Message]:
        """Keep the announcements among ``messages`` (a newer one replaces an older one to the same
        follower, whose commit index it includes) until ``until`` at the latest, unless something
        is held already (its deadline stands); return the rest, to send now."""
        if not self._held:
            self.until = until
        now: list[Message] = []
        for m in messages:
            if m.type is MessageType.APPEND and not m.entries:
                self._held[m.to] = m
            else:
                now.append(m)
        return now

    def supersede(self, messages: list[Message]) -> None:
        """``messages`` leave now: an append among them carries its follower's held announcement
        (an append always carries the leader's commit index), which is dropped."""
        if self._held:
            for m in messages:
                if m.type is MessageType.APPEND:
                    self._held.pop(m.to, None)

    def release(self) -> list[Message]:
        """Everything still held, to send now."""
        out = list(self._held.values())
        self._held.clear()
        return out
