"""Log replication, the commit rule, repair of divergent followers, snapshots and restarts (5.3, 5.4)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from ram.consensus.core import RaftCore
from ram.consensus.types import EntryType, Message, MessageType, PersistedState, RaftConfig, Role
from tests.consensus.helpers import Net, conf_of, entries_with_terms

MT = MessageType


def test_replication_commits_and_applies_everywhere_in_order() -> None:
    net = Net([1, 2, 3, 4, 5])
    net.elect(1)
    for k in range(20):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    net.tick_all(3)
    want = [f"v{k}".encode() for k in range(20)]
    for nid in net.ids:
        assert net.applied_data(nid) == want


def test_leader_counts_its_own_entry_only_once_durable() -> None:
    core = RaftCore(RaftConfig(1), random.Random(1), PersistedState(), conf_of([1]))
    core.advance(core.ready())
    for _ in range(30):
        core.tick()
    assert core.role is Role.LEADER
    rd = core.ready()
    assert rd.entries and core.commit_index < rd.entries[-1].index  # not durable yet: not committed
    core.advance(rd)
    assert core.commit_index == rd.entries[-1].index
    idx, _ = core.propose(b"x")
    assert core.commit_index < idx
    rd = core.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    assert all(e.data != b"x" for e in rd.committed_entries)
    core.advance(rd)
    assert core.commit_index == idx
    assert [e.data for e in core.ready().committed_entries] == [b"x"]


def test_follower_truncates_conflicting_suffix() -> None:
    net = Net([1, 2, 3], logs={1: [1, 1, 3], 2: [1, 1, 3], 3: [1, 1, 2, 2, 2]}, terms={1: 3, 2: 3, 3: 2})
    net.elect(1)
    net.deliver()
    assert net.log_terms(3) == net.log_terms(1)
    assert net.log_terms(3)[:3] == [1, 1, 3]
    st = net.stores[3]
    assert [e.term for e in st.entries] == net.log_terms(1)  # storage overwrote the suffix too


def test_figure7_leader_repairs_missing_extra_and_diverged_followers() -> None:
    # Raft paper Figure 7: leader for term 8 and followers (a)-(f).
    leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    followers = {
        2: [1, 1, 1, 4, 4, 5, 5, 6, 6],  # (a) missing one
        3: [1, 1, 1, 4],  # (b) missing many
        4: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  # (c) one extra
        5: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  # (d) extra of a later term
        6: [1, 1, 1, 4, 4, 4, 4],  # (e) diverged
        7: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  # (f) diverged long
    }
    logs = {1: leader, **followers}
    net = Net(range(1, 8), logs=logs, terms=dict.fromkeys(range(1, 8), 7))
    # Make 1 leader of term 8 directly: it wins with the votes of nodes it is as up to date as.
    net.elect(1)
    assert net.cores[1].term == 8
    net.deliver()
    net.tick_all(5)
    for nid in range(2, 8):
        assert net.log_terms(nid) == net.log_terms(1), nid
    assert net.log_terms(1)[:10] == leader


def figure8_commit_after_majority(**cfg: Any) -> tuple[int, int]:
    """Raft paper Figure 8, scripted; returns (commit while only the old entry is on a majority,
    commit once the leader's own entry is on a majority).

    S1 leads term 4 holding (2, t2), which S2 has too; S5 holds (2, t3). S1 brings S3 up to date
    with (2, t2) while its own term-4 entry is kept from spreading: index 2 is then on a majority,
    but it must not count as committed, because S5 could still be elected and overwrite it.
    """
    logs = {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}
    net = Net(range(1, 6), logs=logs, terms=dict.fromkeys(range(1, 6), 3), pre_vote=False, max_entries_per_msg=1, **cfg)
    net.cut |= {(1, 5), (5, 1), (1, 4), (4, 1)}
    net.start_campaign(1)
    # The network loses the leader's term-4 entry on its way to everyone (but not the rest).
    net.mangle = lambda m: dataclasses.replace(m, entries=tuple(e for e in m.entries if e.term != 4))
    net.deliver()
    for _ in range(3):
        net.tick(1)
        net.deliver()
    assert net.cores[1].role is Role.LEADER and net.cores[1].term == 4
    assert [net.cores[i].log_term(2) for i in (1, 2, 3)] == [2, 2, 2]  # a majority holds (2, t2)
    first = net.cores[1].commit_index
    net.mangle = None
    for _ in range(3):
        net.tick(1)
        net.deliver()
    return first, net.cores[1].commit_index


def test_figure8_old_term_entry_on_majority_not_committed_until_current_term_entry() -> None:
    before, after = figure8_commit_after_majority()
    assert before < 2  # not committed by counting replicas of an old term
    assert after >= 3  # committed together with the first entry of the leader's term


def test_leader_completeness_new_leader_has_all_committed_entries() -> None:
    net = Net([1, 2, 3, 4, 5])
    net.elect(1)
    net.isolate(4)
    net.isolate(5)
    for k in range(5):
        net.propose(1, f"c{k}".encode())
    net.deliver()
    committed = net.cores[1].commit_index
    net.crash(1)
    net.heal()
    net.isolate(1)
    # 4 and 5 are behind: whoever wins must hold every committed entry.
    for _ in range(80):
        for nid in (2, 3, 4, 5):
            net.tick(nid)
        net.deliver()
        if net.leaders():
            break
    (leader,) = net.leaders()
    assert leader in (2, 3)
    assert net.cores[leader].last_index >= committed


def test_snapshot_install_after_long_partition() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(30):
        net.propose(1, f"v{k}".encode())
        net.deliver()
    for nid in (1, 2):
        core = net.cores[nid]
        core.compact(core.applied_index, f"state@{core.applied_index}".encode())
        net.stores[nid].snapshot = core.snapshot
    assert net.cores[1].first_index > 10
    net.heal()
    net.tick_all(5)
    c3 = net.cores[3]
    assert net.stores[3].snapshot is not None and net.stores[3].snapshot.data.startswith(b"state@")
    assert c3.commit_index == net.cores[1].commit_index
    net.propose(1, b"after")
    net.deliver()
    net.tick_all(2)
    assert net.stores[3].applied[-1].data == b"after"


def test_whole_cluster_restart_keeps_committed_entries_and_votes() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    for k in range(10):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    net.tick_all(2)
    before = {nid: (net.stores[nid].hs, net.log_terms(nid)) for nid in net.ids}
    committed = net.cores[1].commit_index
    for nid in net.ids:
        net.crash(nid)
    for nid in net.ids:
        net.stores[nid].applied_index = 0  # the app restarts from scratch and re-applies
        net.stores[nid].applied = []
        net.restart(nid)
    for nid in net.ids:
        c = net.cores[nid]
        assert (c.term, c.vote) == (before[nid][0].term, before[nid][0].vote)
        assert net.log_terms(nid) == before[nid][1]
        assert c.commit_index == before[nid][0].commit
    net.tick_all(60)
    (leader,) = net.leaders()
    assert net.cores[leader].commit_index >= committed
    for nid in net.ids:
        assert net.applied_data(nid)[:10] == [f"v{k}".encode() for k in range(10)]


def test_restart_with_applied_index_does_not_reapply() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    for k in range(5):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    net.tick_all(2)
    n_applied = len(net.stores[2].applied)
    net.crash(2)
    net.restart(2)
    net.tick_all(3)
    assert len(net.stores[2].applied) == n_applied  # nothing applied twice


def test_garbage_messages_are_dropped() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    f = net.cores[2]
    t, last, commit = f.term, f.last_index, f.commit_index
    f.step(Message(MT.APPEND, 99, 3, t))  # misaddressed
    f.step(Message(MT.APPEND, 0, 2, t))  # no sender
    bad = tuple(entries_with_terms([t, t], start=last + 5))  # not contiguous with index
    f.step(Message(MT.APPEND, 1, 2, t, log_term=f.log_term(last) or 0, index=last, entries=bad))
    f.step(Message(MT.SNAPSHOT, 1, 2, t, snapshot=None))
    assert (f.term, f.last_index, f.commit_index) == (t, last, commit)
    leader = net.cores[1]
    leader.step(Message(MT.APPEND_RESP, 42, 1, t, index=10**6))  # unknown node
    leader.step(Message(MT.APPEND_RESP, 2, 1, t, index=10**6))  # impossible ack
    assert leader.progress[2].match <= leader.last_index
    assert all(e.type in (EntryType.NORMAL, EntryType.CONF_CHANGE) for e in net.stores[2].entries)
