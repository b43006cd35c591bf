"""The pure Raft state machine of RAM.

Inputs: ``tick()``, ``step(message)``, ``propose()``, ``propose_conf_change()``,
``transfer_leadership()``, ``read_index()``, ``compact()``. Output: one ``Ready`` batch at a time
(see ``ram.consensus.types`` for the contract the runtime must follow), acknowledged by
``advance()``. No I/O, no clock, no randomness other than the ``random.Random`` handed in, so a run
is a pure function of its inputs and the simulator can replay any failure from its seed.

Bootstrap: a brand-new member of the initial cluster gets ``conf`` (the initial voters/learners).
The core turns it into committed CONF_CHANGE entries at term 1 (index 1..n, one per member, in
sorted order) so that the initial membership lives in the log like every later change; every
bootstrap member produces the very same entries, and a node added later learns the full
membership by replicating them (or from a snapshot). A node started with neither persisted state
nor ``conf`` has an empty configuration and simply waits to be added.

Membership changes are single-server (one voter or learner added or removed per change), and a
configuration takes effect as soon as its entry is appended to a node's log, committed or not (the
Raft thesis, section 4.1). Why single-server and effect-on-append:

- Any majority of the old configuration overlaps any majority of the new one, so it does not matter
  which of the two a node uses while the change is in flight: no joint consensus needed.
- Using the latest configuration in the log (and reverting when that entry is truncated) means
  every node counts with the configuration its log justifies; there is no window between commit and
  apply in which nodes disagree about when a change happened.
- A leader accepts a new change only when the previous one is committed AND it has committed an
  entry of its own term (the fix for the known single-server-change bug), so at most two adjacent
  configurations are ever in use.
- A leader that removes itself keeps leading (without counting itself) until the change commits,
  then steps down.

Learners receive the log but never campaign and their acks never count. A node that is removed
stops campaigning once it has the entry removing it; one that never gets that entry is kept from
disrupting the cluster by pre-vote and the leader lease (check-quorum).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ram.consensus import quorum
from ram.consensus.progress import Progress
from ram.consensus.quorum import VoteResult
from ram.consensus.raftlog import ConflictBelowCommit, RaftLog
from ram.consensus.types import (
    EMPTY_CONF,
    NONE,
    TRANSFER_CONTEXT,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    ProgressInfo,
    ProgressState,
    RaftConfig,
    ReadState,
    Ready,
    Role,
    Snapshot,
)

__all__ = ["ConfChangeInProgress", "NotLeader", "ProposalDropped", "RaftCore"]

_MT = MessageType
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT


class NotLeader(Exception):
    """This node is not the leader; ``leader_id`` is the leader it knows of (NONE if unknown)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader (known leader: {leader_id or 'none'})")
        self.leader_id = leader_id


class ProposalDropped(Exception):
    """The leader refuses proposals right now (a leadership transfer is in progress)."""


class ConfChangeInProgress(Exception):
    """A membership change is still uncommitted, or the leader has not committed in its term yet."""


def _next_conf(conf: ConfState, cc: ConfChange, strict: bool) -> ConfState | None:
    """The configuration after ``cc``; None if ``cc`` is a no-op/invalid (ValueError if strict)."""

    def bad(why: str) -> None:
        if strict:
            raise ValueError(why)

    node = cc.node_id
    if node <= 0:
        bad("node id must be positive")
        return None
    voters, learners = conf.voters, conf.learners
    if cc.type == ConfChangeType.ADD_VOTER:
        if node in voters:
            bad(f"node {node} is already a voter")
            return None
        return ConfState(voters | {node}, learners - {node})
    if cc.type == ConfChangeType.ADD_LEARNER:
        if node in voters:
            bad(f"node {node} is a voter; remove it first to demote it")
            return None
        if node in learners:
            bad(f"node {node} is already a learner")
            return None
        return ConfState(voters, learners | {node})
    if cc.type == ConfChangeType.REMOVE_NODE:
        if node not in voters and node not in learners:
            bad(f"node {node} is not a member")
            return None
        if voters == {node}:
            bad("cannot remove the last voter")
            return None
        return ConfState(voters - {node}, learners - {node})
    bad(f"unknown conf change type {cc.type!r}")
    return None


def _bootstrap_entries(conf: ConfState) -> list[Entry]:
    ents: list[Entry] = []
    for node in sorted(conf.voters):
        cc = ConfChange(ConfChangeType.ADD_VOTER, node)
        ents.append(Entry(len(ents) + 1, 1, EntryType.CONF_CHANGE, cc.encode()))
    for node in sorted(conf.learners - conf.voters):
        cc = ConfChange(ConfChangeType.ADD_LEARNER, node)
        ents.append(Entry(len(ents) + 1, 1, EntryType.CONF_CHANGE, cc.encode()))
    return ents


class _ReadRequest:
    __slots__ = ("acks", "context", "index")

    def __init__(self, index: int, context: bytes, acks: set[int]) -> None:
        self.index = index
        self.context = context
        self.acks = acks


class RaftCore:
    """One Raft node as a deterministic state machine. See the module docstring."""

    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        persisted: PersistedState,
        conf: ConfState | None = None,
    ) -> None:
        config.validate()
        self._cfg = config
        self._id = config.id
        self._rng = rng

        hs = persisted.hard_state
        snap = persisted.snapshot
        snap_index = snap.index if snap else 0
        ents = [e for e in persisted.entries if e.index > snap_index]
        for k, e in enumerate(ents):
            if e.index != snap_index + 1 + k:
                raise ValueError(f"persisted entries are not contiguous after index {snap_index}")
        fresh = hs.term == 0 and snap is None and not ents
        bootstrap: list[Entry] = []
        if fresh and conf is not None and conf.voters:
            bootstrap = _bootstrap_entries(conf)
            hs = HardState(1, NONE, len(bootstrap))

        self._log = RaftLog(snap, ents, hs.commit, persisted.applied)
        self._term = hs.term
        self._vote = hs.vote
        self._conf_base: tuple[int, ConfState] = (snap_index, snap.conf if snap else EMPTY_CONF)
        self._conf_hist: list[tuple[int, ConfState]] = []
        self._conf = self._conf_base[1]
        self._role = Role.FOLLOWER
        if bootstrap:
            for e in bootstrap:
                self._log.append(e)
            self._log.unstable_from = 1
            self._log.stable = 0
            self._log.committed = len(bootstrap)
        self._track_conf_entries(self._log.entries)

        self._leader_id = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self._prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._lead_transferee = NONE
        self._pending_conf_index = 0
        self._read_queue: list[_ReadRequest] = []
        self._reads_waiting_commit: list[bytes] = []
        self._bcast_pending = False
        self._hb_pending = False

        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._prev_hs = persisted.hard_state
        self._prev_soft: tuple[int, Role, int] = (NONE, Role.FOLLOWER, hs.term)
        self._outstanding: Ready | None = None

    # ------------------------------------------------------------------------------------------
    # read-only properties

    @property
    def id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> int:
        return self._leader_id

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def first_index(self) -> int:
        return self._log.first_index()

    @property
    def stable_index(self) -> int:
        """Highest index known durable (what the leader counts for itself)."""
        return self._log.stable

    @property
    def conf(self) -> ConfState:
        return self._conf

    @property
    def is_learner(self) -> bool:
        return self._id in self._conf.learners

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot (from ``compact`` or an install); None if the log was never compacted."""
        return self._log.snapshot

    @property
    def lead_transferee(self) -> int:
        return self._lead_transferee

    @property
    def progress(self) -> dict[int, ProgressInfo]:
        """Leader only (empty otherwise): replication state per member, including this node."""
        if self._role is not Role.LEADER:
            return {}
        out = {nid: pr.info() for nid, pr in self._prs.items()}
        if self._id in self._conf.voters or self._id in self._conf.learners:
            out[self._id] = ProgressInfo(
                self._log.stable, self._log.last_index() + 1, _REPLICATE, self.is_learner, True
            )
        return out

    def log_term(self, index: int) -> int | None:
        """Term of the entry at ``index`` (None if compacted or absent). For tests and tools."""
        return self._log.term(index)

    def log_entries(self, lo: int, hi: int) -> list[Entry]:
        """In-memory entries lo <= index < hi, clipped to what is held. For tests and tools."""
        lo = max(lo, self._log.first_index())
        hi = min(hi, self._log.last_index() + 1)
        return self._log.slice(lo, hi) if lo < hi else []

    # ------------------------------------------------------------------------------------------
    # configuration tracking

    def _track_conf_entries(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        """Record configuration entries just appended; the newest one is in effect at once."""
        changed = False
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                cur = self._conf_hist[-1][1] if self._conf_hist else self._conf_base[1]
                try:
                    cc = ConfChange.decode(e.data)
                except ValueError:
                    continue
                nxt = _next_conf(cur, cc, strict=False)
                if nxt is not None:
                    self._conf_hist.append((e.index, nxt))
                    changed = True
        if changed:
            self._set_conf(self._conf_hist[-1][1])

    def _truncate_conf(self, from_index: int) -> None:
        """Forget configuration entries at or after ``from_index`` (their entries were replaced)."""
        hist = self._conf_hist
        if hist and hist[-1][0] >= from_index:
            while hist and hist[-1][0] >= from_index:
                hist.pop()
            self._set_conf(hist[-1][1] if hist else self._conf_base[1])

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_base[1]
        for idx, c in self._conf_hist:
            if idx > index:
                break
            conf = c
        return conf

    def _set_conf(self, conf: ConfState) -> None:
        if conf == self._conf:
            return
        self._conf = conf
        if self._role is Role.LEADER:
            members = conf.voters | conf.learners
            # A removed node keeps its progress (and keeps receiving the log) until the change
            # commits, so that it learns of its own removal and stops campaigning.
            nxt = self._log.last_index() + 1
            for nid in members:
                if nid == self._id:
                    continue
                pr = self._prs.get(nid)
                if pr is None:
                    pr = Progress(nxt, self._cfg.max_inflight, nid in conf.learners)
                    pr.recent_active = True
                    self._prs[nid] = pr
                else:
                    pr.is_learner = nid in conf.learners
            if self._lead_transferee != NONE and self._lead_transferee not in conf.voters:
                self._lead_transferee = NONE

    def _promotable(self) -> bool:
        return self._id in self._conf.voters

    # ------------------------------------------------------------------------------------------
    # role transitions

    def _reset_randomized_timeout(self) -> None:
        et = self._cfg.election_ticks
        self._randomized_timeout = et + self._rng.randrange(et)

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = NONE
        self._leader_id = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._prs = {}
        self._lead_transferee = NONE
        self._read_queue = []
        self._reads_waiting_commit = []
        self._bcast_pending = False
        self._hb_pending = False

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader_id = leader

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader_id = self._id
        log = self._log
        nxt = log.last_index() + 1
        for nid in self._conf.voters | self._conf.learners:
            if nid != self._id:
                pr = Progress(nxt, self._cfg.max_inflight, nid in self._conf.learners)
                pr.recent_active = True  # grace period: do not step down before anyone could answer
                self._prs[nid] = pr
        self._pending_conf_index = self._conf_hist[-1][0] if self._conf_hist else 0
        log.append(Entry(nxt, self._term, EntryType.NORMAL, b""))
        self._bcast_pending = True

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if not self._promotable():
            return
        if pre:
            self._reset(self._term)
            self._role = Role.PRE_CANDIDATE
            vote_term = self._term + 1
            mtype = _MT.PRE_VOTE
        else:
            self._reset(self._term + 1)
            self._role = Role.CANDIDATE
            self._vote = self._id
            vote_term = self._term
            mtype = _MT.VOTE
        self._votes[self._id] = True
        res = quorum.vote_result(self._conf.voters, self._votes)
        if res is VoteResult.WON:
            if pre:
                self._campaign(False, transfer)
            else:
                self._become_leader()
            return
        ctx = TRANSFER_CONTEXT if transfer else b""
        li, lt = self._log.last_index(), self._log.last_term()
        for v in sorted(self._conf.voters):
            if v != self._id:
                self._msgs.append(Message(mtype, self._id, v, vote_term, log_term=lt, index=li, context=ctx))

    # ------------------------------------------------------------------------------------------
    # inputs

    def tick(self) -> None:
        """Advance logical time by one tick (the runtime calls this on a fixed interval)."""
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._election_elapsed = 0
            self._campaign(self._cfg.pre_vote, False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        cfg = self._cfg
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum:
                active = {self._id}
                for nid, pr in self._prs.items():
                    if pr.recent_active:
                        active.add(nid)
                    pr.recent_active = False
                if not quorum.has_quorum(self._conf.voters, active):
                    self._become_follower(self._term, NONE)
                    return
            self._lead_transferee = NONE  # a transfer that took a whole election timeout is aborted
        for pr in self._prs.values():
            if pr.state is _SNAPSHOT:
                pr.state_ticks += 1
                if pr.state_ticks >= 2 * cfg.election_ticks:
                    pr.become_probe()  # the snapshot or its answer was lost: try again
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._hb_pending = True

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append ``data`` as a NORMAL entry; returns (index, term). It is committed once applied."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if self._lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        e = Entry(self._log.last_index() + 1, self._term, EntryType.NORMAL, bytes(data))
        self._log.append(e)
        self._bcast_pending = True
        return e.index, e.term

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        """Append a single-server membership change; it takes effect on append (see module doc)."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if self._lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        log = self._log
        if self._pending_conf_index > log.committed:
            raise ConfChangeInProgress(f"conf change at index {self._pending_conf_index} not committed yet")
        if log.term(log.committed) != self._term:
            raise ConfChangeInProgress("leader has not committed an entry of its term yet")
        _next_conf(self._conf, cc, strict=True)
        e = Entry(log.last_index() + 1, self._term, EntryType.CONF_CHANGE, cc.encode())
        log.append(e)
        self._pending_conf_index = e.index
        self._track_conf_entries((e,))
        self._bcast_pending = True
        return e.index, e.term

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to ``target``: catch it up, then tell it to campaign at once.

        Proposals are refused until the transfer ends; it is aborted after an election timeout.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if target == self._id:
            return
        if target not in self._conf.voters:
            raise ValueError(f"node {target} is not a voter")
        if self._lead_transferee == target:
            return
        self._lead_transferee = target
        self._election_elapsed = 0
        pr = self._prs[target]
        if pr.match == self._log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target, True)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; the answer comes as a ReadState with this context.

        ``context`` should be unique among outstanding requests. Pending requests are dropped if
        leadership is lost: the runtime must time them out.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        log = self._log
        if log.term(log.committed) != self._term:
            self._reads_waiting_commit.append(bytes(context))
            return
        self._start_read(bytes(context))

    def _start_read(self, context: bytes) -> None:
        req = _ReadRequest(self._log.committed, context, {self._id})
        if quorum.has_quorum(self._conf.voters, req.acks):
            self._read_states.append(ReadState(req.index, context))
            return
        self._read_queue.append(req)
        self._hb_pending = True

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Record an application snapshot taken at applied ``index``; drop log entries <= index.

        Returns the Snapshot (also in ``self.snapshot``): the runtime persists it and may then
        delete persisted entries <= index. No-op (returns the current snapshot) if not newer.
        """
        log = self._log
        if index <= log.snap_index:
            if log.snapshot is None:
                raise ValueError("nothing to compact")
            return log.snapshot
        if index > log.applied:
            raise ValueError(f"cannot compact past the applied index {log.applied}")
        term = log.term(index)
        assert term is not None
        snap = Snapshot(index, term, self._conf_at(index), bytes(data))
        log.compact(snap)
        self._conf_base = (index, snap.conf)
        self._conf_hist = [h for h in self._conf_hist if h[0] > index]
        return snap

    # ------------------------------------------------------------------------------------------
    # messages

    def step(self, msg: Message) -> None:
        """Process one message from a peer. Malformed, misaddressed and stale input is dropped."""
        if msg.to != self._id or msg.frm <= 0 or msg.frm == self._id or msg.term < 0:
            return
        t = msg.type
        term = self._term
        if msg.term > term:
            if t is _MT.PRE_VOTE or t is _MT.VOTE:
                in_lease = (
                    self._cfg.check_quorum
                    and self._leader_id != NONE
                    and self._election_elapsed < self._cfg.election_ticks
                )
                if in_lease and msg.context != TRANSFER_CONTEXT:
                    return  # we heard from a live leader recently: refuse to be disrupted
            if t is _MT.PRE_VOTE or (t is _MT.PRE_VOTE_RESP and not msg.reject):
                pass  # pre-votes never change terms
            elif t is _MT.APPEND or t is _MT.HEARTBEAT or t is _MT.SNAPSHOT:
                self._become_follower(msg.term, msg.frm)
            else:
                self._become_follower(msg.term, NONE)
        elif msg.term < term:
            if t is _MT.APPEND or t is _MT.HEARTBEAT:
                if self._cfg.check_quorum or self._cfg.pre_vote:
                    # Tell a stale leader about the newer term so it steps down.
                    self._msgs.append(Message(_MT.APPEND_RESP, self._id, msg.frm, term))
            elif t is _MT.PRE_VOTE:
                self._msgs.append(Message(_MT.PRE_VOTE_RESP, self._id, msg.frm, term, reject=True))
            return

        if t is _MT.PRE_VOTE or t is _MT.VOTE:
            self._handle_vote(msg)
            return
        role = self._role
        if role is Role.LEADER:
            if t is _MT.APPEND_RESP:
                self._handle_append_resp(msg)
            elif t is _MT.HEARTBEAT_RESP:
                self._handle_heartbeat_resp(msg)
            return
        if t is _MT.APPEND or t is _MT.HEARTBEAT or t is _MT.SNAPSHOT:
            if role is not Role.FOLLOWER:
                self._become_follower(self._term, msg.frm)
            self._election_elapsed = 0
            self._leader_id = msg.frm
            if t is _MT.APPEND:
                self._handle_append(msg)
            elif t is _MT.HEARTBEAT:
                self._handle_heartbeat(msg)
            else:
                self._handle_snapshot(msg)
        elif t is _MT.PRE_VOTE_RESP or t is _MT.VOTE_RESP:
            self._handle_vote_resp(msg)
        elif t is _MT.TIMEOUT_NOW and role is Role.FOLLOWER and self._promotable():
            self._campaign(False, True)

    def _handle_vote(self, msg: Message) -> None:
        pre = msg.type is _MT.PRE_VOTE
        can_vote = (
            self._vote == msg.frm or (self._vote == NONE and self._leader_id == NONE) or (pre and msg.term > self._term)
        )
        resp = _MT.PRE_VOTE_RESP if pre else _MT.VOTE_RESP
        if can_vote and self._log.is_up_to_date(msg.index, msg.log_term):
            if pre:
                self._msgs.append(Message(resp, self._id, msg.frm, msg.term))
            else:
                self._election_elapsed = 0
                self._vote = msg.frm
                self._msgs.append(Message(resp, self._id, msg.frm, self._term))
        else:
            self._msgs.append(Message(resp, self._id, msg.frm, self._term, reject=True))

    def _handle_vote_resp(self, msg: Message) -> None:
        # Only a (pre-)candidate tallies: a late answer reaching a follower must neither make it
        # leader nor, by a late rejection, make it forget the leader it follows.
        if self._role is not Role.PRE_CANDIDATE and self._role is not Role.CANDIDATE:
            return
        pre = self._role is Role.PRE_CANDIDATE
        if pre != (msg.type is _MT.PRE_VOTE_RESP):
            return
        if pre and not msg.reject and msg.term != self._term + 1:
            return  # an answer to an older pre-campaign
        if msg.frm not in self._votes:
            self._votes[msg.frm] = not msg.reject
        res = quorum.vote_result(self._conf.voters, self._votes)
        if res is VoteResult.WON:
            if pre:
                self._campaign(False, False)
            else:
                self._become_leader()
        elif res is VoteResult.LOST:
            self._become_follower(self._term, NONE)

    def _handle_append(self, msg: Message) -> None:
        log = self._log
        if msg.index < log.committed:
            self._msgs.append(Message(_MT.APPEND_RESP, self._id, msg.frm, self._term, index=log.committed))
            return
        nxt = msg.index + 1
        for e in msg.entries:
            if e.index != nxt or e.term > msg.term or e.term <= 0:
                return  # malformed
            nxt += 1
        old_last = log.last_index()
        try:
            res = log.maybe_append(msg.index, msg.log_term, msg.commit, msg.entries)
        except ConflictBelowCommit:
            return
        if res is None:
            hint = log.find_conflict_by_term(min(msg.index, log.last_index()), msg.log_term)
            self._msgs.append(
                Message(
                    _MT.APPEND_RESP,
                    self._id,
                    msg.frm,
                    self._term,
                    index=msg.index,
                    reject=True,
                    reject_hint=hint,
                    log_term=log.term(hint) or 0,
                )
            )
            return
        last_new, ci = res
        if ci:
            if ci <= old_last:
                self._drop_unsent_acks(ci)
            self._truncate_conf(ci)
            self._track_conf_entries(msg.entries[ci - msg.index - 1 :])
        self._msgs.append(Message(_MT.APPEND_RESP, self._id, msg.frm, self._term, index=last_new))

    def _drop_unsent_acks(self, from_index: int) -> None:
        """Withdraw not-yet-handed-out acks for entries at or after ``from_index``.

        Those entries were just replaced before they ever reached a Ready, so they will never be
        durable: sending the ack would let a (stale) leader count entries we do not hold.
        """
        self._msgs = [
            m for m in self._msgs if not (m.type is _MT.APPEND_RESP and not m.reject and m.index >= from_index)
        ]

    def _handle_heartbeat(self, msg: Message) -> None:
        # The leader never sends a commit beyond our match, so our log holds it.
        self._log.commit_to(msg.commit)
        self._msgs.append(Message(_MT.HEARTBEAT_RESP, self._id, msg.frm, self._term, context=msg.context))

    def _handle_snapshot(self, msg: Message) -> None:
        s = msg.snapshot
        log = self._log
        if s is None or s.index <= 0 or s.term <= 0 or s.term > msg.term:
            return
        if s.index <= log.committed:
            idx = log.committed
        elif log.match_term(s.index, s.term):
            log.commit_to(s.index)  # we already hold it: just fast-forward
            idx = s.index
        else:
            self._drop_unsent_acks(s.index + 1)
            log.restore(s)
            self._conf_base = (s.index, s.conf)
            self._conf_hist = []
            self._set_conf(s.conf)
            idx = s.index
        self._msgs.append(Message(_MT.APPEND_RESP, self._id, msg.frm, self._term, index=idx))

    # -- leader side ----------------------------------------------------------------------------

    def _match_of(self) -> Callable[[int], int]:
        prs, me, stable = self._prs, self._id, self._log.stable

        def match(nid: int) -> int:
            if nid == me:
                return stable
            pr = prs.get(nid)
            return pr.match if pr is not None else 0

        return match

    def _maybe_commit(self) -> bool:
        log = self._log
        mci = quorum.committed_index(self._conf.voters, self._match_of())
        if mci <= log.committed:
            return False
        # The commit rule: only entries of the current term are committed by counting replicas.
        if log.term(mci) != self._term:
            return False
        log.commit_to(mci)
        self._after_leader_commit()
        return True

    def _after_leader_commit(self) -> None:
        log = self._log
        if self._reads_waiting_commit and log.term(log.committed) == self._term:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for ctx in waiting:
                self._start_read(ctx)
        if self._pending_conf_index <= log.committed:
            conf = self._conf
            for nid in [n for n in self._prs if n not in conf.voters and n not in conf.learners]:
                del self._prs[nid]
        if self._id not in self._conf.voters and self._pending_conf_index <= log.committed:
            # Our own removal is committed: hand over by stepping down (someone else will win).
            self._become_follower(self._term, NONE)
            return
        self._bcast_pending = True

    def _handle_append_resp(self, msg: Message) -> None:
        pr = self._prs.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        log = self._log
        if msg.reject:
            hint = msg.reject_hint
            if msg.log_term > 0:
                hint = log.find_conflict_by_term(hint, msg.log_term)
            if pr.maybe_decr_to(msg.index, hint):
                if pr.state is _REPLICATE:
                    pr.become_probe()
                self._send_append(msg.frm, True)
            return
        if msg.index > log.last_index():
            return  # bogus ack
        old_paused = pr.is_paused()
        if pr.maybe_update(msg.index):
            if pr.state is _PROBE:
                pr.become_replicate()
            elif pr.state is _SNAPSHOT:
                if pr.match >= pr.pending_snapshot:
                    pr.become_replicate()
            else:
                pr.inflights.free_le(msg.index)
            if self._maybe_commit():
                if self._role is not Role.LEADER:
                    return
            elif old_paused:
                self._send_append(msg.frm, True)
            while self._send_append(msg.frm, False):
                pass
            if msg.frm == self._lead_transferee and pr.match == log.last_index():
                self._send_timeout_now(msg.frm)
        elif pr.state is _REPLICATE:
            pr.inflights.free_le(msg.index)

    def _handle_heartbeat_resp(self, msg: Message) -> None:
        pr = self._prs.get(msg.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is _REPLICATE and pr.inflights.full():
            pr.inflights.free_first()
        if pr.match < self._log.last_index():
            self._send_append(msg.frm, True)
        if msg.context and self._read_queue:
            self._ack_read(msg.frm, msg.context)

    def _ack_read(self, frm: int, context: bytes) -> None:
        q = self._read_queue
        for i, req in enumerate(q):
            if req.context == context:
                req.acks.add(frm)
                if quorum.has_quorum(self._conf.voters, req.acks):
                    # Confirming a later request confirms every earlier one too.
                    for done in q[: i + 1]:
                        self._read_states.append(ReadState(done.index, done.context))
                    del q[: i + 1]
                return

    def _send_timeout_now(self, to: int) -> None:
        self._msgs.append(Message(_MT.TIMEOUT_NOW, self._id, to, self._term))

    def _send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self._prs[to]
        if pr.is_paused():
            return False
        log = self._log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            snap = log.snapshot
            if snap is None or prev > log.last_index():
                pr.become_probe()
                return False
            self._msgs.append(Message(_MT.SNAPSHOT, self._id, to, self._term, snapshot=snap))
            pr.become_snapshot(snap.index)
            return True
        last = log.last_index()
        hi = min(last + 1, pr.next + self._cfg.max_entries_per_msg)
        ents = log.slice(pr.next, hi) if pr.next <= last else []
        if not ents and not send_if_empty:
            return False
        self._msgs.append(
            Message(
                _MT.APPEND,
                self._id,
                to,
                self._term,
                log_term=prev_term,
                index=prev,
                entries=tuple(ents),
                commit=log.committed,
            )
        )
        if pr.state is _REPLICATE:
            if ents:
                sent = ents[-1].index
                pr.next = sent + 1
                pr.inflights.add(sent)
        else:
            pr.probe_sent = True
        return True

    def _flush(self) -> None:
        """Turn pending broadcasts into messages (batching everything proposed since the last one)."""
        if self._role is not Role.LEADER:
            self._bcast_pending = self._hb_pending = False
            return
        if self._bcast_pending:
            self._bcast_pending = False
            for nid in self._prs:
                self._send_append(nid, True)
        if self._hb_pending:
            self._hb_pending = False
            ctx = self._read_queue[-1].context if self._read_queue else b""
            committed, term, me = self._log.committed, self._term, self._id
            for nid, pr in self._prs.items():
                self._msgs.append(Message(_MT.HEARTBEAT, me, nid, term, commit=min(pr.match, committed), context=ctx))

    # ------------------------------------------------------------------------------------------
    # Ready protocol

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.committed)

    def has_ready(self) -> bool:
        """True if ``ready()`` would return a non-empty batch (False while one is outstanding)."""
        if self._outstanding is not None:
            return False
        self._flush()
        log = self._log
        return bool(
            self._msgs
            or self._read_states
            or log.has_unstable()
            or log.pending_snapshot is not None
            or log.has_next_committed()
            or self._hard_state() != self._prev_hs
            or (self._leader_id, self._role, self._term) != self._prev_soft
        )

    def ready(self) -> Ready:
        """Hand out everything pending as one batch; see ``ram.consensus.types`` for the contract."""
        if self._outstanding is not None:
            raise RuntimeError("previous Ready not advanced yet")
        self._flush()
        log = self._log
        hs = self._hard_state()
        prev = self._prev_hs
        rd = Ready(
            hard_state=hs if hs != self._prev_hs else None,
            entries=log.take_unstable() if log.has_unstable() else [],
            snapshot=log.pending_snapshot,
            messages=self._msgs,
            committed_entries=log.take_next_committed(),
            read_states=self._read_states,
            leader_id=self._leader_id,
            role=self._role,
            term=self._term,
            new_term_or_vote=hs.term != prev.term or hs.vote != prev.vote,
        )
        log.pending_snapshot = None
        self._msgs = []
        self._read_states = []
        self._prev_hs = hs
        self._prev_soft = (self._leader_id, self._role, self._term)
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that ``rd`` was handled per the contract (persisted, sent, applied)."""
        if rd is not self._outstanding:
            raise ValueError("advance() must be given the outstanding Ready")
        self._outstanding = None
        log = self._log
        old_stable = log.stable
        if rd.snapshot is not None and rd.snapshot.index == log.snap_index:
            log.stable = max(log.stable, rd.snapshot.index)
            log.applied = max(log.applied, rd.snapshot.index)
        ents = rd.entries
        if ents:
            hi = min(ents[-1].index, log.unstable_from - 1)
            first = ents[0].index
            if hi >= first and log.term(hi) == ents[hi - first].term:
                log.stable = max(log.stable, hi)
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)
        if self._role is Role.LEADER and log.stable != old_stable:
            self._maybe_commit()
