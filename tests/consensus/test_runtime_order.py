"""The runtime's send order (``readyplan.split_sends``) and the bug the persistence checker found in it.

Before, ``runtime/node.py`` sent every message of a leader's Ready before writing it. A leader that
wins alone (a single voter, e.g. a one-node cluster growing by learners) becomes leader inside the
Ready that carries its new term: its appends left before that term was durable. A crash in between
brought it back in the previous term; it won the same term again and appended different entries at
the same (index, term), which the learner already held: both committed, diverged.
"""

from __future__ import annotations

import random

from ram.consensus.core import RaftCore
from ram.consensus.readyplan import split_sends
from ram.consensus.sim import SplitSends, run_seed
from ram.consensus.types import Entry, Message, PersistedState, RaftConfig, Ready, Role
from tests.consensus.helpers import conf_of


def old_runtime_order(rd: Ready) -> tuple[list[Message], list[Message]]:
    """The runtime's order before issue #12: a leader's whole Ready leaves before the write."""
    if rd.role is Role.LEADER and rd.snapshot is None:
        return list(rd.messages), []
    return [], list(rd.messages)


def single_voter_crash_before_persist(split: SplitSends) -> tuple[list[Entry], list[Entry]]:
    """Voter 1 with learner 2: 1 wins alone and proposes x, sends what ``split`` lets leave early,
    crashes before its write, comes back, wins again and proposes y. Returns both committed logs."""
    stores: dict[int, PersistedState] = {1: PersistedState(), 2: PersistedState()}

    def persist(nid: int, rd: Ready) -> None:
        st = stores[nid]
        ents = list(st.entries)
        if rd.entries:
            ents = [e for e in ents if e.index < rd.entries[0].index] + list(rd.entries)
        stores[nid] = PersistedState(rd.hard_state or st.hard_state, st.snapshot, ents, st.applied)

    def handle(c: RaftCore, nid: int) -> list[Message]:
        rd = c.ready()
        early, late = split(rd)
        persist(nid, rd)
        c.advance(rd)
        return early + late

    def cfg(nid: int) -> RaftConfig:
        return RaftConfig(nid, election_ticks=10, heartbeat_ticks=1)

    leader = RaftCore(cfg(1), random.Random(1), PersistedState(), conf_of([1], [2]))
    learner = RaftCore(cfg(2), random.Random(2), PersistedState(), conf_of([1], [2]))
    handle(leader, 1)
    handle(learner, 2)
    while leader.role is not Role.LEADER:
        leader.tick()
    leader.propose(b"x")
    rd = leader.ready()
    early, _ = split(rd)
    for m in early:  # out before the write ...
        learner.step(m)
    handle(learner, 2)
    leader = RaftCore(cfg(1), random.Random(3), stores[1])  # ... which the crash lost
    while leader.role is not Role.LEADER:
        leader.tick()
    leader.propose(b"y")
    out = handle(leader, 1)
    for _ in range(4):
        for m in out:
            learner.step(m)
        for m in handle(learner, 2):
            leader.step(m)
        leader.tick()
        out = handle(leader, 1)
    return leader.log_entries(1, leader.commit_index + 1), learner.log_entries(1, learner.commit_index + 1)


def test_old_runtime_order_let_a_single_voter_commit_two_histories() -> None:
    leader_log, learner_log = single_voter_crash_before_persist(old_runtime_order)
    assert leader_log[-1].data == b"y" and learner_log[-1].data == b"x"
    assert (leader_log[-1].index, leader_log[-1].term) == (learner_log[-1].index, learner_log[-1].term)


def test_shared_order_keeps_a_single_voter_consistent() -> None:
    leader_log, learner_log = single_voter_crash_before_persist(split_sends)
    assert leader_log == learner_log
    assert leader_log[-1].data == b"y"


def test_sim_single_voter_seeds_clean() -> None:
    failures = [(s, r.violation) for s in range(40) if (r := run_seed(s, 1, 2000)).violation is not None]
    assert not failures, failures


def test_sim_persistence_checker_catches_the_old_runtime_order() -> None:
    for seed in range(10):
        res = run_seed(seed, 1, 2000, split=old_runtime_order)
        if res.violation is not None:
            assert "persistence contract" in res.violation and "durable term" in res.violation, res.violation
            return
    raise AssertionError("the old runtime order was not caught in 10 single-voter seeds")
