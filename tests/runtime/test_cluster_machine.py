"""The cluster state machine in memory: a proposal admitted on this node is decided exactly as the
same bytes decoded afresh (as every other node decides them)."""

from __future__ import annotations

from datetime import UTC, datetime

from ram.cluster.machine import _MAX_ADMITTED, ClusterMachine
from ram.consensus.types import ConfState, Entry, EntryType
from ram.eventstore.commands import BootstrapCluster, CommandEnvelope, PatchConfig, encode_envelope
from ram.eventstore.events import MemberSpec

CONF = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset())


def entry(index: int, command: object, proposer: int = 1) -> Entry:
    envelope = CommandEnvelope(command=command, proposer=proposer, ts=datetime.now(UTC))
    return Entry(index=index, term=1, type=EntryType.NORMAL, data=encode_envelope(envelope))


def bootstrapped() -> ClusterMachine:
    machine = ClusterMachine()
    members = tuple(
        MemberSpec(name=f"n{i}", node_id=i, raft_address=f"127.0.0.1:{7000 + i}",
                   api_address=f"127.0.0.1:{8000 + i}", pg_host="127.0.0.1", pg_port=5432 + i)
        for i in (1, 2, 3)
    )
    machine.commit(machine.decide([entry(1, BootstrapCluster(cluster_id="c", cluster_name="c", members=members))]))
    return machine


def test_admitted_proposals_decide_like_fresh_decoding() -> None:
    leader, follower = bootstrapped(), bootstrapped()
    entries = [entry(2 + k, PatchConfig(changes={f"k{k % 3}": k})) for k in range(10)]
    for e in entries[::2]:  # some admitted here (the leader's own proposals), some not (forwarded elsewhere)
        assert leader.admit(e.data, peer=None, conf=CONF) is None
    on_leader, on_follower = leader.decide(entries), follower.decide(entries)
    assert on_leader.results == on_follower.results
    leader.commit(on_leader)
    follower.commit(on_follower)
    assert leader.state == follower.state
    assert leader.state.dynamic_config == {"k0": 9, "k1": 7, "k2": 8}
    assert not leader._admitted  # every admitted proposal was decided: nothing kept


def test_admitted_decodings_are_bounded() -> None:
    machine = bootstrapped()
    for k in range(_MAX_ADMITTED + 10):  # proposals that never commit (a leadership lost meanwhile)
        machine.admit(entry(2 + k, PatchConfig(changes={"k": k})).data, peer=None, conf=CONF)
    assert len(machine._admitted) <= _MAX_ADMITTED
