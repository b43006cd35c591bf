"""Leader election (Raft paper 5.1, 5.2, 5.4.1), pre-vote and check-quorum, as scripted scenarios."""

from __future__ import annotations

import random

from ram.consensus.core import RaftCore
from ram.consensus.types import (
    TRANSFER_CONTEXT,
    Message,
    MessageType,
    PersistedState,
    RaftConfig,
    Role,
)
from tests.consensus.helpers import Net, conf_of

MT = MessageType


def test_first_election_yields_exactly_one_leader_all_agree() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    assert net.leaders() == [1]
    term = net.cores[1].term
    for nid in (2, 3):
        assert net.cores[nid].role is Role.FOLLOWER
        assert net.cores[nid].term == term
        assert net.cores[nid].leader_id == 1
        assert net.stores[nid].hs.vote == 1  # the vote is durable


def test_election_timeout_is_randomized_in_range() -> None:
    core = RaftCore(RaftConfig(1, election_ticks=10), random.Random(5), PersistedState(), conf_of([1, 2, 3]))
    seen = set()
    for _ in range(200):
        core._reset_randomized_timeout()
        seen.add(core._randomized_timeout)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_higher_term_message_updates_term_and_steps_down_leader() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    leader = net.cores[1]
    t = leader.term
    leader.step(Message(MT.APPEND_RESP, 2, 1, t + 5, index=0))
    assert leader.term == t + 5
    assert leader.role is Role.FOLLOWER
    assert leader.vote == 0
    # A follower seeing a newer leader's append adopts its term and leader.
    f = net.cores[3]
    f.step(Message(MT.HEARTBEAT, 2, 3, t + 7))
    assert f.term == t + 7 and f.leader_id == 2


def test_stale_term_messages_are_ignored() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    f = net.cores[2]
    t = f.term
    last = f.last_index
    from tests.consensus.helpers import entries_with_terms

    stale = Message(
        MT.APPEND,
        3,
        2,
        t - 1,
        log_term=f.log_term(last) or 0,
        index=last,
        entries=tuple(entries_with_terms([t - 1], start=last + 1)),
        commit=last + 1,
    )
    f.step(stale)
    assert f.last_index == last and f.term == t and f.leader_id == 1
    f.step(Message(MT.VOTE, 3, 2, t - 1, log_term=99, index=99))
    assert f.vote == 1  # no vote change from a stale candidate
    net.process(2)
    assert not any(m.type is MT.VOTE_RESP and not m.reject for m in net.queue if m.frm == 2)


def test_one_vote_per_term() -> None:
    core = RaftCore(RaftConfig(1, election_ticks=10), random.Random(1), PersistedState(), conf_of([1, 2, 3]))
    core.step(Message(MT.VOTE, 2, 1, 5, log_term=1, index=3))
    assert core.vote == 2
    core.step(Message(MT.VOTE, 3, 1, 5, log_term=1, index=3))
    assert core.vote == 2
    core.step(Message(MT.VOTE, 2, 1, 5, log_term=1, index=3))  # a retransmission is granted again
    rd = core.ready()
    resps = [(m.to, m.reject) for m in rd.messages if m.type is MT.VOTE_RESP]
    assert resps == [(2, False), (3, True), (2, False)]
    assert rd.hard_state is not None and rd.hard_state.vote == 2 and rd.hard_state.term == 5


def test_vote_requires_up_to_date_log() -> None:
    # Node 1 holds entries of term 3; candidates with an older last term or shorter log are refused.
    net = Net([1, 2, 3], logs={1: [1, 3, 3], 2: [1, 3, 3], 3: [1, 3, 3]}, terms={1: 3, 2: 3, 3: 3})
    c = net.cores[1]
    c.step(Message(MT.VOTE, 2, 1, 4, log_term=2, index=10))  # lower last term, longer log
    assert c.vote == 0
    c.step(Message(MT.VOTE, 3, 1, 5, log_term=3, index=2))  # same last term, shorter log
    assert c.vote == 0
    c.step(Message(MT.VOTE, 3, 1, 6, log_term=3, index=3))  # equal: granted
    assert c.vote == 3


def test_candidate_with_stale_log_cannot_win() -> None:
    net = Net([1, 2, 3], logs={1: [1], 2: [1, 2], 3: [1, 2]}, terms={1: 2, 2: 2, 3: 2}, pre_vote=False)
    net.campaign(1)
    assert net.cores[1].role is not Role.LEADER
    net.elect(2)


def test_dueling_candidates_without_prevote_resolve() -> None:
    net = Net([1, 2, 3], pre_vote=False, check_quorum=False)
    # 1 and 3 become candidates in the same term; 2 grants only the first request it sees.
    net.start_campaign(1)
    net.start_campaign(3)
    assert net.cores[1].role is Role.CANDIDATE and net.cores[3].role is Role.CANDIDATE
    assert net.cores[1].term == net.cores[3].term
    net.deliver()
    assert net.leaders() == [1]  # 2 voted for 1 first; 3 lost this term
    assert net.role(3) is Role.FOLLOWER
    net.tick_all(40)
    assert len(net.leaders()) == 1


def test_dueling_precandidates_with_prevote_do_not_inflate_terms() -> None:
    net = Net([1, 2, 3], pre_vote=True)
    t0 = net.cores[1].term
    net.start_campaign(1)
    net.start_campaign(3)
    assert net.cores[1].role is Role.PRE_CANDIDATE and net.cores[3].role is Role.PRE_CANDIDATE
    assert net.cores[1].term == t0  # pre-vote does not bump the term
    net.deliver()
    net.tick_all(40)
    assert len(net.leaders()) == 1


def test_prevote_stops_disruptive_rejoining_node() -> None:
    net = Net([1, 2, 3], pre_vote=True, check_quorum=True)
    net.elect(1)
    term = net.cores[1].term
    net.isolate(3)
    for _ in range(100):
        net.tick(3)
        net.tick(1)
        net.tick(2)
        net.deliver()
    assert net.cores[3].term == term  # pre-votes never succeeded, so the term never grew
    net.heal()
    net.tick_all(50)
    assert net.leaders() == [1] and net.cores[1].term == term


def test_without_prevote_rejoining_node_disrupts() -> None:
    """Control for the test above: the same script without pre-vote bumps terms."""
    net = Net([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    term = net.cores[1].term
    net.isolate(3)
    net.tick(3, 100)
    assert net.cores[3].term > term


def test_leader_lease_refuses_votes_but_not_transfer_votes() -> None:
    net = Net([1, 2, 3], check_quorum=True)
    net.elect(1)
    f = net.cores[2]
    t = f.term
    f.step(Message(MT.VOTE, 3, 2, t + 1, log_term=99, index=99))
    assert f.term == t and f.vote == 1  # ignored: heard from a live leader recently
    f.step(Message(MT.VOTE, 3, 2, t + 1, log_term=99, index=99, context=TRANSFER_CONTEXT))
    assert f.term == t + 1 and f.vote == 3


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    net = Net([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.isolate(1)
    for _ in range(25):
        net.tick(1)
        net.deliver()
    assert net.cores[1].role is Role.FOLLOWER


def test_without_check_quorum_isolated_leader_stays() -> None:
    net = Net([1, 2, 3], check_quorum=False)
    net.elect(1)
    net.isolate(1)
    for _ in range(25):
        net.tick(1)
        net.deliver()
    assert net.cores[1].role is Role.LEADER


def test_learners_never_campaign_and_do_not_count() -> None:
    net = Net([1, 2], learners=[3])
    assert net.cores[3].is_learner
    net.tick(3, 200)
    assert net.cores[3].role is Role.FOLLOWER and net.cores[3].term == 1
    net.elect(1)
    net.crash(2)
    # Only voter 1 left alive: the learner's acks must not make a majority of {1, 2}.
    idx, _ = net.propose(1, b"x")
    net.deliver()
    assert net.cores[3].last_index >= idx
    assert net.cores[1].commit_index < idx


def test_vote_is_durable_before_the_reply() -> None:
    core = RaftCore(RaftConfig(1), random.Random(1), PersistedState(), conf_of([1, 2, 3]))
    core.ready()  # bootstrap batch
    core.advance(core._outstanding)  # type: ignore[arg-type]
    core.step(Message(MT.VOTE, 2, 1, 3, log_term=1, index=3))
    rd = core.ready()
    assert any(m.type is MT.VOTE_RESP and not m.reject for m in rd.messages)
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (3, 2)
