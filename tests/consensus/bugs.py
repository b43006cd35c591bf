"""Deliberate bugs, one rule broken per class, to prove that the checks see them.

They live here, not in the shipped core: each is a ``RaftCore`` subclass that overrides the one
rule method it breaks (or swaps the log for a ``RaftLog`` subclass that breaks one log rule). The
simulator runs any of them (``python -m ram.consensus.sim --core tests.consensus.bugs:DoubleVote``)
and the scenario tests take a ``core=`` class, so a test can show that it fails on the bug.

Each class names the rule it breaks and the bug class of issue #12 it stands for.
"""

from __future__ import annotations

import dataclasses
import random

from ram.consensus import quorum
from ram.consensus.core import RaftCore
from ram.consensus.raftlog import ConflictBelowCommit, RaftLog
from ram.consensus.readyplan import split_sends
from ram.consensus.types import (
    NONE,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistedState,
    RaftConfig,
    ReadState,
    Ready,
)

MT = MessageType


class _LogBugCore(RaftCore):
    """A core whose log is an instance of ``log_class`` (same slots, one rule changed)."""

    log_class: type[RaftLog] = RaftLog

    def __init__(
        self, config: RaftConfig, rng: random.Random, persisted: PersistedState, conf: ConfState | None = None
    ) -> None:
        super().__init__(config, rng, persisted, conf)
        self._log.__class__ = self.log_class


# -- the original five ------------------------------------------------------------------------


class CommitOldTermByCounting(RaftCore):
    """Leaders rule 4 (Figure 8): commits an entry of an older term by counting its replicas."""

    def _maybe_commit(self) -> bool:
        log = self._log
        mci = quorum.committed_index(self._conf.voters, self._match_of())
        if mci <= log.committed:
            return False
        log.commit_to(mci)
        self._after_leader_commit()
        return True


class DoubleVote(RaftCore):
    """RequestVote rule 2: grants a vote whatever it voted for already in this term."""

    def _handle_vote(self, msg: Message) -> None:
        if msg.type is MT.VOTE and self._log.is_up_to_date(msg.index, msg.log_term):
            self._election_elapsed = 0
            self._vote = msg.frm
            self._msgs.append(Message(MT.VOTE_RESP, self._id, msg.frm, self._term))
            return
        super()._handle_vote(msg)


class VoteBeforeDurable(RaftCore):
    """Persistence: a granted vote's reply leaves in a batch whose hard state lacks the vote."""

    same_term_only = False
    _hide = False

    def _handle_vote(self, msg: Message) -> None:
        super()._handle_vote(msg)
        if msg.type is MT.VOTE and self._vote == msg.frm:
            self._hide = True

    def ready(self) -> Ready:
        prev = self._prev_hs
        rd = super().ready()
        hs = rd.hard_state
        if self._hide and hs is not None and (not self.same_term_only or prev.term == hs.term):
            hidden = HardState(hs.term, prev.vote if prev.term == hs.term else NONE, hs.commit)
            rd.hard_state = hidden if hidden != prev else None
            rd.new_term_or_vote = hidden.term != prev.term or hidden.vote != prev.vote
            self._prev_hs = hidden  # the vote itself goes into the next batch
        self._hide = False
        return rd


class _ApplyUncommittedLog(RaftLog):
    __slots__ = ()

    def has_next_committed(self) -> bool:
        return self.last_index() > max(self.applying, self.snap_index)

    def take_next_committed(self) -> list[Entry]:
        hi, lo = self.last_index(), max(self.applying, self.snap_index) + 1
        if hi < lo:
            return []
        self.applying = hi
        return self.slice(lo, hi + 1)


class ApplyUncommitted(_LogBugCore):
    """All servers rule 1: applies entries that are not committed."""

    log_class = _ApplyUncommittedLog


class _NoTruncateLog(RaftLog):
    __slots__ = ()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, ents: tuple[Entry, ...]
    ) -> tuple[int, int] | None:
        if self.term(prev_index) != prev_term:
            return None
        last_new = prev_index + len(ents)
        last = self.last_index()
        ci = next((e.index for e in ents if e.index > last), 0)  # trusts what it holds already
        if ci:
            if ci <= self.committed:
                raise ConflictBelowCommit(ci)
            self._truncate_append(ents[ci - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new, ci


class NoTruncateConflict(_LogBugCore):
    """AppendEntries rule 3: keeps a conflicting entry instead of deleting it and what follows."""

    log_class = _NoTruncateLog


# -- one per bug class of issue #12 -----------------------------------------------------------


class VoteBeforeDurableSameTerm(VoteBeforeDurable):
    """Persistence: a vote granted in a term already on disk is replied to before it is durable."""

    same_term_only = True


class LeaderCountsUndurable(RaftCore):
    """Persistence: the leader counts its own entries toward a commit before they are durable."""

    def _match_of(self):  # type: ignore[no-untyped-def]
        prs, me, last = self._prs, self._id, self._log.last_index()

        def match(nid: int) -> int:
            if nid == me:
                return last
            pr = prs.get(nid)
            return pr.match if pr is not None else 0

        return match


def vote_reply_early(rd: Ready) -> tuple[list[Message], list[Message]]:
    """Persistence, in the runtime's order: vote replies leave before the write (a send-plan bug)."""
    early, late = split_sends(rd)
    votes = [m for m in late if m.type is MT.VOTE_RESP]
    return early + votes, [m for m in late if m.type is not MT.VOTE_RESP]


class _CommitPastVerifiedLog(RaftLog):
    __slots__ = ()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, ents: tuple[Entry, ...]
    ) -> tuple[int, int] | None:
        res = super().maybe_append(prev_index, prev_term, commit, ents)
        if res is not None:
            self.commit_to(commit)  # up to leaderCommit, not min(leaderCommit, last new entry)
        return res


class FollowerCommitPastVerified(_LogBugCore):
    """AppendEntries rule 5: the follower's commit goes past the last entry verified against the leader."""

    log_class = _CommitPastVerifiedLog


class ReadIndexStaleConfirmation(RaftCore):
    """ReadIndex: a read is confirmed by the answers of a round that started before it was asked.

    It takes the members heard from in the current check-quorum window (answers to heartbeats
    sent before the read) as the read's quorum, instead of a fresh heartbeat round.
    """

    def _start_read(self, context: bytes) -> None:
        acks = {self._id} | {nid for nid, pr in self._prs.items() if pr.recent_active}
        if quorum.has_quorum(self._conf.voters, acks):
            self._read_states.append(ReadState(self._log.committed, context))
            return
        super()._start_read(context)


class ReadIndexAnyRound(RaftCore):
    """ReadIndex: an answer to any heartbeat round confirms every queued read, older rounds too."""

    def _ack_read(self, frm: int, context: bytes) -> None:
        q = self._read_queue
        for req in q:
            req.acks.add(frm)
        while q and quorum.has_quorum(self._conf.voters, q[0].acks):
            done = q.pop(0)
            self._read_states.append(ReadState(done.index, done.context))


class StaleAck(RaftCore):
    """Stale acknowledgements: an ack for entries overwritten before it left is still sent."""

    def _drop_unsent_acks(self, from_index: int) -> None:
        pass


class ConfNoRollback(RaftCore):
    """Membership: truncating the entry of the current configuration keeps that configuration."""

    def _truncate_conf(self, from_index: int) -> None:
        hist = self._conf_hist
        while hist and hist[-1][0] >= from_index:
            hist.pop()  # forgets the entry but keeps using the configuration it introduced


class CheckQuorumNeverStepsDown(RaftCore):
    """Leaders (check-quorum): a leader cut off from its quorum keeps leading."""

    def _tick_leader(self) -> None:
        saved = self._cfg
        self._cfg = dataclasses.replace(saved, check_quorum=False)
        try:
            super()._tick_leader()
        finally:
            self._cfg = saved


ORIGINAL = (CommitOldTermByCounting, DoubleVote, VoteBeforeDurable, ApplyUncommitted, NoTruncateConflict)
ISSUE_12 = (
    VoteBeforeDurableSameTerm,
    LeaderCountsUndurable,
    FollowerCommitPastVerified,
    ReadIndexStaleConfirmation,
    ReadIndexAnyRound,
    StaleAck,
    ConfNoRollback,
    CheckQuorumNeverStepsDown,
)
ALL_CORE_BUGS: tuple[type[RaftCore], ...] = ORIGINAL + ISSUE_12
