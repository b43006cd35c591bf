"""Leadership transfer, ReadIndex and membership changes."""

from __future__ import annotations

import pytest

from ram.consensus.core import ConfChangeInProgress, NotLeader, ProposalDropped
from ram.consensus.types import ConfChange, ConfChangeType, MessageType, Role
from tests.consensus.helpers import Net

MT = MessageType
CC = ConfChangeType


def test_transfer_to_up_to_date_node() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.deliver()
    t = net.cores[1].term
    net.cores[1].transfer_leadership(2)
    net.deliver()
    assert net.leaders() == [2] and net.cores[2].term == t + 1
    assert any(m.type is MT.TIMEOUT_NOW and m.to == 2 for m in net.sent)


def test_transfer_to_lagging_node_catches_it_up_first() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for k in range(10):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    net.heal()
    net.cores[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        net.cores[1].propose(b"during transfer")
    net.deliver()
    assert net.leaders() == [3]
    timeout_now = [m for m in net.sent if m.type is MT.TIMEOUT_NOW]
    assert timeout_now and net.cores[3].last_index >= 11
    net.propose(3, b"after")
    net.deliver()
    net.tick_all(2)
    assert net.applied_data(1)[-1] == b"after"


def test_transfer_to_unreachable_node_aborts_and_proposals_resume() -> None:
    net = Net([1, 2, 3], election_ticks=10)
    net.elect(1)
    net.isolate(3)
    net.propose(1, b"x")
    net.deliver()
    net.cores[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        net.cores[1].propose(b"y")
    for _ in range(12):
        net.tick(1)
        net.tick(2)
        net.deliver()
    assert net.leaders() == [1] and net.cores[1].lead_transferee == 0
    net.propose(1, b"z")


def test_transfer_on_follower_raises_not_leader() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    with pytest.raises(NotLeader) as ei:
        net.cores[2].transfer_leadership(3)
    assert ei.value.leader_id == 1


def test_read_index_confirms_leadership_with_quorum() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.deliver()
    commit = net.cores[1].commit_index
    net.cores[1].read_index(b"r1")
    net.process(1)
    assert net.read_states.get(1, []) == []  # needs a heartbeat round first
    net.deliver()
    (rs,) = net.read_states[1]
    assert rs.context == b"r1" and rs.index == commit


def test_read_index_isolated_leader_never_answers() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.cores[1].read_index(b"r")
    for _ in range(5):
        net.tick(1)
        net.deliver()
    assert net.read_states.get(1, []) == []


def test_read_index_on_new_leader_waits_for_first_commit_in_term() -> None:
    net = Net([1, 2, 3], check_quorum=False)
    net.elect(1)
    net.propose(1, b"a")
    net.deliver()
    net.crash(1)
    net.start_campaign(2)
    # Deliver the election but hold back every append of the new leader.
    net.drop = lambda m: m.type is MT.APPEND
    net.deliver()
    assert net.cores[2].role is Role.LEADER
    assert net.cores[2].log_term(net.cores[2].commit_index) != net.cores[2].term
    net.cores[2].read_index(b"r")
    net.tick(2, 3)
    net.deliver()
    assert net.read_states.get(2, []) == []  # heartbeats answered, but no commit in its term yet
    net.drop = None
    net.tick(2, 2)
    net.deliver()
    net.tick(2, 2)
    net.deliver()
    (rs,) = net.read_states[2]
    assert rs.index >= net.cores[2].commit_index - 0 and net.cores[2].log_term(rs.index) == net.cores[2].term


def test_read_index_on_follower_raises_not_leader() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    with pytest.raises(NotLeader):
        net.cores[2].read_index(b"x")


def test_add_learner_then_promote_then_remove_voter() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    for k in range(5):
        net.propose(1, f"v{k}".encode())
    net.deliver()
    net.add_node(4)
    assert net.cores[4].conf.voters == frozenset()
    net.cores[1].propose_conf_change(ConfChange(CC.ADD_LEARNER, 4, b"addr4"))
    net.deliver()
    net.tick_all(3)
    assert net.cores[4].is_learner and net.cores[4].conf.voters == {1, 2, 3}
    assert net.cores[1].progress[4].match == net.cores[1].last_index
    assert net.applied_data(4) == net.applied_data(1)
    net.cores[1].propose_conf_change(ConfChange(CC.ADD_VOTER, 4))
    net.deliver()
    net.tick_all(2)
    assert net.cores[1].conf.voters == {1, 2, 3, 4} and not net.cores[4].is_learner
    net.cores[1].propose_conf_change(ConfChange(CC.REMOVE_NODE, 2))
    net.deliver()
    net.tick_all(2)
    assert net.cores[1].conf.voters == {1, 3, 4}
    net.tick(2, 100)
    assert net.cores[2].role is Role.FOLLOWER  # removed: never campaigns


def test_conf_change_validation_and_one_at_a_time() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.tick_all(2)
    c = net.cores[1]
    with pytest.raises(ValueError):
        c.propose_conf_change(ConfChange(CC.REMOVE_NODE, 9))
    with pytest.raises(ValueError):
        c.propose_conf_change(ConfChange(CC.ADD_VOTER, 2))
    with pytest.raises(ValueError):
        c.propose_conf_change(ConfChange(CC.ADD_LEARNER, 3))
    net.isolate(2)
    net.isolate(3)
    c.propose_conf_change(ConfChange(CC.ADD_LEARNER, 4))
    with pytest.raises(ConfChangeInProgress):
        c.propose_conf_change(ConfChange(CC.ADD_LEARNER, 5))
    with pytest.raises(NotLeader):
        net.cores[2].propose_conf_change(ConfChange(CC.ADD_LEARNER, 5))


def test_conf_change_decode_roundtrip_and_garbage() -> None:
    cc = ConfChange(CC.ADD_LEARNER, 7, b"10.0.0.7:5433")
    assert ConfChange.decode(cc.encode()) == cc
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x01")
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x09" + b"\x00" * 8)


def test_removing_the_leader_steps_it_down_after_commit() -> None:
    net = Net([1, 2, 3])
    net.elect(1)
    net.tick_all(2)
    net.cores[1].propose_conf_change(ConfChange(CC.REMOVE_NODE, 1))
    assert net.cores[1].role is Role.LEADER  # still leads until the change commits
    net.deliver()
    assert net.role(1) is Role.FOLLOWER
    net.tick_all(60)
    (leader,) = net.leaders()
    assert leader in (2, 3) and net.cores[leader].conf.voters == {2, 3}
    net.propose(leader, b"after removal")
    net.deliver()
    net.tick_all(2)
    assert net.applied_data(2)[-1] == b"after removal"
    net.tick(1, 100)
    assert net.role(1) is Role.FOLLOWER
