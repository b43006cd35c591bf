"""The in-memory Raft log: a snapshot base plus a list of entries with an index offset.

Besides the entries it tracks the few indexes that the Ready protocol needs:

- ``committed``: highest index known committed.
- ``applying``: highest index handed to the runtime for applying (``applied`` once advanced).
- ``unstable_from``: first index not yet handed to the runtime for persisting.
- ``stable``: highest index such that the durable log equals this log up to it. The leader counts
  its own replica only up to ``stable``, so a crash that loses unflushed entries can never take away
  an entry that was counted toward a commit.

Entries live in one Python list; index ``i`` is at position ``i - snap_index - 1``. Appends and
suffix truncations are amortized O(new entries); only compaction shifts the list.
"""

from __future__ import annotations

from ram.consensus.types import Entry, Snapshot


class ConflictBelowCommit(Exception):
    """An append would rewrite a committed entry: the message is bogus and must be dropped."""


class RaftLog:
    __slots__ = (
        "applied",
        "applying",
        "committed",
        "entries",
        "pending_snapshot",
        "snap_index",
        "snap_term",
        "snapshot",
        "stable",
        "unstable_from",
    )

    def __init__(self, snapshot: Snapshot | None, entries: list[Entry], committed: int, applied: int) -> None:
        self.snapshot = snapshot
        self.snap_index = snapshot.index if snapshot else 0
        self.snap_term = snapshot.term if snapshot else 0
        self.entries: list[Entry] = entries
        last = self.last_index()
        self.committed = max(self.snap_index, min(committed, last))
        self.applied = max(self.snap_index, min(applied, self.committed))
        self.applying = self.applied
        self.unstable_from = last + 1
        self.stable = last
        self.pending_snapshot: Snapshot | None = None

    # -- queries -------------------------------------------------------------------------------

    def first_index(self) -> int:
        return self.snap_index + 1

    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """Term of ``index``, or None if it is compacted away or beyond the end of the log."""
        off = index - self.snap_index
        if off == 0:
            return self.snap_term
        if off < 0 or off > len(self.entries):
            return None
        return self.entries[off - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The election restriction: is a log ending at (last_index, last_term) at least as complete?"""
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index())

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (caller guarantees lo > snap_index)."""
        base = self.snap_index + 1
        return self.entries[lo - base : hi - base]

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= ``term`` (used for fast backtracking).

        Stops at the snapshot index: below it nothing is known.
        """
        i = min(index, self.last_index())
        if i < self.snap_index:
            return i
        while i > self.snap_index:
            t = self.entries[i - self.snap_index - 1].term
            if t <= term:
                return i
            i -= 1
        return i

    # -- mutation ------------------------------------------------------------------------------

    def append(self, entry: Entry) -> None:
        """Leader append of one new entry at the end."""
        self.entries.append(entry)

    def _truncate_append(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        after = ents[0].index
        del self.entries[after - self.snap_index - 1 :]
        self.entries.extend(ents)
        if after < self.unstable_from:
            self.unstable_from = after
        if self.stable >= after:
            self.stable = after - 1

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, ents: tuple[Entry, ...]
    ) -> tuple[int, int] | None:
        """Follower append. Returns (last new index, first index written or 0), or None on mismatch.

        Entries already present with the same term are skipped (duplicates are common); the first
        entry whose term differs, and everything after it, is replaced.
        """
        if self.term(prev_index) != prev_term:
            return None
        last_new = prev_index + len(ents)
        ci = 0
        for e in ents:
            if self.term(e.index) != e.term:
                ci = e.index
                break
        if ci:
            if ci <= self.committed:
                raise ConflictBelowCommit(ci)
            self._truncate_append(ents[ci - prev_index - 1 :])
        # Figure 2, AppendEntries rule 5: never past the last entry this message verified; what we
        # hold beyond it may be a stale suffix that this leader has not overwritten yet.
        self.commit_to(min(commit, last_new))
        return last_new, ci

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            self.committed = min(index, self.last_index())
            return True
        return False

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (follower catching up via snapshot)."""
        self.snapshot = snap
        self.snap_index = snap.index
        self.snap_term = snap.term
        self.entries = []
        self.committed = snap.index
        self.applying = snap.index
        self.unstable_from = snap.index + 1
        self.stable = 0  # nothing of the new log is durable until the Ready with the snapshot is
        self.pending_snapshot = snap

    def compact(self, snap: Snapshot) -> None:
        """Drop entries <= snap.index (already applied and captured by ``snap``)."""
        del self.entries[: snap.index - self.snap_index]
        self.snapshot = snap
        self.snap_index = snap.index
        self.snap_term = snap.term
        if self.unstable_from <= snap.index:
            self.unstable_from = snap.index + 1

    # -- Ready support -------------------------------------------------------------------------

    def has_unstable(self) -> bool:
        return self.unstable_from <= self.last_index()

    def take_unstable(self) -> list[Entry]:
        ents = self.entries[self.unstable_from - self.snap_index - 1 :]
        self.unstable_from = self.last_index() + 1
        return ents

    def has_next_committed(self) -> bool:
        return self.committed > max(self.applying, self.snap_index)

    def take_next_committed(self) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        hi = self.committed
        lo = max(self.applying, self.snap_index) + 1
        if hi < lo:
            return []
        self.applying = hi
        return self.slice(lo, hi + 1)
