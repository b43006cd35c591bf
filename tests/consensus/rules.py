"""One check per rule of the Raft paper's Figure 2, per membership rule and per persistence rule.

Each ``check_*`` takes a core class, drives a small scripted scenario and raises AssertionError
when the rule is broken. ``test_figure2.py`` runs every check on the shipped ``RaftCore``;
``test_bugs.py`` runs the relevant checks on the deliberate bugs of ``bugs.py`` and requires them to
fail, which shows that each check is sharp enough to see its rule broken. ``RULES.md`` maps rules to
checks.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ram.consensus.core import ConfChangeInProgress, RaftCore
from ram.consensus.readyplan import split_sends
from ram.consensus.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    RaftConfig,
    Ready,
    Role,
    Snapshot,
)
from tests.consensus.helpers import Net, base_snapshot, conf_of, entries_with_terms

MT = MessageType
CC = ConfChangeType
Core = type[RaftCore]


# -- helpers ------------------------------------------------------------------------------------


def make(
    core: Core,
    *,
    nid: int = 1,
    voters: tuple[int, ...] = (1, 2, 3),
    learners: tuple[int, ...] = (),
    terms: list[int] | None = None,
    term: int | None = None,
    vote: int = NONE,
    commit: int = 0,
    **cfg: object,
) -> RaftCore:
    """A node restarted from a hand-made durable state: membership in an index-0 snapshot, a log
    with the given entry terms, and (term, vote, commit)."""
    ents = entries_with_terms(terms or [])
    t = term if term is not None else max([e.term for e in ents] or [1])
    ps = PersistedState(HardState(t, vote, commit), base_snapshot(voters, learners), ents, commit)
    kw: dict[str, object] = {"election_ticks": 10, "heartbeat_ticks": 1}
    kw.update(cfg)
    return core(RaftConfig(nid, **kw), random.Random(7), ps)  # type: ignore[arg-type]


def drain(c: RaftCore) -> Ready:
    """Take the pending Ready and report it handled (persisted, sent, applied)."""
    rd = c.ready()
    c.advance(rd)
    return rd


def msgs(rd: Ready, t: MessageType) -> list[Message]:
    return [m for m in rd.messages if m.type is t]


def append(frm: int, to: int, term: int, prev: int, prev_term: int, ents: list[Entry], commit: int) -> Message:
    return Message(MT.APPEND, frm, to, term, log_term=prev_term, index=prev, entries=tuple(ents), commit=commit)


def terms_of(c: RaftCore) -> list[int]:
    return [c.log_term(i) or 0 for i in range(c.first_index, c.last_index + 1)]


def tick_until(c: RaftCore, pred: Callable[[], bool], limit: int = 100) -> int:
    for k in range(limit):
        if pred():
            return k
        c.tick()
    raise AssertionError("condition never reached")


def cc_entry(index: int, term: int, cc: ConfChange) -> Entry:
    return Entry(index, term, EntryType.CONF_CHANGE, cc.encode())


# -- RequestVote receiver -----------------------------------------------------------------------


def check_rv1_reject_lower_term(core: Core) -> None:
    """RequestVote 1: reply false if term < currentTerm."""
    c = make(core, terms=[1, 1], term=5)
    drain(c)
    c.step(Message(MT.VOTE, 2, 1, 4, log_term=9, index=9))
    rd = drain(c)
    assert not [m for m in msgs(rd, MT.VOTE_RESP) if not m.reject], "granted a vote to a lower-term candidate"
    assert (c.term, c.vote) == (5, NONE)


def check_rv2_one_vote_per_term(core: Core) -> None:
    """RequestVote 2: grant only if votedFor is null or the candidate (one vote per term)."""
    c = make(core, terms=[1], term=1)
    drain(c)
    c.step(Message(MT.VOTE, 2, 1, 2, log_term=1, index=1))
    c.step(Message(MT.VOTE, 3, 1, 2, log_term=1, index=5))
    c.step(Message(MT.VOTE, 2, 1, 2, log_term=1, index=1))  # a retransmission: granted again
    rd = drain(c)
    got = [(m.to, m.reject) for m in msgs(rd, MT.VOTE_RESP)]
    assert got == [(2, False), (3, True), (2, False)], got
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (2, 2)


def check_rv2_up_to_date(core: Core) -> None:
    """RequestVote 2: grant only to a candidate whose log is at least as up-to-date (5.4.1)."""
    c = make(core, terms=[1, 3, 3], term=3)
    drain(c)
    c.step(Message(MT.VOTE, 2, 1, 4, log_term=2, index=10))  # older last term, longer log
    c.step(Message(MT.VOTE, 3, 1, 5, log_term=3, index=2))  # same last term, shorter log
    assert c.vote == NONE, "voted for a candidate with a less complete log"
    c.step(Message(MT.VOTE, 3, 1, 6, log_term=3, index=3))
    assert c.vote == 3


# -- AppendEntries receiver ---------------------------------------------------------------------


def check_ae1_reject_lower_term(core: Core) -> None:
    """AppendEntries 1: reply false if term < currentTerm (and tell the stale leader the term)."""
    c = make(core, terms=[1, 1], term=3)
    drain(c)
    c.step(append(2, 1, 2, 2, 1, entries_with_terms([2], start=3), commit=3))
    rd = drain(c)
    assert c.last_index == 2 and c.commit_index == 0, "accepted entries from a stale leader"
    resp = msgs(rd, MT.APPEND_RESP)
    assert resp and all(m.term == 3 and m.index == 0 for m in resp), resp


def check_ae2_prev_mismatch(core: Core) -> None:
    """AppendEntries 2: reply false if the log has no entry at prevLogIndex with prevLogTerm."""
    c = make(core, terms=[1, 1], term=2)
    drain(c)
    c.step(append(2, 1, 2, 2, 2, entries_with_terms([2], start=3), commit=0))  # term differs at 2
    c.step(append(2, 1, 2, 5, 2, entries_with_terms([2], start=6), commit=0))  # no entry at 5
    rd = drain(c)
    assert terms_of(c) == [1, 1], terms_of(c)
    resp = msgs(rd, MT.APPEND_RESP)
    assert len(resp) == 2 and all(m.reject for m in resp), resp


def check_ae_refuses_entries_beyond_leader_term(core: Core) -> None:
    """AppendEntries: entries of a term newer than the sender's cannot come from a leader; refuse."""
    c = make(core, terms=[1], term=2)
    drain(c)
    c.step(append(2, 1, 2, 1, 1, entries_with_terms([3], start=2), commit=0))
    assert c.last_index == 1, "accepted an entry of term 3 from the leader of term 2"


def check_ae3_conflict_truncates(core: Core) -> None:
    """AppendEntries 3: a conflicting entry and all that follow it are deleted."""
    c = make(core, terms=[1, 1, 2, 2, 2], term=2)
    drain(c)
    c.step(append(2, 1, 3, 2, 1, entries_with_terms([3], start=3), commit=0))
    rd = drain(c)
    assert terms_of(c) == [1, 1, 3], terms_of(c)
    assert [(e.index, e.term) for e in rd.entries] == [(3, 3)]


def check_ae3_no_truncate_without_conflict(core: Core) -> None:
    """AppendEntries 3 (only on conflict): an old, matching append keeps the entries after it."""
    c = make(core, terms=[1, 1, 1, 1], term=1)
    drain(c)
    c.step(append(2, 1, 1, 1, 1, entries_with_terms([1], start=2), commit=0))
    rd = drain(c)
    assert terms_of(c) == [1, 1, 1, 1], terms_of(c)
    assert not rd.entries
    assert [m.index for m in msgs(rd, MT.APPEND_RESP)] == [2]


def check_ae4_append_new(core: Core) -> None:
    """AppendEntries 4: entries not already in the log are appended (and persisted before the ack)."""
    c = make(core, terms=[1], term=2)
    drain(c)
    c.step(append(2, 1, 2, 1, 1, entries_with_terms([2, 2], start=2), commit=0))
    rd = c.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(2, 2), (3, 2)]
    _, late = split_sends(rd)
    assert [m.index for m in late if m.type is MT.APPEND_RESP] == [3]
    c.advance(rd)
    assert terms_of(c) == [1, 2, 2]


def check_ae5_commit_min_last_new(core: Core) -> None:
    """AppendEntries 5: commitIndex = min(leaderCommit, index of last new entry).

    The follower holds a stale suffix (3, 4 of term 2) that this leader has not overwritten yet;
    an append verifying only up to index 2 must not commit 3 or 4, whatever leaderCommit says.
    """
    c = make(core, terms=[1, 1, 2, 2], term=2)
    drain(c)
    c.step(append(2, 1, 3, 1, 1, entries_with_terms([1], start=2), commit=6))
    assert c.commit_index == 2, f"committed {c.commit_index} past the last verified entry 2"
    c.step(append(2, 1, 3, 2, 1, [], commit=6))
    assert c.commit_index == 2, f"an empty append verifying 2 committed {c.commit_index}"
    rd = drain(c)
    assert all(e.index <= 2 for e in rd.committed_entries)


def check_ae5_commit_never_back(core: Core) -> None:
    """AppendEntries 5 (leaderCommit > commitIndex only): a lower leaderCommit never lowers it."""
    c = make(core, terms=[1, 1, 1], term=1, commit=3)
    drain(c)
    c.step(append(2, 1, 1, 3, 1, [], commit=1))
    assert c.commit_index == 3


# -- rules for all servers ----------------------------------------------------------------------


def check_all_apply_committed_in_order(core: Core) -> None:
    """All servers 1: apply log[lastApplied+1..commitIndex] in order, never past commitIndex."""
    c = make(core, terms=[1], term=1, commit=1)
    drain(c)
    c.step(append(2, 1, 1, 1, 1, entries_with_terms([1, 1, 1], start=2), commit=2))
    rd = drain(c)
    assert [e.index for e in rd.committed_entries] == [2], "applied past the commit index"
    c.step(append(2, 1, 1, 4, 1, [], commit=4))
    rd = drain(c)
    assert [e.index for e in rd.committed_entries] == [3, 4]


def check_all_higher_term_steps_down(core: Core) -> None:
    """All servers 2: a higher term in any request or response -> adopt it, become follower."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    leader = net.cores[1]
    t = leader.term
    leader.step(Message(MT.APPEND_RESP, 2, 1, t + 3, index=0))
    assert (leader.term, leader.role, leader.vote) == (t + 3, Role.FOLLOWER, NONE)
    c = make(core, terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term + 2, reject=True))
    assert c.role is Role.FOLLOWER and c.term == 4
    c = make(core, terms=[1], term=1, pre_vote=True)
    tick_until(c, lambda: c.role is Role.PRE_CANDIDATE)
    c.step(Message(MT.PRE_VOTE_RESP, 2, 1, 6, reject=True))  # the voter is in a later term
    assert (c.role, c.term) == (Role.FOLLOWER, 6), "ignored a higher term in a pre-vote rejection"


# -- rules for followers ------------------------------------------------------------------------


def check_follower_timeout_campaigns(core: Core) -> None:
    """Followers 2: without heartbeats for an election timeout, start an election (not before)."""
    c = make(core, terms=[1], term=1, pre_vote=False)
    drain(c)
    k = tick_until(c, lambda: c.role is not Role.FOLLOWER)
    assert 10 <= k < 20, k
    assert c.role is Role.CANDIDATE


def check_follower_heartbeats_and_votes_reset_timer(core: Core) -> None:
    """Followers 2: AppendEntries from the leader, or granting a vote, resets the election timer."""
    c = make(core, terms=[1], term=2, pre_vote=False)
    drain(c)
    for _ in range(60):
        c.tick()
        c.step(Message(MT.HEARTBEAT, 2, 1, 2, commit=0))
    assert c.role is Role.FOLLOWER
    # Granting a vote in the current term (no term change to reset the timer on its own).
    c = make(core, terms=[1], term=3, pre_vote=False, check_quorum=False)
    drain(c)
    timeout = c._randomized_timeout
    for _ in range(timeout - 1):
        c.tick()
    c.step(Message(MT.VOTE, 3, 1, 3, log_term=1, index=1))
    assert c.vote == 3 and c.term == 3
    for _ in range(timeout - 1):
        c.tick()
    assert c.role is Role.FOLLOWER, "campaigned right after granting a vote"


# -- rules for candidates -----------------------------------------------------------------------


def check_candidate_conversion(core: Core) -> None:
    """Candidates 1: on conversion, term+1, vote for self, ask every other voter (durably first)."""
    c = make(core, voters=(1, 2, 3, 4, 5), terms=[1, 2], term=2, pre_vote=False)
    drain(c)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    rd = c.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (3, 1)
    votes = msgs(rd, MT.VOTE)
    assert sorted(m.to for m in votes) == [2, 3, 4, 5]
    assert all((m.term, m.index, m.log_term) == (3, 2, 2) for m in votes)
    early, _ = split_sends(rd)
    assert not early, "vote requests left before the term and self-vote were durable"


def check_candidate_majority_wins(core: Core) -> None:
    """Candidates 2: votes from a majority -> leader; fewer -> not leader."""
    c = make(core, voters=(1, 2, 3, 4, 5), terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    drain(c)
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term))
    assert c.role is Role.CANDIDATE, "leader with 2 of 5 votes"
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term))  # a duplicate vote counts once
    assert c.role is Role.CANDIDATE, "a duplicated vote counted twice"
    c.step(Message(MT.VOTE_RESP, 3, 1, c.term))
    assert c.role is Role.LEADER


def check_candidate_yields_to_leader(core: Core) -> None:
    """Candidates 3: AppendEntries from a leader of the same term -> follower."""
    c = make(core, terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    c.step(append(2, 1, c.term, 1, 1, [], commit=0))
    assert c.role is Role.FOLLOWER and c.leader_id == 2


def check_candidate_retries(core: Core) -> None:
    """Candidates 4: if the election times out, start a new one (a new term)."""
    c = make(core, terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    t = c.term
    tick_until(c, lambda: c.term > t, limit=40)
    assert c.role is Role.CANDIDATE and c.term == t + 1


def check_prevote_counts_only_current_campaign(core: Core) -> None:
    """Pre-vote: a grant answers one pre-campaign (its proposed term); older grants do not count."""
    c = make(core, voters=(1, 2, 3), terms=[1], term=3, pre_vote=True)
    tick_until(c, lambda: c.role is Role.PRE_CANDIDATE)
    c.step(Message(MT.PRE_VOTE_RESP, 2, 1, 3))  # granted for term 3: an older pre-campaign
    assert c.role is Role.PRE_CANDIDATE and c.term == 3, "counted a pre-vote for another pre-campaign"
    c.step(Message(MT.PRE_VOTE_RESP, 2, 1, 4))
    assert c.role is Role.CANDIDATE and c.term == 4


def check_only_candidates_count_votes(core: Core) -> None:
    """Candidates 2 (only candidates): late vote answers do not make a follower leader."""
    c = make(core, voters=(1, 2, 3), terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    c.step(append(3, 1, c.term, 1, 1, [], commit=0))  # 3 won this term; we follow it
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term))
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term, reject=True))
    assert c.role is Role.FOLLOWER and c.leader_id == 3


# -- rules for leaders --------------------------------------------------------------------------


def check_leader_initial_append_and_heartbeats(core: Core) -> None:
    """Leaders 1: on election, an append (its term's first entry) to every server; heartbeats when idle."""
    c = make(core, voters=(1, 2, 3), learners=(4,), terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    drain(c)
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term))
    assert c.role is Role.LEADER
    rd = drain(c)
    apps = msgs(rd, MT.APPEND)
    assert sorted(m.to for m in apps) == [2, 3, 4]
    assert all([(e.index, e.term, e.data) for e in m.entries] == [(2, 2, b"")] for m in apps)
    c.tick()
    rd = drain(c)
    assert sorted(m.to for m in msgs(rd, MT.HEARTBEAT)) == [2, 3, 4]


def check_leader_appends_and_answers_after_apply(core: Core) -> None:
    """Leaders 2: a command is appended locally, and applied only once committed."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    net.isolate(2)
    net.isolate(3)
    idx, _ = net.propose(1, b"cmd")
    assert net.cores[1].last_index == idx and net.cores[1].log_term(idx) == net.cores[1].term
    net.deliver()
    assert b"cmd" not in net.applied_data(1), "applied before a majority held it"
    net.heal()
    net.tick_all(3)
    assert net.applied_data(1)[-1] == b"cmd"


def check_leader_heartbeat_commit_within_match(core: Core) -> None:
    """Leaders: a heartbeat tells a follower a commit no further than that follower's match (what
    it holds beyond may be a stale suffix; heartbeats carry no entries to verify it)."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    net.isolate(3)
    for k in range(4):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    leader = net.cores[1]
    match3 = leader.progress[3].match
    assert leader.commit_index > match3
    leader.tick()
    rd = drain(leader)
    beats = [m for m in msgs(rd, MT.HEARTBEAT) if m.to == 3]
    assert beats and all(m.commit <= match3 for m in beats), (match3, beats)


def check_leader_next_match(core: Core) -> None:
    """Leaders 3: success -> matchIndex/nextIndex advance; inconsistency -> nextIndex back, retry."""
    net = Net([1, 2, 3], core=core, logs={1: [1, 1, 1], 2: [1, 1, 1], 3: [1]}, terms={1: 1, 2: 1, 3: 1})
    net.elect(1)
    net.tick_all(3)
    leader = net.cores[1]
    for nid in (2, 3):
        assert leader.progress[nid].match == leader.last_index, (nid, leader.progress[nid])
        assert leader.progress[nid].next == leader.last_index + 1
    assert terms_of(net.cores[3]) == terms_of(leader)
    rejects = [m for m in net.sent if m.type is MT.APPEND_RESP and m.reject and m.frm == 3]
    assert rejects, "node 3 was never probed below its log end"


def check_leader_commit_majority_current_term(core: Core) -> None:
    """Leaders 4: commit N once a majority matches N and log[N].term == currentTerm."""
    net = Net([1, 2, 3, 4, 5], core=core)
    net.elect(1)
    net.tick_all(2)
    net.isolate(3)
    net.isolate(4)
    net.isolate(5)
    idx, _ = net.propose(1, b"x")
    net.deliver()
    assert net.cores[1].commit_index < idx, "committed with 2 of 5"
    net.heal()
    net.isolate(4)
    net.isolate(5)
    net.tick_all(2)
    assert net.cores[1].commit_index >= idx


def check_leader_counts_self_only_durable(core: Core) -> None:
    """Leaders 4 + persistence: the leader counts its own entries only once they are durable.

    The leader's entry x is out for writing (Ready taken, not advanced) when one follower acks it:
    {follower} is no majority of 3 until the leader's own write is reported durable.
    """
    c = make(core, voters=(1, 2, 3), terms=[1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    drain(c)
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term))
    drain(c)
    c.step(Message(MT.APPEND_RESP, 2, 1, c.term, index=c.last_index))
    drain(c)
    idx, _ = c.propose(b"x")
    rd = c.ready()
    c.step(Message(MT.APPEND_RESP, 2, 1, c.term, index=idx))
    assert c.commit_index < idx, "counted its own entry before advance() reported it durable"
    c.advance(rd)
    assert c.commit_index == idx


def check_stable_drops_on_overwrite(core: Core) -> None:
    """Persistence: entries that replace durable ones are not durable until their Ready is advanced;
    the index the node would count for itself as leader (``stable_index``) drops below them."""
    c = make(core, terms=[1, 1, 2, 2, 2], term=2)
    drain(c)
    assert c.stable_index == 5
    c.step(append(2, 1, 3, 2, 1, entries_with_terms([3, 3], start=3), commit=0))
    assert c.stable_index <= 2, f"overwritten entries still counted durable up to {c.stable_index}"
    drain(c)
    assert c.stable_index == 4
    snap = Snapshot(9, 3, conf_of([1, 2, 3]), b"app@9")
    c.step(Message(MT.SNAPSHOT, 2, 1, 3, snapshot=snap))
    assert c.stable_index < 9, "a snapshot counted durable before its Ready was written"
    drain(c)
    assert c.stable_index == 9


def check_leader_old_term_not_committed_by_counting(core: Core) -> None:
    """Leaders 4 (Figure 8): an old-term entry on a majority is not committed by counting."""
    from tests.consensus.test_scenarios_replication import figure8_commit_after_majority

    before, after = figure8_commit_after_majority(core=core)
    assert before < 2, "committed an old-term entry by counting replicas"
    assert after >= 3


def check_check_quorum_steps_down(core: Core) -> None:
    """Leaders (check-quorum): cut off from its quorum, the leader steps down within 2 timeouts."""
    net = Net([1, 2, 3], core=core, check_quorum=True)
    net.elect(1)
    net.isolate(1)
    for _ in range(2 * 10 + 1):
        net.tick(1)
        net.deliver()
    assert net.cores[1].role is Role.FOLLOWER, "isolated leader still leads after two election timeouts"


# -- persistence contract -----------------------------------------------------------------------


def check_vote_durable_before_reply(core: Core) -> None:
    """Persistent state: the vote is in the hard state of the batch whose messages carry the reply,
    also when the term was already on disk."""
    for same_term in (False, True):
        c = make(core, terms=[1], term=3 if same_term else 2)
        drain(c)
        c.step(Message(MT.VOTE, 2, 1, 3, log_term=1, index=1))
        rd = c.ready()
        assert any(m.type is MT.VOTE_RESP and not m.reject for m in rd.messages)
        assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (3, 2), (
            same_term,
            rd.hard_state,
        )
        early, _ = split_sends(rd)
        assert not [m for m in early if m.type is MT.VOTE_RESP]


def check_stale_ack_dropped(core: Core) -> None:
    """Stale acknowledgements: an ack queued for a stale leader's entries that a newer leader
    overwrote before the ack left must not leave (the entries will never be durable)."""
    c = make(core, voters=(1, 2, 3, 4, 5), terms=[1, 1], term=2, vote=NONE)
    drain(c)
    c.step(append(9, 1, 2, 0, 0, [], commit=0))  # a Ready is outstanding while the rest arrives
    outstanding = c.ready()
    c.step(append(2, 1, 2, 2, 1, entries_with_terms([2], start=3), commit=0))  # stale leader 2: ack 3
    c.step(append(2, 1, 2, 3, 2, entries_with_terms([2], start=4), commit=0))  # ... and ack 4
    c.step(append(3, 1, 3, 2, 1, entries_with_terms([3], start=3), commit=0))  # leader 3 overwrites 3..
    c.advance(outstanding)
    rd = c.ready()
    acks = [(m.to, m.index) for m in msgs(rd, MT.APPEND_RESP) if not m.reject]
    stale = [a for a in acks if a[0] == 2]
    assert not stale, f"acked overwritten entries to the stale leader: {stale}"
    assert (3, 3) in acks
    # The same when the overwrite starts at the follower's very last entry.
    c = make(core, voters=(1, 2, 3, 4, 5), terms=[1, 1], term=2, vote=NONE)
    drain(c)
    c.step(append(9, 1, 2, 0, 0, [], commit=0))
    outstanding = c.ready()
    c.step(append(2, 1, 2, 2, 1, entries_with_terms([2], start=3), commit=0))  # ack 3 (= last)
    c.step(append(3, 1, 3, 2, 1, entries_with_terms([3, 3], start=3), commit=0))
    c.advance(outstanding)
    acks = [(m.to, m.index) for m in msgs(c.ready(), MT.APPEND_RESP) if not m.reject]
    assert not [a for a in acks if a[0] == 2], f"acked an overwritten last entry to the stale leader: {acks}"


def check_stale_ack_dropped_by_snapshot(core: Core) -> None:
    """Stale acknowledgements: a snapshot that replaces the log withdraws queued acks beyond it."""
    c = make(core, voters=(1, 2, 3, 4, 5), terms=[1, 1], term=2)
    drain(c)
    c.step(append(9, 1, 2, 0, 0, [], commit=0))
    outstanding = c.ready()
    c.step(append(2, 1, 2, 2, 1, entries_with_terms([2, 2, 2], start=3), commit=0))  # stale leader 2
    snap = Snapshot(3, 3, conf_of([1, 2, 3, 4, 5]), b"app@3")
    c.step(Message(MT.SNAPSHOT, 3, 1, 3, snapshot=snap))  # leader 3: its (3, t3) replaces our log
    c.advance(outstanding)
    rd = c.ready()
    acks = [(m.to, m.index) for m in msgs(rd, MT.APPEND_RESP) if not m.reject]
    assert (2, 5) not in acks, f"acked index 5 to the stale leader after a snapshot replaced it: {acks}"
    assert (3, 3) in acks


def check_old_append_acks_commit_only(core: Core) -> None:
    """AppendEntries: an append below the commit index is acked with the commit index (what is known
    to match), never with the log's end (which may be a stale suffix)."""
    c = make(core, terms=[1, 1, 2, 2], term=3, commit=2)
    drain(c)
    c.step(append(2, 1, 3, 1, 1, [], commit=2))
    rd = drain(c)
    assert [m.index for m in msgs(rd, MT.APPEND_RESP) if not m.reject] == [2]


def check_readyplan_only_replication_early(core: Core) -> None:
    """Runtime order: only a leader's replication messages leave before the write; never a reply."""
    del core  # the plan is shared code, the same for every core
    replies = [
        Message(MT.VOTE_RESP, 1, 2, 5, reject=True),
        Message(MT.PRE_VOTE_RESP, 1, 2, 6),
        Message(MT.APPEND_RESP, 1, 2, 5),
        Message(MT.HEARTBEAT_RESP, 1, 2, 5),
    ]
    sends = [Message(t, 1, 2, 5) for t in (MT.APPEND, MT.HEARTBEAT, MT.TIMEOUT_NOW)]
    rd = Ready(None, [], None, replies + sends, [], [], 1, Role.LEADER, 5)
    early, late = split_sends(rd)
    assert early == sends and late == replies, (early, late)
    rd.role = Role.FOLLOWER
    assert split_sends(rd) == ([], replies + sends)


def check_single_voter_leader_waits_for_term(core: Core) -> None:
    """Persistence, runtime order: a leader that won alone (its term not yet durable) sends nothing
    before the write, or a crash could let it lead the same term twice with different entries."""
    c = make(core, voters=(1,), learners=(2,), terms=[1], term=1)
    drain(c)
    tick_until(c, lambda: c.role is Role.LEADER)
    c.propose(b"x")
    rd = c.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 2 and rd.new_term_or_vote
    early, late = split_sends(rd)
    assert not early and msgs(rd, MT.APPEND), (early, late)
    c.advance(rd)
    c.step(Message(MT.APPEND_RESP, 2, 1, 2, index=c.last_index))  # the learner now replicates
    drain(c)
    c.propose(b"y")
    rd = c.ready()
    early, _ = split_sends(rd)
    assert msgs(rd, MT.APPEND) and early == msgs(rd, MT.APPEND), "a leader's appends should overlap its write"


# -- membership ---------------------------------------------------------------------------------


def check_conf_effect_on_append_and_rollback(core: Core) -> None:
    """Membership: a change takes effect when appended (uncommitted), and is rolled back when its
    entry is truncated by a newer leader."""
    c = make(core, voters=(1, 2, 3), terms=[1], term=2)
    drain(c)
    add4 = cc_entry(2, 2, ConfChange(CC.ADD_VOTER, 4))
    c.step(append(2, 1, 2, 1, 1, [add4], commit=1))
    assert c.conf.voters == {1, 2, 3, 4}, "an appended change is not in effect"
    drain(c)
    c.step(append(3, 1, 3, 1, 1, entries_with_terms([3], start=2), commit=1))
    assert terms_of(c) == [1, 3]
    assert c.conf.voters == {1, 2, 3}, f"kept {sorted(c.conf.voters)} after its entry was truncated"


def check_removed_node_served_until_removal_commits(core: Core) -> None:
    """Membership: a node being removed keeps its progress (and keeps receiving the log) until the
    removal commits, so that it learns of its own removal instead of campaigning."""
    net = Net([1, 2, 3], core=core, max_entries_per_msg=1)
    net.elect(1)
    net.tick_all(2)
    leader = net.cores[1]
    net.propose(1, b"x")
    leader.propose_conf_change(ConfChange(CC.REMOVE_NODE, 3))
    net.drop = lambda m: m.type is MT.APPEND and m.to == 2 and any(e.type is EntryType.CONF_CHANGE for e in m.entries)
    net.deliver()
    assert leader.commit_index < leader.last_index and leader.conf.voters == {1, 2}
    assert 3 in leader.progress, "dropped the node being removed before its removal committed"


def check_conf_one_at_a_time(core: Core) -> None:
    """Membership: only one change in flight; a new leader first commits an entry of its term."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    leader = net.cores[1]
    assert leader.log_term(leader.commit_index) != leader.term or leader.commit_index == leader.last_index
    net.tick_all(2)
    net.isolate(2)
    net.isolate(3)
    leader.propose_conf_change(ConfChange(CC.ADD_LEARNER, 4))
    try:
        leader.propose_conf_change(ConfChange(CC.ADD_LEARNER, 5))
    except ConfChangeInProgress:
        pass
    else:
        raise AssertionError("accepted a second change while one is uncommitted")
    c = make(core, voters=(1, 2, 3), terms=[1, 1], term=1, pre_vote=False)
    tick_until(c, lambda: c.role is Role.CANDIDATE)
    c.step(Message(MT.VOTE_RESP, 2, 1, c.term))
    assert c.role is Role.LEADER
    try:
        c.propose_conf_change(ConfChange(CC.ADD_LEARNER, 4))
    except ConfChangeInProgress:
        pass
    else:
        raise AssertionError("a new leader accepted a change before committing an entry of its term")


def check_snapshot_conf_is_conf_at_its_index(core: Core) -> None:
    """Membership: a snapshot carries the configuration in effect at its index, not a later one
    (a change after it may still be rolled back)."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    net.propose(1, b"a")
    net.deliver()
    net.tick_all(2)
    leader = net.cores[1]
    applied = leader.applied_index
    net.isolate(2)
    net.isolate(3)
    leader.propose_conf_change(ConfChange(CC.ADD_LEARNER, 4))
    net.process(1)
    snap = leader.compact(applied, b"state")
    assert snap.conf == conf_of([1, 2, 3]), f"snapshot at {applied} carries {snap.conf}"


def check_conf_from_snapshot(core: Core) -> None:
    """Membership: after installing a snapshot, the configuration is the snapshot's."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    net.isolate(3)
    net.cores[1].propose_conf_change(ConfChange(CC.ADD_LEARNER, 4))
    for k in range(10):
        net.propose(1, f"v{k}".encode())
        net.deliver()
    for nid in (1, 2):
        core_ = net.cores[nid]
        core_.compact(core_.applied_index, b"state")
        net.stores[nid].snapshot = core_.snapshot
    net.heal()
    net.tick_all(5)
    assert net.stores[3].snapshot is not None and net.stores[3].snapshot.index > 5
    assert net.cores[3].conf == net.cores[1].conf == conf_of([1, 2, 3], [4])


# -- ReadIndex ----------------------------------------------------------------------------------


def check_read_needs_fresh_round(core: Core) -> None:
    """ReadIndex: only answers to a heartbeat round that started after the read confirm it."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    net.tick_all(2)
    leader = net.cores[1]
    leader.read_index(b"r1")
    net.process(1)
    round1 = [m for m in net.queue if m.type is MT.HEARTBEAT and m.context == b"r1"]
    assert round1
    net.queue = [m for m in net.queue if m not in round1]
    for m in round1:  # the followers answer round 1 ...
        net.cores[m.to].step(m)
        net.process(m.to)
    answers = [m for m in net.queue if m.type is MT.HEARTBEAT_RESP]
    net.queue = [m for m in net.queue if m not in answers]
    leader.read_index(b"r2")  # ... r2 is asked before those answers arrive
    net.process(1)
    net.queue = [m for m in net.queue if not (m.type is MT.HEARTBEAT and m.context == b"r2")]
    for m in answers:
        leader.step(m)
    net.process(1)
    got = [rs.context for rs in net.read_states.get(1, [])]
    assert got == [b"r1"], f"answers to a round older than the read confirmed it: {got}"


def check_read_needs_majority(core: Core) -> None:
    """ReadIndex: a read is confirmed by a majority of voters (3 of 5), not by any two."""
    net = Net([1, 2, 3, 4, 5], core=core)
    net.elect(1)
    net.tick_all(2)
    net.isolate(1)
    net.heal()
    net.partition([1, 2], [3, 4, 5])
    net.cores[1].read_index(b"r")
    for _ in range(3):
        net.tick(1)
        net.deliver()
    assert net.read_states.get(1, []) == [], "a read confirmed by 2 of 5"
    net.heal()
    net.tick(1)
    net.deliver()
    assert [rs.context for rs in net.read_states.get(1, [])] == [b"r"]


def check_read_not_from_recent_activity(core: Core) -> None:
    """ReadIndex: a leader that heard from everyone a moment ago and is now cut off answers no
    read (recent activity is not a confirmation)."""
    net = Net([1, 2, 3], core=core)
    net.elect(1)
    net.propose(1, b"a")
    net.deliver()
    net.tick_all(2)
    net.isolate(1)
    net.cores[1].read_index(b"r")
    for _ in range(3):
        net.tick(1)
        net.deliver()
    assert net.read_states.get(1, []) == [], "answered a read with no round after it"


ALL_CHECKS: tuple[Callable[[Core], None], ...] = (
    check_rv1_reject_lower_term,
    check_rv2_one_vote_per_term,
    check_rv2_up_to_date,
    check_ae1_reject_lower_term,
    check_ae2_prev_mismatch,
    check_ae_refuses_entries_beyond_leader_term,
    check_ae3_conflict_truncates,
    check_ae3_no_truncate_without_conflict,
    check_ae4_append_new,
    check_ae5_commit_min_last_new,
    check_ae5_commit_never_back,
    check_all_apply_committed_in_order,
    check_all_higher_term_steps_down,
    check_follower_timeout_campaigns,
    check_follower_heartbeats_and_votes_reset_timer,
    check_candidate_conversion,
    check_candidate_majority_wins,
    check_candidate_yields_to_leader,
    check_candidate_retries,
    check_prevote_counts_only_current_campaign,
    check_only_candidates_count_votes,
    check_leader_initial_append_and_heartbeats,
    check_leader_appends_and_answers_after_apply,
    check_leader_heartbeat_commit_within_match,
    check_leader_next_match,
    check_leader_commit_majority_current_term,
    check_leader_counts_self_only_durable,
    check_stable_drops_on_overwrite,
    check_leader_old_term_not_committed_by_counting,
    check_check_quorum_steps_down,
    check_vote_durable_before_reply,
    check_stale_ack_dropped,
    check_stale_ack_dropped_by_snapshot,
    check_old_append_acks_commit_only,
    check_readyplan_only_replication_early,
    check_single_voter_leader_waits_for_term,
    check_conf_effect_on_append_and_rollback,
    check_removed_node_served_until_removal_commits,
    check_conf_one_at_a_time,
    check_snapshot_conf_is_conf_at_its_index,
    check_conf_from_snapshot,
    check_read_needs_fresh_round,
    check_read_needs_majority,
    check_read_not_from_recent_activity,
)
