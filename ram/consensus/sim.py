"""Deterministic simulator for the Raft core: a seeded scheduler that tries hard to break it.

Run a soak::

    python -m ram.consensus.sim --seeds 200 [--seed-start X] [--nodes K] [--steps S] [--trace]
                                [--core module:Class]

Everything is driven by one ``random.Random(seed)``; a failing seed is replayed exactly by the
command the failure report prints. A *step* is one scheduler event: a node tick, a message
delivery, a storage flush completing (the runtime's handling of one Ready), a client proposal, a
client read or a fault (partition, heal, crash, restart, membership change, leadership transfer).
``--core`` runs another core class (the deliberate bugs in ``tests/consensus/bugs.py``).

Each simulated node runs the runtime's real order (``runtime/node.py``): when it takes a Ready it
at once sends what ``readyplan.split_sends`` lets leave early (a leader's appends), later installs
the snapshot, writes the entries and hard state and applies the committed entries in one atomic
write, THEN sends the rest, THEN advances. Messages arriving meanwhile are stepped into the core.
A crash keeps only what storage holds; crash points sit exactly between "Ready returned (early
messages out)" and "persisted", between "snapshot installed" and "persisted", between "persisted"
and "sent", and between "sent" and "advanced". They are armed by faults and, per seed, at random
on any Ready, so they land between "decided" and "durable" often.

Invariants are checked incrementally after every step:

- at most one leader per term;
- log matching: every persisted (index, term) is globally unique in content and predecessor term;
- committed entries never change, commit indexes (in memory and durable) never go back, a node's
  commit never points past its log, and a follower commits only what a leader committed;
- leader completeness: a new leader holds every entry committed so far;
- state machine safety: applied sequences are prefixes of each other (a chained checksum per
  index), entries are applied in order, only once, and only when durably committed; every
  acknowledged proposal is what every node applies at that index;
- the persistence contract, per message sent: its term is durable (pre-votes aside); a granted
  vote and a vote request have their vote durable; an append acknowledgement covers entries that
  are durable AND are the ones the leader of that term holds (no stale acks); and a leader commits
  an index only when a quorum of its voters holds that entry durably (its own count included);
- durability: a node never grants two votes in one term (seen on the wire), never rolls back its
  durable term or commit, and never changes its durable vote within a term;
- membership: each node's configuration equals what its snapshot and log imply (a change takes
  effect when appended and is rolled back when its entry is truncated), and every snapshot carries
  the configuration in effect at its index;
- check-quorum: a leader that heard from no quorum of its voters for two election timeouts (since
  it was elected, its configuration changed or a transfer restarted its timer) is no longer leader;
- read linearizability: every ReadIndex answer is at least as new as every write acknowledged and
  every read served before that read was invoked (real-time order).

Faults besides crashes: partitions (halves, the leader alone, a bridge node, a split brain that
heals as soon as the majority has a new leader) that either drop what crosses them or hold it and
deliver it in a burst at the heal (as TCP does over a short outage), drops, duplicates,
stragglers, reordering bursts, disk stalls, leadership transfers, membership changes (some left
uncommitted by cutting their leader off), and legal but unusual appends (a leader re-sending from
below a follower's stale suffix).

At the end of a run the network heals, crashed nodes restart, and the cluster must elect a leader
and commit and apply a new proposal on every member within a bounded number of ticks.

The summary of ``main`` reports how often each fault kind and each crash point fired, so a reader
can see that a soak really exercised them.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import heapq
import importlib
import json
import random
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ram.consensus.core import ConfChangeInProgress, NotLeader, ProposalDropped, RaftCore
from ram.consensus.quorum import majority
from ram.consensus.readyplan import split_sends
from ram.consensus.types import (
    EMPTY_CONF,
    EMPTY_HARD_STATE,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistedState,
    RaftConfig,
    Ready,
    Role,
    Snapshot,
)

# Event kinds (ints: cheap to compare, and the heap never has to compare payloads).
TICK, DELIVER, FLUSH, PROPOSE, FAULT, RESTART, HEAL, CRASH, READ, SPLIT = range(10)

# Crash points inside the runtime's handling of a Ready (in the order the runtime reaches them).
CRASH_BEFORE_PERSIST, CRASH_AFTER_SNAPSHOT, CRASH_AFTER_PERSIST, CRASH_AFTER_SEND = range(4)
CRASH_NAMES = ("ready-before-persist", "snapshot-before-persist", "persisted-before-send", "sent-before-advance")

_MT = MessageType
_PRE_VOTE_TYPES = (_MT.PRE_VOTE, _MT.PRE_VOTE_RESP)
_LEADER_HEARD = (_MT.APPEND_RESP, _MT.HEARTBEAT_RESP)

CoreFactory = Callable[[RaftConfig, random.Random, PersistedState, ConfState | None], RaftCore]
SplitSends = Callable[[Ready], tuple[list[Message], list[Message]]]


class Violation(Exception):
    """An invariant broke. The message says which and where."""


@dataclass
class Storage:
    """A node's durable state: exactly what survives a crash."""

    hs: HardState = EMPTY_HARD_STATE
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    # The application (durable together with each apply, like the event store's transaction).
    applied: int = 0
    chain: int = 0

    def snap_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def last_index(self) -> int:
        return self.snap_index() + len(self.entries)

    def term(self, index: int) -> int | None:
        si = self.snap_index()
        if index == si:
            return self.snapshot.term if self.snapshot else 0
        if index < si or index > si + len(self.entries):
            return None
        return self.entries[index - si - 1].term

    def holds(self, index: int, term: int | None) -> bool:
        """Durably holds entry (index, term), or a snapshot covering it (committed state)."""
        return self.snap_index() >= index or (term is not None and self.term(index) == term)


@dataclass
class SimNode:
    id: int
    initial: bool  # member of the bootstrap configuration
    storage: Storage = field(default_factory=Storage)
    core: RaftCore | None = None
    inflight: Ready | None = None
    late: list[Message] = field(default_factory=list)  # the inflight Ready's after-write messages
    crash_at: int | None = None
    restarts: int = 0
    mem_commit: int = 0
    leader_term: int = 0
    removed: bool = False
    crash_after_vote: bool = False  # targeted fault: crash right after granting a vote
    # Check-quorum bookkeeping while leader: ticks led, when the step-down timer last restarted,
    # and the leader tick at which a response from each member last arrived.
    lead_ticks: int = 0
    cq_anchor: int = 0
    cq_conf: ConfState = EMPTY_CONF
    cq_heard: dict[int, int] = field(default_factory=dict)
    # The membership check only reruns when the log's shape changed.
    conf_sig: tuple[int, int, int, ConfState] | None = None
    pending_reads: list[int] = field(default_factory=list)
    stall: bool = False  # targeted fault: the next write stalls


def _chain(prev: int, e: Entry) -> int:
    return zlib.crc32(e.data, zlib.crc32(e.term.to_bytes(8, "big") + e.index.to_bytes(8, "big"), prev))


def _snap_data(applied: int, chain: int) -> bytes:
    return f"{applied}:{chain}".encode()


def _parse_snap_data(data: bytes) -> tuple[int, int]:
    a, c = data.decode().split(":")
    return int(a), int(c)


def conf_after(conf: ConfState, cc: ConfChange) -> ConfState:
    """The membership after ``cc`` (an invalid change leaves it as it is).

    Written apart from the core on purpose: the simulator checks the core's configuration
    against this independent reading of single-server changes.
    """
    v, ln, node = conf.voters, conf.learners, cc.node_id
    if node <= 0:
        return conf
    if cc.type is ConfChangeType.ADD_VOTER:
        return conf if node in v else ConfState(v | {node}, ln - {node})
    if cc.type is ConfChangeType.ADD_LEARNER:
        return conf if node in v or node in ln else ConfState(v, ln | {node})
    if cc.type is ConfChangeType.REMOVE_NODE:
        if (node not in v and node not in ln) or v == {node}:
            return conf
        return ConfState(v - {node}, ln - {node})
    return conf


@dataclass
class SimParams:
    """Per-seed knobs, drawn from the seed so different seeds stress different things."""

    election_ticks: int
    heartbeat_ticks: int
    max_entries: int
    max_inflight: int
    pre_vote: bool
    check_quorum: bool
    drop_p: float
    dup_p: float
    long_delay_p: float
    fault_every: float
    propose_p: float
    compact_after: int
    ready_crash_p: float
    read_every: int
    flush_delays: tuple[int, ...]


class Sim:
    """One seeded run over ``n`` nodes for ``steps`` events."""

    def __init__(
        self,
        seed: int,
        n: int,
        steps: int = 2000,
        core: CoreFactory = RaftCore,
        trace: bool = False,
        out: Callable[[str], None] = print,
        split: SplitSends = split_sends,
    ) -> None:
        self.seed = seed
        self.n = n
        self.steps = steps
        self.core_factory = core
        self.split = split
        self.trace = trace
        self.out = out
        self.rng = rng = random.Random(seed * 7919 + n)
        self.p = SimParams(
            election_ticks=rng.choice((4, 5, 6, 8)),
            heartbeat_ticks=rng.choice((1, 2)),
            max_entries=rng.choice((1, 2, 3, 8, 64)),
            max_inflight=rng.choice((1, 2, 4, 64)),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            drop_p=rng.choice((0.0, 0.02, 0.05, 0.15)),
            dup_p=rng.choice((0.0, 0.02, 0.08)),
            long_delay_p=rng.choice((0.0, 0.03, 0.1)),
            fault_every=rng.choice((4.0, 8.0, 16.0)),
            propose_p=rng.choice((0.3, 0.6, 1.0)),
            compact_after=rng.choice((4, 10, 30, 1000)),
            ready_crash_p=rng.choice((0.0, 0.002, 0.01)),
            read_every=rng.choice((2, 5, 10)),
            # A fast disk, or a slow one: more arrives (and is stepped) while a Ready is written.
            flush_delays=rng.choice(((0, 0, 1), (0, 1, 1, 2))),
        )
        if self.p.election_ticks < 6:
            # An election needs two writes and two trips inside one timeout (as in production).
            self.p.flush_delays = (0, 0, 1)
        self.now = 0
        self.seq = 0
        self.queue: list[tuple[int, int, int, Any]] = []
        self.nodes: dict[int, SimNode] = {}
        self.next_id = n + 1
        self.blocked: set[tuple[int, int]] = set()
        # A partition either drops what crosses it, or (like TCP over a short outage) holds it and
        # delivers it in a burst when the partition heals.
        self.buffering = False
        self.held: list[Message] = []
        self.link_clock: dict[tuple[int, int], int] = {}
        self.initial_conf = ConfState(frozenset(range(1, n + 1)), frozenset())
        self.step_no = 0
        self.history: deque[tuple[int, int, str, Any]] = deque(maxlen=60)
        self.faults_on = True
        self.crash_leader_on_commit = False
        self.kill_next_leaders = 0  # targeted fault: crash the next N new leaders soon after election
        self.split_brain: set[int] = set()  # targeted fault: heal when a leader outside this side wins
        self.proposal_no = 0
        self.read_no = 0
        # Global knowledge for the checks.
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.max_committed = 0
        self.registry: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.applied_chain: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}
        self.proposed: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.acked: dict[int, bytes] = {}
        # (term, index) -> term of the entry the leader of that term holds at that index.
        self.leader_log: dict[tuple[int, int], int] = {}
        # Every configuration entry ever created: sorted (index, term) keys, and the change.
        self.conf_keys: list[tuple[int, int]] = []
        self.conf_entries: dict[tuple[int, int], ConfChange] = {}
        # Reads: context -> (node, newest state a read must see), and that newest state so far.
        self.reads: dict[bytes, tuple[int, int]] = {}
        self.max_done = 0
        self.stats = {"elections": 0, "commits": 0, "crashes": 0, "snapshots": 0, "conf_changes": 0}
        self.stats.update({"reads_served": 0, "reads_refused": 0})
        self.faults: Counter[str] = Counter()
        self.crash_points: Counter[str] = Counter()
        for k, nid in enumerate(sorted(self.initial_conf.voters)):
            self.committed[k + 1] = 1
            self._add_conf_entry(k + 1, 1, ConfChange(ConfChangeType.ADD_VOTER, nid))
        self.max_committed = n
        for i in range(1, n + 1):
            self.nodes[i] = SimNode(i, initial=True)
            self._start(self.nodes[i])
        self._push(1, TICK, None)
        self._push(1, PROPOSE, None)
        self._push(int(self.p.fault_every), FAULT, None)
        self._push(self.p.read_every, READ, None)

    # -- plumbing --------------------------------------------------------------------------------

    def _push(self, delay: int, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, kind, payload))

    def _note(self, kind: str, what: Any) -> None:
        item = (self.step_no, self.now, kind, what)
        self.history.append(item)
        if self.trace:
            self.out(self._fmt(item))

    def _fault_fired(self, kind: str, what: str) -> None:
        self.faults[kind] += 1
        self._note("fault", what)

    @staticmethod
    def _fmt(item: tuple[int, int, str, Any]) -> str:
        step, now, kind, what = item
        if isinstance(what, Message):
            m = what
            extra = f" ents={[(e.index, e.term) for e in m.entries]}" if m.entries else ""
            snap = f" snap={m.snapshot.index}/{m.snapshot.term}" if m.snapshot else ""
            ctx = f" ctx={m.context!r}" if m.context else ""
            what = (
                f"{m.type.name} {m.frm}->{m.to} t={m.term} idx={m.index} lt={m.log_term} "
                f"c={m.commit}{' REJECT hint=' + str(m.reject_hint) if m.reject else ''}{extra}{snap}{ctx}"
            )
        return f"[step {step:5d} t={now:5d}] {kind:8s} {what}"

    def _fail(self, why: str) -> None:
        raise Violation(f"step {self.step_no}: {why}")

    def _config(self, nid: int) -> RaftConfig:
        p = self.p
        return RaftConfig(
            id=nid,
            election_ticks=p.election_ticks,
            heartbeat_ticks=p.heartbeat_ticks,
            max_inflight=p.max_inflight,
            max_entries_per_msg=p.max_entries,
            pre_vote=p.pre_vote,
            check_quorum=p.check_quorum,
        )

    def _add_conf_entry(self, index: int, term: int, cc: ConfChange) -> None:
        key = (index, term)
        if key not in self.conf_entries:
            self.conf_entries[key] = cc
            bisect.insort(self.conf_keys, key)

    def _start(self, node: SimNode) -> None:
        st = node.storage
        persisted = PersistedState(st.hs, st.snapshot, list(st.entries), applied=st.applied)
        node_rng = random.Random(self.rng.getrandbits(32))
        conf = self.initial_conf if node.initial else None
        node.core = self.core_factory(self._config(node.id), node_rng, persisted, conf)
        node.inflight = None
        node.late = []
        node.crash_at = None
        node.mem_commit = node.core.commit_index
        node.leader_term = 0
        node.conf_sig = None
        node.pending_reads = []
        self._pump(node)

    def _crash(self, node: SimNode, why: str) -> None:
        self._note("crash", f"node {node.id} ({why})")
        durable_term = node.storage.hs.term
        lost = [k for k, (term, _) in self.proposed.items() if k[0] == node.id and term > durable_term]
        for k in lost:
            # Proposed in a term that never became durable (a single voter leads before its write):
            # nobody saw it, the client gets an error, and the node may lead that term again.
            del self.proposed[k]
        self.stats["crashes"] += 1
        node.core = None
        node.inflight = None
        node.late = []
        node.crash_at = None
        node.pending_reads = []
        node.restarts += 1
        hi = 6 * self.p.election_ticks if self.faults_on else 3
        self._push(self.rng.randrange(1, hi), RESTART, node.id)

    def _crash_point(self, node: SimNode, point: int, why: str) -> None:
        self.crash_points[CRASH_NAMES[point]] += 1
        self._crash(node, why)

    # -- the runtime of one node --------------------------------------------------------------

    def _pump(self, node: SimNode) -> None:
        """Take a Ready and send at once what may leave before the write (the runtime's order)."""
        core = node.core
        if core is None or node.inflight is not None or not core.has_ready():
            return
        rd = core.ready()
        node.inflight = rd
        early, node.late = self.split(rd)
        for m in early:
            self._check_send(node, m)
            self._send(m)
        p = self.p
        if rd.snapshot is not None and node.crash_at is None and self.faults_on and self.rng.random() < 0.15:
            node.crash_at = CRASH_AFTER_SNAPSHOT  # the runtime installs a snapshot in its own write
            self.faults["snapshot-crash-armed"] += 1
        if node.crash_at is None and self.faults_on and p.ready_crash_p and self.rng.random() < p.ready_crash_p:
            node.crash_at = self.rng.randrange(4)
            self.faults["ready-crash-armed"] += 1
        delay = self.rng.choice(p.flush_delays)
        if node.stall:
            # An fsync stall: the write takes long while messages keep arriving and being stepped.
            node.stall = False
            delay = self.rng.randrange(2, 2 * p.election_ticks)
            self.faults["disk-stall"] += 1
        self._push(delay, FLUSH, node.id)

    def _flush(self, node: SimNode) -> None:
        """Finish the outstanding Ready: [snapshot], one atomic write with the applies, late sends, advance."""
        rd = node.inflight
        core = node.core
        if rd is None or core is None:
            return
        crash_at = node.crash_at
        if crash_at == CRASH_BEFORE_PERSIST:
            self._crash_point(node, crash_at, "Ready returned, early messages out, nothing persisted")
            return
        if rd.snapshot is not None:
            self._install(node, rd.snapshot)
            if crash_at == CRASH_AFTER_SNAPSHOT:
                self._crash_point(node, crash_at, "snapshot installed, entries and hard state not")
                return
        self._persist(node, rd)
        if crash_at in (CRASH_AFTER_PERSIST, CRASH_AFTER_SNAPSHOT):
            self._crash_point(node, CRASH_AFTER_PERSIST, "persisted, late messages not sent")
            return
        voted = False
        for m in node.late:
            self._check_send(node, m)
            self._send(m)
            if m.type is _MT.VOTE_RESP and not m.reject:
                voted = True
        node.late = []
        if voted and node.crash_after_vote and crash_at is None:
            # The vote reply is out; crash before anything later is persisted, restart quickly.
            node.crash_after_vote = False
            node.crash_at = CRASH_BEFORE_PERSIST
            self._fault_fired("crash-after-vote", f"node {node.id} voted and will crash before its next persist")
        if crash_at == CRASH_AFTER_SEND:
            self._crash_point(node, crash_at, "sent, not advanced")
            return
        core.advance(rd)
        node.inflight = None
        self._reads_answered(node, rd)
        if core.applied_index - core.first_index >= self.p.compact_after:
            st = node.storage
            want = self._implied_conf(core, core.applied_index)
            snap = core.compact(core.applied_index, _snap_data(st.applied, st.chain))
            if snap.conf != want:
                self._fail(f"membership: node {node.id}'s snapshot at {snap.index} carries {snap.conf}, not {want}")
            st.entries = st.entries[snap.index - st.snap_index() :]
            st.snapshot = snap
            self.stats["snapshots"] += 1
        self._pump(node)

    def _install(self, node: SimNode, s: Snapshot) -> None:
        st = node.storage
        nid = node.id
        if s.index < st.hs.commit:
            self._fail(f"node {nid}: snapshot {s.index} installed below durable commit {st.hs.commit}")
        st.snapshot = s
        st.entries = []
        applied, chain = _parse_snap_data(s.data)
        if applied != s.index:
            self._fail(f"node {nid}: snapshot {s.index} carries app state at {applied}")
        self._check_chain(nid, s.index, chain)
        st.applied, st.chain = s.index, chain
        self._note("install", f"node {nid} snapshot {s.index}/{s.term}")

    def _persist(self, node: SimNode, rd: Ready) -> None:
        """The runtime's one transaction: entries, hard state and the applies of this Ready."""
        st = node.storage
        nid = node.id
        if rd.entries:
            first = rd.entries[0].index
            si = st.snap_index()
            if first > st.last_index() + 1 or first <= si:
                self._fail(f"node {nid}: persisting entries from {first} leaves a gap/overlap (log {si}..)")
            if first <= st.hs.commit:
                self._fail(f"node {nid}: overwriting durably committed index {first} <= {st.hs.commit}")
            del st.entries[first - si - 1 :]
            prev_term = st.term(first - 1)
            assert prev_term is not None
            reg = self.registry
            for e in rd.entries:
                key = (e.index, e.term)
                val = (prev_term, int(e.type), zlib.crc32(e.data))
                old = reg.get(key)
                if old is None:
                    reg[key] = val
                elif old != val:
                    self._fail(
                        f"log matching: node {nid} persisted entry {key} with (prev_term, type, crc) "
                        f"{val} but another node has {old}"
                    )
                prev_term = e.term
            st.entries.extend(rd.entries)
        if rd.hard_state is not None:
            new_hs, old_hs = rd.hard_state, st.hs
            if new_hs.term < old_hs.term:
                self._fail(f"node {nid}: durable term went back {old_hs.term} -> {new_hs.term}")
            if new_hs.commit < old_hs.commit:
                self._fail(f"node {nid}: durable commit went back {old_hs.commit} -> {new_hs.commit}")
            if new_hs.term == old_hs.term and old_hs.vote != NONE and new_hs.vote != old_hs.vote:
                self._fail(f"node {nid}: durable vote changed in term {new_hs.term}: {old_hs.vote} -> {new_hs.vote}")
            st.hs = new_hs
        if st.hs.commit > st.last_index():
            self._fail(f"node {nid}: durable commit {st.hs.commit} beyond durable log {st.last_index()}")
        for e in rd.committed_entries:
            self._apply(node, e)

    def _check_send(self, node: SimNode, m: Message) -> None:
        """The persistence contract: what this message depends on is durable, right now."""
        st = node.storage
        hs = st.hs
        nid = node.id
        t = m.type
        if m.frm != nid:
            self._fail(f"node {nid} sends a message as {m.frm}")
        if m.term > hs.term and t not in _PRE_VOTE_TYPES:
            self._fail(
                f"persistence contract: node {nid} sends {t.name} in term {m.term} but durable term is {hs.term}"
            )
        if t is _MT.VOTE_RESP and not m.reject:
            # Durable: this vote, or a later term (then no other vote in m.term can ever follow).
            if hs.term == m.term and hs.vote != m.to:
                self._fail(
                    f"persistence contract: node {nid} grants its vote in term {m.term} to {m.to} but its "
                    f"durable (term, vote) is ({hs.term}, {hs.vote})"
                )
            key = (m.frm, m.term)
            prev = self.votes.get(key)
            if prev is None:
                self.votes[key] = m.to
            elif prev != m.to:
                self._fail(f"node {m.frm} granted two votes in term {m.term}: to {prev} and {m.to}")
        elif t is _MT.VOTE:
            if hs.term == m.term and hs.vote != nid:
                self._fail(
                    f"persistence contract: node {nid} asks for votes in term {m.term} but its durable "
                    f"(term, vote) is ({hs.term}, {hs.vote})"
                )
        elif t is _MT.APPEND_RESP and not m.reject and m.index > 0:
            k = m.index
            if k > st.last_index():
                self._fail(f"persistence contract: node {nid} acks index {k} but persisted only {st.last_index()}")
            want = self.leader_log.get((m.term, k))
            if want is not None and not st.holds(k, want):
                self._fail(
                    f"stale ack: node {nid} acks index {k} to the leader of term {m.term}, which holds term "
                    f"{want} there, but node {nid} durably holds term {st.term(k)}"
                )
        elif t is _MT.APPEND:
            log = self.leader_log
            term = m.term
            log[(term, m.index)] = m.log_term
            for e in m.entries:
                log[(term, e.index)] = e.term
        elif t is _MT.SNAPSHOT and m.snapshot is not None:
            self.leader_log[(m.term, m.snapshot.index)] = m.snapshot.term

    def _check_chain(self, nid: int, index: int, chain: int) -> None:
        known = self.applied_chain.get(index)
        if known is None:
            self.applied_chain[index] = chain
        elif known != chain:
            self._fail(f"state machine safety: node {nid} applied a different history up to index {index}")

    def _apply(self, node: SimNode, e: Entry) -> None:
        st = node.storage
        nid = node.id
        if e.index != st.applied + 1:
            self._fail(f"node {nid}: applied {e.index} after {st.applied} (gap, reorder or reapply)")
        if e.index > st.hs.commit:
            self._fail(f"node {nid}: applied {e.index} beyond its durable commit {st.hs.commit}")
        ct = self.committed.get(e.index)
        if ct is not None and ct != e.term:
            self._fail(f"node {nid}: applied ({e.index}, t{e.term}) but ({e.index}, t{ct}) was committed")
        st.chain = _chain(st.chain, e)
        st.applied = e.index
        self._check_chain(nid, e.index, st.chain)
        acked = self.acked.get(e.index)
        if acked is not None and acked != e.data:
            self._fail(f"node {nid}: applied {e.data!r} at {e.index} but {acked!r} was acknowledged there")
        mine = self.proposed.pop((nid, e.index), None)
        if mine is not None and mine[0] == e.term:
            if mine[1] != e.data:
                self._fail(f"node {nid}: own proposal at ({e.index}, t{e.term}) applied with other data")
            self.acked[e.index] = e.data
            self.max_done = max(self.max_done, e.index)

    def _send(self, m: Message) -> None:
        rng = self.rng
        p = self.p
        if m.to not in self.nodes:
            return
        if (m.frm, m.to) in self.blocked:
            if self.buffering:
                self.held.append(m)
            return
        if p.drop_p and rng.random() < p.drop_p:
            self.faults["msg-drop"] += 1
            return
        copies = 1
        if p.dup_p and rng.random() < p.dup_p:
            copies = 2
            self.faults["msg-duplicate"] += 1
        link = (m.frm, m.to)
        for _ in range(copies):
            straggle = p.long_delay_p
            if m.type is _MT.HEARTBEAT_RESP and m.context:
                straggle *= 3  # late answers to an old ReadIndex round
            if straggle and rng.random() < straggle:
                # A straggler: overtaken by later messages on the same link (reordering).
                self.faults["msg-long-delay"] += 1
                self._push(rng.randrange(3, 4 * p.election_ticks), DELIVER, m)
            else:
                # Links are FIFO otherwise (like a TCP stream), with a random latency.
                at = max(self.now + rng.randrange(3), self.link_clock.get(link, 0))
                self.link_clock[link] = at
                self._push(at - self.now, DELIVER, m)

    def _resend_low(self, leader: SimNode, to: int) -> None:
        """A legal but unusual append: the leader re-sends a short run from below where the
        follower's log diverges, with its current commit (as a leader whose ``next`` went back
        would). A follower must then commit only up to the last entry this append verified."""
        core = leader.core
        follower = self.nodes.get(to)
        if core is None or follower is None or follower.core is None:
            return
        fc = follower.core
        if core.log_term(fc.last_index) == fc.log_term(fc.last_index) or self.rng.random() < 0.5:
            return  # the follower holds no stale suffix (log matching): nothing to provoke
        hi = min(fc.last_index, core.last_index)
        lo = max(core.first_index, fc.first_index)
        d = hi
        while d >= lo and fc.log_term(d) != core.log_term(d):
            d -= 1
        if d < lo or core.commit_index <= d:
            return
        p = self.rng.randrange(max(lo, d - 4), d + 1)
        q = min(p + self.rng.choice((0, 1, 2)), d)
        prev_term = core.log_term(p)
        if prev_term is None:
            return
        m = Message(
            _MT.APPEND,
            leader.id,
            to,
            core.term,
            log_term=prev_term,
            index=p,
            entries=tuple(core.log_entries(p + 1, q + 1)),
            commit=core.commit_index,
        )
        self.faults["leader-resend-low"] += 1
        self._check_send(leader, m)
        self._send(m)

    # -- reads ----------------------------------------------------------------------------------

    def _read(self, at: int | None = None) -> None:
        """A client's ReadIndex at a node that believes it leads; it must see every earlier write.

        ``at``: a targeted read at that node (if it still believes it leads), else a random leader.
        """
        if at is None and self.faults_on:
            self._push(1 + self.rng.randrange(self.p.read_every), READ, None)
        leaders = self._leaders()
        if at is not None:
            leaders = [nd for nd in leaders if nd.id == at]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        core = node.core
        assert core is not None
        self.read_no += 1
        ctx = f"r{self.read_no}".encode()
        try:
            core.read_index(ctx)
        except NotLeader:
            self.stats["reads_refused"] += 1
            return
        self.reads[ctx] = (node.id, self.max_done)
        self.faults["read"] += 1
        self._note("read", f"node {node.id} ctx={ctx!r} must see >= {self.max_done}")
        self._pump(node)
        self._check_node(node)

    def _reads_answered(self, node: SimNode, rd: Ready) -> None:
        for rs in rd.read_states:
            req = self.reads.pop(rs.context, None)
            if req is None or req[0] != node.id:
                self._fail(f"node {node.id}: ReadState for a context it was not asked ({rs.context!r})")
                return
            if rs.index < req[1]:
                self._fail(
                    f"read linearizability: node {node.id} answers read {rs.context!r} at index {rs.index}, "
                    f"but index {req[1]} was acknowledged or read before the read was invoked"
                )
            node.pending_reads.append(rs.index)
        self._serve_reads(node)

    def _serve_reads(self, node: SimNode) -> None:
        """Serve the reads whose index is applied (the runtime waits for that), at the applied state."""
        if not node.pending_reads:
            return
        applied = node.storage.applied
        waiting = [i for i in node.pending_reads if i > applied]
        if len(waiting) < len(node.pending_reads):
            self.stats["reads_served"] += len(node.pending_reads) - len(waiting)
            self.max_done = max(self.max_done, applied)
        node.pending_reads = waiting

    # -- checks after each step --------------------------------------------------------------

    def _implied_conf(self, core: RaftCore, upto: int | None = None) -> ConfState:
        """The membership that ``core``'s snapshot and log (up to ``upto``) imply."""
        last = core.last_index if upto is None else upto
        snap = core.snapshot
        conf = snap.conf if snap is not None else EMPTY_CONF
        lo = snap.index + 1 if snap is not None else 1
        keys = self.conf_keys
        for k in range(bisect.bisect_left(keys, (lo, 0)), len(keys)):
            idx, term = keys[k]
            if idx > last:
                break
            if core.log_term(idx) == term:
                conf = conf_after(conf, self.conf_entries[keys[k]])
        return conf

    def _check_conf(self, node: SimNode, core: RaftCore) -> None:
        last = core.last_index
        sig = (core.first_index, last, core.log_term(last) or 0, core.conf)
        if sig == node.conf_sig:
            return
        node.conf_sig = sig
        want = self._implied_conf(core)
        if core.conf != want:
            self._fail(
                f"membership: node {node.id} uses voters={sorted(core.conf.voters)} "
                f"learners={sorted(core.conf.learners)} but its snapshot and log imply "
                f"voters={sorted(want.voters)} learners={sorted(want.learners)}"
            )

    def _check_quorum_bound(self, node: SimNode, core: RaftCore) -> None:
        """A leader cut off from its quorum for two election timeouts must have stepped down."""
        et = self.p.election_ticks
        k = node.lead_ticks
        if not self.p.check_quorum or core.role is not Role.LEADER or k - node.cq_anchor < 2 * et:
            return
        voters = core.conf.voters
        heard = sum(1 for v in voters if v != node.id and node.cq_heard.get(v, -1) > k - 2 * et)
        if node.id in voters:
            heard += 1
        if heard < majority(len(voters)):
            self._fail(
                f"check-quorum: leader {node.id} (term {core.term}) heard from only {heard} of "
                f"{len(voters)} voters in its last {2 * et} ticks and still leads"
            )

    def _check_node(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        term = core.term
        if core.role is Role.LEADER and node.leader_term != term:
            node.leader_term = term
            node.lead_ticks = node.cq_anchor = 0
            node.cq_conf = core.conf
            node.cq_heard = {}
            other = self.leaders.get(term)
            if other is not None and other != node.id:
                self._fail(f"two leaders in term {term}: {other} and {node.id}")
            self.leaders[term] = node.id
            self.stats["elections"] += 1
            if self.kill_next_leaders > 0 and self.faults_on:
                # Leader churn before the new leader's own entry spreads (the Figure 8 pattern).
                self.kill_next_leaders -= 1
                roll = self.rng.random()
                if roll < 0.35:
                    # Its first entry goes out (early) but is not durable, nor are the late messages.
                    node.crash_at = self.rng.choice((CRASH_BEFORE_PERSIST, CRASH_AFTER_PERSIST))
                    self.faults["new-leader-crash-armed"] += 1
                elif roll < 0.7:
                    # Cut it off at once: it keeps taking proposals that reach nobody.
                    self._isolate(node.id)
                    self.faults["new-leader-isolated"] += 1
                else:
                    self._push(self.rng.randrange(0, 3), CRASH, node.id)
                    self.faults["new-leader-crash-soon"] += 1
            self._note("leader", f"node {node.id} leads term {term} (last={core.last_index})")
            if self.split_brain and node.id not in self.split_brain and self.faults_on:
                # Give the new leader time to acknowledge writes, read at the old one (still
                # leading while check-quorum allows), then heal: what the partition held (answers to
                # the old leader's earlier ReadIndex rounds among it) arrives after that read.
                wait = self.rng.choice((0, 0, 4, 8))
                for nid in self.split_brain:
                    self.nodes[nid].stall = True
                    self._push(wait, READ, nid)
                self.split_brain = set()
                self._push(wait + self.rng.randrange(0, 2), HEAL, None)
                self.faults["split-brain-heal"] += 1
            # Leader completeness: everything committed so far is in the new leader's log.
            if core.last_index < self.max_committed:
                self._fail(
                    f"leader completeness: node {node.id} leads term {term} with last index "
                    f"{core.last_index} < committed {self.max_committed}"
                )
            lo = core.first_index
            for i, t in self.committed.items():
                if i >= lo and core.log_term(i) != t:
                    self._fail(
                        f"leader completeness: new leader {node.id} (term {term}) has term "
                        f"{core.log_term(i)} at committed index {i} (committed term {t})"
                    )
        if core.role is Role.LEADER and core.conf != node.cq_conf:
            node.cq_conf = core.conf
            node.cq_anchor = node.lead_ticks
        self._check_conf(node, core)
        c = core.commit_index
        if c < node.mem_commit:
            self._fail(f"node {node.id}: commit index went back {node.mem_commit} -> {c}")
        if c > node.mem_commit:
            if c > core.last_index:
                self._fail(f"node {node.id}: commit {c} beyond its last index {core.last_index}")
            # Its own decision if it led this term (a leader whose removal commits steps down in the
            # very step that commits it); otherwise it learned the commit from the leader.
            leading = node.leader_term == term
            if leading:
                # The leader's count: a quorum of its voters holds the entry durably, itself included.
                ct = core.log_term(c)
                voters = core.conf.voters
                holders = [v for v in voters if v in self.nodes and self.nodes[v].storage.holds(c, ct)]
                if len(holders) < majority(len(voters)):
                    self._fail(
                        f"persistence contract: leader {node.id} commits index {c} (term {ct}) but only "
                        f"{sorted(holders)} of voters {sorted(voters)} hold it durably"
                    )
            lo = max(node.mem_commit + 1, core.first_index - 1)
            committed = self.committed
            for i in range(lo, c + 1):
                got = core.log_term(i)
                if got is None:
                    continue
                known = committed.get(i)
                if known is None:
                    if not leading:
                        self._fail(
                            f"node {node.id} (follower, term {term}) commits index {i} (term {got}) that no "
                            f"leader has committed (commit past what the leader verified?)"
                        )
                    committed[i] = got
                elif known != got:
                    self._fail(
                        f"committed entry changed: node {node.id} commits index {i} with term {got}, "
                        f"but term {known} was committed there"
                    )
            if leading and self.crash_leader_on_commit and self.faults_on:
                # Adversarial timing: the leader dies right after deciding a commit, before it can
                # tell anyone or send the entries that follow.
                self.crash_leader_on_commit = False
                node.crash_at = CRASH_BEFORE_PERSIST
                self._fault_fired(
                    "leader-crash-on-commit", f"leader {node.id} committed {c}, crashes before next persist"
                )
            if c > self.max_committed:
                self.stats["commits"] += c - self.max_committed
                self.max_committed = c
            node.mem_commit = c

    # -- workload and faults -------------------------------------------------------------------

    def _live(self) -> list[SimNode]:
        return [nd for nd in self.nodes.values() if nd.core is not None]

    def _leaders(self) -> list[SimNode]:
        return [nd for nd in self.nodes.values() if nd.core is not None and nd.core.role is Role.LEADER]

    def _heal(self) -> None:
        """Reopen every link; what a buffering partition held arrives now, in order, per link."""
        self.blocked.clear()
        held, self.held = self.held, []
        for m in held:
            link = (m.frm, m.to)
            at = max(self.now + self.rng.randrange(2), self.link_clock.get(link, 0))
            self.link_clock[link] = at
            self._push(at - self.now, DELIVER, m)
        if held:
            self.faults["partition-burst"] += 1

    def _isolate(self, nid: int) -> None:
        self.buffering = False
        for o in self.nodes:
            if o != nid:
                self.blocked.add((nid, o))
                self.blocked.add((o, nid))
        self._push(self.rng.randrange(2, 6 * self.p.election_ticks), HEAL, None)

    def _propose(self) -> None:
        rng = self.rng
        leaders = self._leaders()
        for node in leaders:  # every node that believes it leads gets work (stale leaders diverge)
            core = node.core
            assert core is not None
            if core.last_index - core.commit_index > 64:
                continue  # flow control, as the runtime does: bounded uncommitted backlog
            for _ in range(rng.choice((1, 1, 2, 4))):
                self.proposal_no += 1
                data = f"s{self.seed}-p{self.proposal_no}".encode()
                try:
                    idx, term = core.propose(data)
                except (NotLeader, ProposalDropped):
                    break
                self.proposed[(node.id, idx)] = (term, data)
            self._note("propose", f"node {node.id} up to {core.last_index}")
            self._pump(node)
            self._check_node(node)
        if self.faults_on:
            self._push(1 + int(rng.random() / max(self.p.propose_p, 0.05)), PROPOSE, None)

    def _fault(self) -> None:
        if not self.faults_on:
            return
        rng = self.rng
        self._push(1 + rng.randrange(int(2 * self.p.fault_every)), FAULT, None)
        ids = sorted(self.nodes)
        live = [nd for nd in self._live() if not nd.removed]
        roll = rng.random()
        if roll < 0.25:
            # Partition: random halves, the leader alone, or a bridge node seeing both sides.
            shape = rng.choice(("halves", "isolate_leader", "bridge", "split_brain"))
            leaders = self._leaders()
            if shape == "isolate_leader" and leaders:
                side_a = [rng.choice(leaders).id]
            elif shape == "split_brain" and leaders:
                # The leader keeps a minority; once the majority has a new leader, heal at once
                # and slow the minority's disks: a node then hears both leaders within one write.
                ld = rng.choice(leaders)
                assert ld.core is not None
                others = sorted(ld.core.conf.voters - {ld.id})
                k = rng.randrange(0, max(1, majority(len(others) + 1) - 1))
                side_a = [ld.id, *rng.sample(others, min(k, len(others)))]
                # A ReadIndex round starts now; the cut comes while its answers are on the way.
                self._read(at=ld.id)
                self._push(rng.randrange(1, 4), SPLIT, side_a)
                self._fault_fired("partition-split_brain", f"split brain soon: {sorted(side_a)} keep leader {ld.id}")
                return
            else:
                k = max(1, len(ids) // 2)
                side_a = rng.sample(ids, k)
            side_b = [i for i in ids if i not in side_a]
            bridge = rng.choice(side_b) if shape == "bridge" and len(side_b) > 1 else None
            self.buffering = rng.random() < 0.5
            for a in side_a:
                for b in side_b:
                    if b != bridge:
                        self.blocked.add((a, b))
                        self.blocked.add((b, a))
            self._fault_fired(
                f"partition-{shape}", f"partition {shape}: {sorted(side_a)} | {sorted(side_b)} bridge={bridge}"
            )
            self._push(rng.randrange(2, 10 * self.p.election_ticks), HEAL, None)
        elif roll < 0.32:
            self.kill_next_leaders = rng.randrange(1, 4)
            self.crash_leader_on_commit = rng.random() < 0.5
            self._fault_fired(
                "leader-churn", f"the next {self.kill_next_leaders} new leaders will crash soon after election"
            )
        elif roll < 0.50:
            # Crash a node (often the leader), at a random point of its Ready handling.
            leaders = self._leaders()
            pool = leaders if leaders and rng.random() < 0.5 else live
            if not pool:
                return
            node = rng.choice(pool)
            if rng.random() < 0.3:
                for nd in rng.sample(live, max(1, len(live) // 2)):
                    nd.crash_after_vote = True
                self._fault_fired("crash-after-vote-armed", "armed crash-after-vote on some nodes")
                return
            how = rng.randrange(5)
            if how == 4 or node.inflight is None:
                self.faults["crash-now"] += 1
                self._crash(node, "now")
            else:
                node.crash_at = how
                self._fault_fired(f"crash-armed-{CRASH_NAMES[how]}", f"node {node.id} will crash {CRASH_NAMES[how]}")
        elif roll < 0.60:
            self._heal()
            self._fault_fired("heal", "heal all links")
        elif roll < 0.72:
            leaders = self._leaders()
            if leaders:
                ld = rng.choice(leaders)
                assert ld.core is not None
                voters = sorted(ld.core.conf.voters - {ld.id})
                if voters:
                    target = rng.choice(voters)
                    self._fault_fired("transfer", f"transfer leadership {ld.id} -> {target}")
                    ld.cq_anchor = ld.lead_ticks  # a transfer restarts the leader's step-down timer
                    with contextlib.suppress(NotLeader, ValueError):
                        ld.core.transfer_leadership(target)
                    self._pump(ld)
                    self._check_node(ld)
        elif roll < 0.90:
            self._membership()
        else:
            # Message chaos burst: reshuffle the in-flight messages' arrival times.
            self.queue[:] = [(t + (rng.randrange(4) if k == DELIVER else 0), s, k, pl) for (t, s, k, pl) in self.queue]
            heapq.heapify(self.queue)
            self._fault_fired("reorder", "reorder in-flight messages")

    def _membership(self) -> None:
        rng = self.rng
        leaders = self._leaders()
        if not leaders:
            return
        ld = max(leaders, key=lambda nd: nd.core.term if nd.core else 0)
        core = ld.core
        assert core is not None
        conf = core.conf
        choice = rng.random()
        learners = sorted(conf.learners)
        voters = sorted(conf.voters)
        if learners and choice < 0.5:
            prog = core.progress
            ready = [i for i in learners if i in prog and prog[i].match >= core.commit_index - 2]
            if not ready:
                return
            cc = ConfChange(ConfChangeType.ADD_VOTER, rng.choice(ready))
        elif choice < 0.75 and len(voters) > 3:
            cc = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(voters))
        elif len(voters) + len(learners) < self.n + 2:
            nid = self.next_id
            cc = ConfChange(ConfChangeType.ADD_LEARNER, nid, context=f"sim://{nid}".encode())
        else:
            return
        try:
            idx, term = core.propose_conf_change(cc)
        except (NotLeader, ProposalDropped, ConfChangeInProgress, ValueError):
            return
        self._add_conf_entry(idx, term, cc)
        self.stats["conf_changes"] += 1
        self._fault_fired(
            f"conf-{cc.type.name.lower()}", f"leader {ld.id} proposes {cc.type.name} {cc.node_id} at {idx}"
        )
        if cc.type is ConfChangeType.ADD_LEARNER:
            self.next_id += 1
            node = SimNode(cc.node_id, initial=False)
            self.nodes[node.id] = node
            self._start(node)
        self._pump(ld)
        if rng.random() < 0.3:
            # Cut the leader off with its change uncommitted: the change must roll back wherever
            # its entry is overwritten.
            self._isolate(ld.id)
            self._fault_fired("conf-then-isolate", f"leader {ld.id} cut off right after proposing a change")
        self._check_node(ld)

    # -- main loop -----------------------------------------------------------------------------

    def _event(self, kind: int, payload: Any) -> None:
        if kind == DELIVER:
            m: Message = payload
            node = self.nodes.get(m.to)
            if node is None or node.core is None:
                return
            if (m.frm, m.to) in self.blocked:
                if self.buffering:
                    self.held.append(m)
                return
            if self.trace:
                self._note("deliver", m)
            else:
                self.history.append((self.step_no, self.now, "deliver", m))
            core = node.core
            if m.type in _LEADER_HEARD and core.role is Role.LEADER and m.term == core.term:
                node.cq_heard[m.frm] = node.lead_ticks
                if self.faults_on:
                    self._resend_low(node, m.frm)
            core.step(m)
            self._pump(node)
            self._check_node(node)
        elif kind == TICK:
            # One logical clock tick for every live node (their order is shuffled).
            nodes = [nd for nd in self.nodes.values() if nd.core is not None]
            self.rng.shuffle(nodes)
            for node in nodes:
                ticked = node.core
                if ticked is not None:
                    leading = ticked.role is Role.LEADER
                    ticked.tick()
                    self._pump(node)
                    self._check_node(node)
                    if leading and node.core is not None:
                        node.lead_ticks += 1
                        self._check_quorum_bound(node, node.core)
            self._push(1, TICK, None)
        elif kind == FLUSH:
            node = self.nodes[payload]
            self._flush(node)
            self._check_node(node)
        elif kind == PROPOSE:
            self._propose()
        elif kind == READ:
            self._read(payload)
        elif kind == FAULT:
            self._fault()
        elif kind == RESTART:
            node = self.nodes[payload]
            if node.core is None:
                self._note("restart", f"node {node.id}")
                self._start(node)
                self._check_node(node)
        elif kind == CRASH:
            node = self.nodes[payload]
            if node.core is not None and self.faults_on:
                self._crash(node, "targeted")
        elif kind == SPLIT:
            if self.faults_on:
                side_a = set(payload)
                self.split_brain = side_a
                self.buffering = True
                for a in side_a:
                    for b in self.nodes:
                        if b not in side_a:
                            self.blocked.add((a, b))
                            self.blocked.add((b, a))
                self._note("fault", f"split brain: {sorted(side_a)} | the rest (held, not dropped)")
                self._push(self.rng.randrange(2, 10 * self.p.election_ticks), HEAL, None)
        elif kind == HEAL:
            self._heal()
            self._note("heal", "all links")
            if self.faults_on and self.rng.random() < 0.5:
                # Nodes coming back from a partition meet two leaders at once; a slow write then
                # keeps what the stale one was told in the same batch as the new one's repair.
                live = self._live()
                for nd in self.rng.sample(live, min(len(live), max(1, len(live) // 3))):
                    nd.stall = True

    def _run_events(self, limit: int, until: Callable[[], bool] | None = None) -> bool:
        q = self.queue
        for _ in range(limit):
            if not q:
                return False
            t, _s, kind, payload = heapq.heappop(q)
            self.now = t
            self.step_no += 1
            self._event(kind, payload)
            if until is not None and until():
                return True
        return False

    def _liveness(self) -> None:
        """Heal everything, restart everyone, and demand progress within a bounded time."""
        self.faults_on = False
        self._heal()
        self.p.drop_p = self.p.dup_p = self.p.long_delay_p = 0.0
        for node in self.nodes.values():
            node.crash_after_vote = False
            node.crash_at = None
            if node.core is None:
                self._start(node)
                self._check_node(node)
        self._note("liveness", "healed, all nodes up; waiting for a leader and a commit")
        backlog = max((nd.core.last_index - nd.core.commit_index for nd in self._live() if nd.core), default=0)
        # A member far behind (a learner of a single voter, which commits alone) catches up at
        # max_entries per round trip.
        newest = max((nd.core.last_index for nd in self._live() if nd.core), default=0)
        behind = max((newest - nd.storage.applied for nd in self.nodes.values()), default=0)
        catch_up = 2 * behind // self.p.max_entries
        deadline = self.now + 40 * self.p.election_ticks + 50 + 4 * min(backlog, 100) + catch_up
        marker = f"s{self.seed}-liveness".encode()
        state: dict[str, Any] = {"at": None}

        def done() -> bool:
            leaders = [nd for nd in self._leaders() if nd.core is not None]
            if not leaders:
                return self.now > deadline
            ld = max(leaders, key=lambda nd: nd.core.term if nd.core else 0)
            core = ld.core
            assert core is not None
            at = state["at"]
            if at is None or core.log_term(at[0]) != at[1]:
                try:
                    state["at"] = core.propose(marker)
                    self._pump(ld)
                except (NotLeader, ProposalDropped):
                    pass
                return self.now > deadline
            members = core.conf.voters | core.conf.learners
            ok = (
                all(self.nodes[i].storage.applied >= at[0] for i in members if i in self.nodes)
                and self.nodes[ld.id].storage.applied >= at[0]
            )
            return ok or self.now > deadline

        self._run_events(10**6, done)
        at = state["at"]
        leaders = self._leaders()
        if at is None or not leaders:
            self._fail(f"liveness: no leader able to take a proposal by t={self.now} (deadline {deadline})")
        lagging = [
            (nd.id, nd.storage.applied)
            for nd in self.nodes.values()
            if nd.storage.applied < at[0] and any(nd.id in (ld.core.conf.voters if ld.core else ()) for ld in leaders)
        ]
        if self.now > deadline or lagging:
            self._fail(f"liveness: proposal at {at} not applied everywhere by t={self.now}: lagging {lagging}")

    def run(self) -> None:
        """Run the seed; raises Violation on the first broken invariant."""
        self._run_events(self.steps)
        self._liveness()

    def trace_tail(self) -> list[str]:
        return [self._fmt(item) for item in self.history]


@dataclass
class SeedResult:
    seed: int
    nodes: int
    steps: int
    violation: str | None
    trace: list[str]
    faults: Counter[str] = field(default_factory=Counter)
    crash_points: Counter[str] = field(default_factory=Counter)


def replay_command(seed: int, nodes: int, steps: int, core: str | None = None) -> str:
    cmd = f"python -m ram.consensus.sim --seeds 1 --seed-start {seed} --nodes {nodes} --steps {steps} --trace"
    return cmd + (f" --core {core}" if core else "")


def run_seed(
    seed: int,
    nodes: int,
    steps: int,
    core: CoreFactory = RaftCore,
    trace: bool = False,
    split: SplitSends = split_sends,
) -> SeedResult:
    sim = Sim(seed, nodes, steps, core=core, trace=trace, split=split)
    try:
        sim.run()
    except Violation as exc:
        return SeedResult(seed, nodes, sim.step_no, str(exc), sim.trace_tail(), sim.faults, sim.crash_points)
    return SeedResult(seed, nodes, sim.step_no, None, [], sim.faults, sim.crash_points)


def sizes_for(seed: int, nodes: int | None) -> int:
    return nodes if nodes else (3, 5, 7)[seed % 3]


def load_core(spec: str) -> CoreFactory:
    """``module:Name`` -> that core class (e.g. a deliberate bug from the tests)."""
    mod, _, name = spec.partition(":")
    obj = getattr(importlib.import_module(mod), name)
    if not (isinstance(obj, type) and issubclass(obj, RaftCore)):
        raise SystemExit(f"{spec} is not a RaftCore subclass")
    factory: CoreFactory = obj
    return factory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ram.consensus.sim", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=None, help="cluster size (default: cycle 3, 5, 7)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--core", default=None, help="module:Class of another RaftCore (e.g. a deliberate bug)")
    ap.add_argument("--keep-going", action="store_true", help="run all seeds even after a violation")
    args = ap.parse_args(argv)
    core = load_core(args.core) if args.core else RaftCore
    t0 = time.perf_counter()
    violations = 0
    total_steps = 0
    first_bad: int | None = None
    ran = 0
    faults: Counter[str] = Counter()
    crash_points: Counter[str] = Counter()
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        n = sizes_for(seed, args.nodes)
        res = run_seed(seed, n, args.steps, core, args.trace)
        ran += 1
        total_steps += res.steps
        faults.update(res.faults)
        crash_points.update(res.crash_points)
        if res.violation is not None:
            violations += 1
            if first_bad is None:
                first_bad = seed
            print(f"VIOLATION seed={seed} nodes={n}: {res.violation}")
            print("last steps:")
            for line in res.trace:
                print("  " + line)
            print("replay: " + replay_command(seed, n, args.steps, args.core))
            if not args.keep_going:
                break
    dt = time.perf_counter() - t0
    summary = {
        "seeds": ran,
        "steps": total_steps,
        "violations": violations,
        "first_violation_seed": first_bad,
        "seconds": round(dt, 3),
        "seeds_per_s": round(ran / dt, 2) if dt > 0 else None,
        "core": args.core,
        "faults": dict(sorted(faults.items())),
        "crash_points": {name: crash_points.get(name, 0) for name in CRASH_NAMES},
    }
    print(json.dumps(summary))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
