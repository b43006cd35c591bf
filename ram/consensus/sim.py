"""Deterministic simulator for the Raft core: a seeded scheduler that tries hard to break it.

Run a soak::

    python -m ram.consensus.sim --seeds 200 [--seed-start X] [--nodes K] [--steps S] [--trace] [--bug NAME]

Everything is driven by one ``random.Random(seed)``; a failing seed is replayed exactly by the
command the failure report prints. A *step* is one scheduler event: a node tick, a message
delivery, a storage flush completing (the runtime's handling of one Ready), a client proposal or a
fault (partition, heal, crash, restart, membership change, leadership transfer).

Each simulated node runs a tiny runtime that follows the Ready contract to the letter: it takes a
Ready, later makes it durable in its fake storage, THEN sends its messages, THEN applies the
committed entries, THEN advances. Messages arriving meanwhile are stepped into the core, like the
real asyncio runtime does. A crash keeps only what storage holds; crashes are injected before the
flush, between flush and send, between send and apply, and in the middle of applying.

Invariants are checked incrementally after every step:

- at most one leader per term;
- log matching: every persisted (index, term) is globally unique in content and predecessor term;
- committed entries never change, commit indexes (in memory and durable) never go back, a node's
  commit never points past its log;
- leader completeness: a new leader holds every entry committed so far;
- state machine safety: applied sequences are prefixes of each other (a chained checksum per
  index), entries are applied in order, only once, and only when durably committed; every
  acknowledged proposal is what every node applies at that index;
- durability: a node never grants two votes in one term (seen on the wire, so a vote lost in a
  crash is caught), never acks an append it has not persisted, and never rolls back its durable
  term or commit.

At the end of a run the network heals, crashed nodes restart, and the cluster must elect a leader
and commit and apply a new proposal on every member within a bounded number of ticks.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import random
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ram.consensus.core import ConfChangeInProgress, NotLeader, ProposalDropped, RaftCore
from ram.consensus.types import (
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
TICK, DELIVER, FLUSH, PROPOSE, FAULT, RESTART, HEAL, CRASH = range(8)

# Crash points inside the runtime's handling of a Ready.
CRASH_BEFORE_PERSIST, CRASH_AFTER_PERSIST, CRASH_AFTER_SEND, CRASH_MID_APPLY = range(4)
_CRASH_NAMES = ("before-persist", "after-persist", "after-send", "mid-apply")


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


@dataclass
class SimNode:
    id: int
    initial: bool  # member of the bootstrap configuration
    storage: Storage = field(default_factory=Storage)
    core: RaftCore | None = None
    inflight: Ready | None = None
    crash_at: int | None = None
    restarts: int = 0
    mem_commit: int = 0
    leader_term: int = 0
    removed: bool = False
    crash_after_vote: bool = False  # targeted fault: crash right after granting a vote


def _chain(prev: int, e: Entry) -> int:
    return zlib.crc32(e.data, zlib.crc32(e.term.to_bytes(8, "big") + e.index.to_bytes(8, "big"), prev))


def _snap_data(applied: int, chain: int) -> bytes:
    return f"{applied}:{chain}".encode()


def _parse_snap_data(data: bytes) -> tuple[int, int]:
    a, c = data.decode().split(":")
    return int(a), int(c)


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


class Sim:
    """One seeded run over ``n`` nodes for ``steps`` events."""

    def __init__(
        self,
        seed: int,
        n: int,
        steps: int = 2000,
        bug: str | None = None,
        trace: bool = False,
        out: Callable[[str], None] = print,
    ) -> None:
        self.seed = seed
        self.n = n
        self.steps = steps
        self.bug = bug
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
        )
        self.now = 0
        self.seq = 0
        self.queue: list[tuple[int, int, int, Any]] = []
        self.nodes: dict[int, SimNode] = {}
        self.next_id = n + 1
        self.blocked: set[tuple[int, int]] = set()
        self.link_clock: dict[tuple[int, int], int] = {}
        self.initial_conf = ConfState(frozenset(range(1, n + 1)), frozenset())
        self.step_no = 0
        self.history: deque[tuple[int, int, str, Any]] = deque(maxlen=60)
        self.faults_on = True
        self.crash_leader_on_commit = False
        self.kill_next_leaders = 0  # targeted fault: crash the next N new leaders soon after election
        self.proposal_no = 0
        # Global knowledge for the checks.
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.max_committed = 0
        self.registry: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.applied_chain: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}
        self.proposed: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.acked: dict[int, bytes] = {}
        self.stats = {"elections": 0, "commits": 0, "crashes": 0, "snapshots": 0, "conf_changes": 0}
        for i in range(1, n + 1):
            self.nodes[i] = SimNode(i, initial=True)
            self._start(self.nodes[i])
        self._push(1, TICK, None)
        self._push(1, PROPOSE, None)
        self._push(int(self.p.fault_every), FAULT, None)

    # -- plumbing --------------------------------------------------------------------------------

    def _push(self, delay: int, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, kind, payload))

    def _note(self, kind: str, what: Any) -> None:
        item = (self.step_no, self.now, kind, what)
        self.history.append(item)
        if self.trace:
            self.out(self._fmt(item))

    @staticmethod
    def _fmt(item: tuple[int, int, str, Any]) -> str:
        step, now, kind, what = item
        if isinstance(what, Message):
            m = what
            extra = f" ents={[(e.index, e.term) for e in m.entries]}" if m.entries else ""
            snap = f" snap={m.snapshot.index}/{m.snapshot.term}" if m.snapshot else ""
            what = (
                f"{m.type.name} {m.frm}->{m.to} t={m.term} idx={m.index} lt={m.log_term} "
                f"c={m.commit}{' REJECT hint=' + str(m.reject_hint) if m.reject else ''}{extra}{snap}"
            )
        return f"[step {step:5d} t={now:5d}] {kind:8s} {what}"

    def _fail(self, why: str) -> None:
        raise Violation(why)

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
            bug=self.bug,
        )

    def _start(self, node: SimNode) -> None:
        st = node.storage
        persisted = PersistedState(st.hs, st.snapshot, list(st.entries), applied=st.applied)
        node_rng = random.Random(self.rng.getrandbits(32))
        node.core = RaftCore(self._config(node.id), node_rng, persisted, self.initial_conf if node.initial else None)
        node.inflight = None
        node.crash_at = None
        node.mem_commit = node.core.commit_index
        node.leader_term = 0
        self._pump(node)

    def _crash(self, node: SimNode, why: str) -> None:
        self._note("crash", f"node {node.id} ({why})")
        self.stats["crashes"] += 1
        node.core = None
        node.inflight = None
        node.crash_at = None
        node.restarts += 1
        hi = 6 * self.p.election_ticks if self.faults_on else 3
        self._push(self.rng.randrange(1, hi), RESTART, node.id)

    # -- the runtime of one node --------------------------------------------------------------

    def _pump(self, node: SimNode) -> None:
        core = node.core
        if core is None or node.inflight is not None or not core.has_ready():
            return
        rd = core.ready()
        node.inflight = rd
        self._push(self.rng.choice((0, 0, 1)), FLUSH, node.id)

    def _flush(self, node: SimNode) -> None:
        """Handle the outstanding Ready: persist, then send, then apply, then advance."""
        rd = node.inflight
        core = node.core
        if rd is None or core is None:
            return
        crash_at = node.crash_at
        if crash_at == CRASH_BEFORE_PERSIST:
            self._crash(node, "before persisting its Ready")
            return
        self._persist(node, rd)
        if crash_at == CRASH_AFTER_PERSIST:
            self._crash(node, "after persist, before send")
            return
        voted = False
        for m in rd.messages:
            self._check_send(node, m)
            self._send(m)
            if m.type is MessageType.VOTE_RESP and not m.reject:
                voted = True
        if voted and node.crash_after_vote and crash_at is None:
            # The vote reply is out; crash before anything later is persisted, restart quickly.
            node.crash_after_vote = False
            node.crash_at = crash_at = CRASH_BEFORE_PERSIST
            self._note("fault", f"node {node.id} voted and will crash before its next persist")
            crash_at = None  # this Ready completes; the next one is lost
        if crash_at == CRASH_AFTER_SEND:
            self._crash(node, "after send, before apply")
            return
        ents = rd.committed_entries
        for k, e in enumerate(ents):
            if crash_at == CRASH_MID_APPLY and k == len(ents) // 2 and k > 0:
                self._crash(node, f"in the middle of applying (at {e.index})")
                return
            self._apply(node, e)
        core.advance(rd)
        node.inflight = None
        if core.applied_index - core.first_index >= self.p.compact_after:
            st = node.storage
            snap = core.compact(core.applied_index, _snap_data(st.applied, st.chain))
            st.entries = st.entries[snap.index - st.snap_index() :]
            st.snapshot = snap
            self.stats["snapshots"] += 1
        if crash_at is not None:
            self._crash(node, "after advance")
            return
        self._pump(node)

    def _persist(self, node: SimNode, rd: Ready) -> None:
        st = node.storage
        nid = node.id
        if rd.snapshot is not None:
            s = rd.snapshot
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

    def _check_send(self, node: SimNode, m: Message) -> None:
        if m.frm != node.id:
            self._fail(f"node {node.id} sends a message as {m.frm}")
        if m.type is MessageType.VOTE_RESP and not m.reject:
            key = (m.frm, m.term)
            prev = self.votes.get(key)
            if prev is None:
                self.votes[key] = m.to
            elif prev != m.to:
                self._fail(f"node {m.frm} granted two votes in term {m.term}: to {prev} and {m.to}")
        elif m.type is MessageType.APPEND_RESP and not m.reject and m.index > node.storage.last_index():
            self._fail(f"node {m.frm} acks index {m.index} but persisted only {node.storage.last_index()}")

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

    def _send(self, m: Message) -> None:
        rng = self.rng
        p = self.p
        if (m.frm, m.to) in self.blocked or m.to not in self.nodes:
            return
        if p.drop_p and rng.random() < p.drop_p:
            return
        copies = 2 if p.dup_p and rng.random() < p.dup_p else 1
        link = (m.frm, m.to)
        for _ in range(copies):
            if p.long_delay_p and rng.random() < p.long_delay_p:
                # A straggler: overtaken by later messages on the same link (reordering).
                self._push(rng.randrange(3, 4 * p.election_ticks), DELIVER, m)
            else:
                # Links are FIFO otherwise (like a TCP stream), with a random latency.
                at = max(self.now + rng.randrange(3), self.link_clock.get(link, 0))
                self.link_clock[link] = at
                self._push(at - self.now, DELIVER, m)

    # -- checks after each step --------------------------------------------------------------

    def _check_node(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        term = core.term
        if core.role is Role.LEADER and node.leader_term != term:
            node.leader_term = term
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
                    # Its first entry becomes durable but none of its appends leave.
                    node.crash_at = CRASH_AFTER_PERSIST
                elif roll < 0.7:
                    # Cut it off at once: it keeps taking proposals that reach nobody.
                    for o in self.nodes:
                        if o != node.id:
                            self.blocked.add((node.id, o))
                            self.blocked.add((o, node.id))
                    self._push(self.rng.randrange(2, 6 * self.p.election_ticks), HEAL, None)
                else:
                    self._push(self.rng.randrange(0, 3), CRASH, node.id)
            self._note("leader", f"node {node.id} leads term {term} (last={core.last_index})")
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
        c = core.commit_index
        if c < node.mem_commit:
            self._fail(f"node {node.id}: commit index went back {node.mem_commit} -> {c}")
        if c > node.mem_commit:
            if c > core.last_index:
                self._fail(f"node {node.id}: commit {c} beyond its last index {core.last_index}")
            lo = max(node.mem_commit + 1, core.first_index - 1)
            committed = self.committed
            for i in range(lo, c + 1):
                got = core.log_term(i)
                if got is None:
                    continue
                known = committed.get(i)
                if known is None:
                    committed[i] = got
                elif known != got:
                    self._fail(
                        f"committed entry changed: node {node.id} commits index {i} with term {got}, "
                        f"but term {known} was committed there"
                    )
            if core.role is Role.LEADER and self.crash_leader_on_commit and self.faults_on:
                # Adversarial timing: the leader dies right after deciding a commit, before it can
                # tell anyone or send the entries that follow.
                self.crash_leader_on_commit = False
                node.crash_at = CRASH_BEFORE_PERSIST
                self._note("fault", f"leader {node.id} committed {c} and will crash before its next persist")
            if c > self.max_committed:
                self.stats["commits"] += c - self.max_committed
                self.max_committed = c
            node.mem_commit = c

    # -- workload and faults -------------------------------------------------------------------

    def _live(self) -> list[SimNode]:
        return [nd for nd in self.nodes.values() if nd.core is not None]

    def _leaders(self) -> list[SimNode]:
        return [nd for nd in self.nodes.values() if nd.core is not None and nd.core.role is Role.LEADER]

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
            shape = rng.choice(("halves", "isolate_leader", "bridge"))
            leaders = self._leaders()
            if shape == "isolate_leader" and leaders:
                side_a = [rng.choice(leaders).id]
            else:
                k = max(1, len(ids) // 2)
                side_a = rng.sample(ids, k)
            side_b = [i for i in ids if i not in side_a]
            bridge = rng.choice(side_b) if shape == "bridge" and len(side_b) > 1 else None
            for a in side_a:
                for b in side_b:
                    if b != bridge:
                        self.blocked.add((a, b))
                        self.blocked.add((b, a))
            self._note("fault", f"partition {shape}: {sorted(side_a)} | {sorted(side_b)} bridge={bridge}")
            self._push(rng.randrange(2, 10 * self.p.election_ticks), HEAL, None)
        elif roll < 0.32:
            self.kill_next_leaders = rng.randrange(1, 4)
            self.crash_leader_on_commit = rng.random() < 0.5
            self._note("fault", f"the next {self.kill_next_leaders} new leaders will crash soon after election")
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
                self._note("fault", "armed crash-after-vote on some nodes")
                return
            how = rng.randrange(5)
            if how == 4 or node.inflight is None:
                self._crash(node, "now")
            else:
                node.crash_at = how
                self._note("fault", f"node {node.id} will crash {_CRASH_NAMES[how]}")
        elif roll < 0.60:
            self.blocked.clear()
            self._note("fault", "heal all links")
        elif roll < 0.72:
            leaders = self._leaders()
            if leaders:
                ld = rng.choice(leaders)
                assert ld.core is not None
                voters = sorted(ld.core.conf.voters - {ld.id})
                if voters:
                    target = rng.choice(voters)
                    self._note("fault", f"transfer leadership {ld.id} -> {target}")
                    with contextlib.suppress(NotLeader, ValueError):
                        ld.core.transfer_leadership(target)
                    self._pump(ld)
        elif roll < 0.90:
            self._membership()
        else:
            # Message chaos burst: reshuffle the in-flight messages' arrival times.
            self.queue[:] = [(t + (rng.randrange(4) if k == DELIVER else 0), s, k, pl) for (t, s, k, pl) in self.queue]
            heapq.heapify(self.queue)
            self._note("fault", "reorder in-flight messages")

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
            core.propose_conf_change(cc)
        except (NotLeader, ProposalDropped, ConfChangeInProgress, ValueError):
            return
        self.stats["conf_changes"] += 1
        self._note("conf", f"leader {ld.id} proposes {cc.type.name} {cc.node_id}")
        if cc.type is ConfChangeType.ADD_LEARNER:
            self.next_id += 1
            node = SimNode(cc.node_id, initial=False)
            self.nodes[node.id] = node
            self._start(node)
        self._pump(ld)

    # -- main loop -----------------------------------------------------------------------------

    def _event(self, kind: int, payload: Any) -> None:
        if kind == DELIVER:
            m: Message = payload
            node = self.nodes.get(m.to)
            if node is None or node.core is None or (m.frm, m.to) in self.blocked:
                return
            if self.trace:
                self._note("deliver", m)
            else:
                self.history.append((self.step_no, self.now, "deliver", m))
            node.core.step(m)
            self._pump(node)
            self._check_node(node)
        elif kind == TICK:
            # One logical clock tick for every live node (their order is shuffled).
            nodes = [nd for nd in self.nodes.values() if nd.core is not None]
            self.rng.shuffle(nodes)
            for node in nodes:
                if node.core is not None:
                    node.core.tick()
                    self._pump(node)
                    self._check_node(node)
            self._push(1, TICK, None)
        elif kind == FLUSH:
            node = self.nodes[payload]
            self._flush(node)
            self._check_node(node)
        elif kind == PROPOSE:
            self._propose()
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
        elif kind == HEAL:
            self.blocked.clear()
            self._note("heal", "all links")

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
        self.blocked.clear()
        self.p.drop_p = self.p.dup_p = self.p.long_delay_p = 0.0
        for node in self.nodes.values():
            node.crash_after_vote = False
            node.crash_at = None
            if node.core is None:
                self._start(node)
                self._check_node(node)
        self._note("liveness", "healed, all nodes up; waiting for a leader and a commit")
        backlog = max((nd.core.last_index - nd.core.commit_index for nd in self._live() if nd.core), default=0)
        deadline = self.now + 40 * self.p.election_ticks + 50 + 4 * min(backlog, 100)
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


def replay_command(seed: int, nodes: int, steps: int, bug: str | None) -> str:
    cmd = f"python -m ram.consensus.sim --seeds 1 --seed-start {seed} --nodes {nodes} --steps {steps} --trace"
    return cmd + (f" --bug {bug}" if bug else "")


def run_seed(seed: int, nodes: int, steps: int, bug: str | None = None, trace: bool = False) -> SeedResult:
    sim = Sim(seed, nodes, steps, bug=bug, trace=trace)
    try:
        sim.run()
    except Violation as exc:
        return SeedResult(seed, nodes, sim.step_no, str(exc), sim.trace_tail())
    return SeedResult(seed, nodes, sim.step_no, None, [])


def sizes_for(seed: int, nodes: int | None) -> int:
    return nodes if nodes else (3, 5, 7)[seed % 3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ram.consensus.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=None, help="cluster size (default: cycle 3, 5, 7)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--bug", default=None, help="switch on one deliberate bug in the core")
    ap.add_argument("--keep-going", action="store_true", help="run all seeds even after a violation")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    violations = 0
    total_steps = 0
    first_bad: int | None = None
    ran = 0
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        n = sizes_for(seed, args.nodes)
        res = run_seed(seed, n, args.steps, args.bug, args.trace)
        ran += 1
        total_steps += res.steps
        if res.violation is not None:
            violations += 1
            if first_bad is None:
                first_bad = seed
            print(f"VIOLATION seed={seed} nodes={n}: {res.violation}")
            print("last steps:")
            for line in res.trace:
                print("  " + line)
            print("replay: " + replay_command(seed, n, args.steps, args.bug))
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
        "bug": args.bug,
    }
    print(json.dumps(summary))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
