"""Peers speak only for themselves (issue #11), on three real Raft nodes with real stores.

The transport hands every frame to the node with the node id the connection *proved*
(tests/security/test_peer_transport.py shows a connection proven as node 2 can not deliver as
node 3). Here: what the node then does with a frame from node X — a Raft message claiming another
sender, a TimeoutNow from a node that is not the leader, a forwarded internal command or a fact about
another member, an answer to a question it never asked X.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ram.cluster.node import ClusterNode
from ram.config import ConfigError
from ram.consensus.runtime.codec import ForwardedProposal, ProposalOutcome, RaftPayload, decode_payload, encode_payload
from ram.consensus.runtime.storage import open_store_pool
from ram.consensus.types import Message, MessageType, Role
from ram.eventstore.commands import (
    Arbitrate,
    CommandEnvelope,
    PatchConfig,
    RecordLeader,
    ReportFact,
    encode_envelope,
)
from ram.eventstore.events import MaintenanceModeChanged, MemberHealthChanged, ReplicaFollowing
from ram.ha.wire import LeaseRequest
from ram.postgres.server import PostgresServer
from tests.runtime.helpers import cluster_configs, create_store_databases, drop_databases

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Cluster:
    def __init__(self, nodes: list[ClusterNode]) -> None:
        self.nodes = nodes

    async def leader(self, timeout: float = 10.0) -> ClusterNode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [n for n in self.nodes if n.core is not None and n.role is Role.LEADER]
            followers_know = all(n.leader_id == leaders[0].config.node_id for n in self.nodes) if leaders else False
            if len(leaders) == 1 and leaders[0].state.cluster_id is not None and followers_know:
                return leaders[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no single leader elected in time")


@pytest.fixture
async def cluster(pg_server: PostgresServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    dsns = await create_store_databases(pg_server, 3)
    configs = cluster_configs(dsns, tmp_path)
    pools: list[asyncpg.Pool] = [await open_store_pool(d) for d in dsns]
    nodes = [ClusterNode(c, p) for c, p in zip(configs, pools, strict=True)]
    try:
        for node in nodes:
            await node.start()
        yield Cluster(nodes)
    finally:
        for node in nodes:
            await node.stop(transfer=False)
        for pool in pools:
            await pool.close()
        await drop_databases(pg_server, dsns)


def record_sends(node: ClusterNode) -> list[tuple[int, Any]]:
    """Every payload ``node`` sends from now on (still sent)."""
    sent: list[tuple[int, Any]] = []
    original = node.transport.send

    def send(peer_id: int, payload: bytes) -> bool:
        sent.append((peer_id, decode_payload(payload)))
        return original(peer_id, payload)

    node.transport.send = send  # type: ignore[method-assign]
    return sent


async def forward(leader: ClusterNode, sender: int, command: Any, *, proposer: int | None = None) -> ProposalOutcome:
    """Deliver a forwarded proposal to ``leader`` as if it came over ``sender``'s authenticated
    connection; return the leader's answer to ``sender``."""
    sent = record_sends(leader)
    request_id = 990_000 + len(sent) + int(time.monotonic() * 1000) % 1000
    envelope = CommandEnvelope(command=command, proposer=sender if proposer is None else proposer, ts=datetime.now(UTC))
    leader.raft._on_frame(sender, encode_payload(ForwardedProposal(request_id, encode_envelope(envelope))))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for peer, payload in sent:
            if peer == sender and isinstance(payload, ProposalOutcome) and payload.request_id == request_id:
                return payload
        await asyncio.sleep(0.02)
    raise AssertionError("no answer to the forwarded proposal")


async def test_forwarded_internal_commands_and_foreign_facts_are_refused(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ram.node")
    leader = await cluster.leader()
    me = leader.config.name
    sender = next(n for n in cluster.nodes if n is not leader)
    sid, sname = sender.config.node_id, sender.config.name
    before = leader.decided_index  # (the store may not have written the bootstrap's events yet)
    refused = [
        Arbitrate(
            events=(MaintenanceModeChanged(enabled=True, reason="x", by="x"),), based_on=leader.state.last_position
        ),
        RecordLeader(node_id=sid),
        ReportFact(event=ReplicaFollowing(name=me, primary=sname)),  # about another member
        ReportFact(event=MemberHealthChanged(name=sname, healthy=True, pg_running=True, reason="trust me")),
    ]
    for command in refused:
        outcome = await forward(leader, sid, command)
        assert not outcome.ok and outcome.error.startswith("refused:"), (command, outcome)
    # Proposing on behalf of another node is refused too, even for a client command.
    outcome = await forward(leader, sid, PatchConfig(changes={"x": 1}), proposer=leader.config.node_id)
    assert not outcome.ok and "on behalf of" in outcome.error
    await asyncio.sleep(0.3)
    assert not leader.state.maintenance and leader.state.dynamic_config.get("x") is None
    async with leader.raft._pool.acquire() as conn:  # nothing of the above was committed
        rows = await conn.fetch("SELECT type, payload::text FROM pgraft.events WHERE position > $1", before)
    assert all(r["type"] == "raft_leader_elected" and f'"leader_node_id":{sid}' not in r["payload"].replace(" ", "")
               for r in rows), rows
    assert sum("forwarded proposal refused" in r.getMessage() for r in caplog.records) == len(refused) + 1
    # What a member may say: client commands, and facts about itself.
    ok = await forward(leader, sid, PatchConfig(changes={"postgresql.parameters.app.x": "1"}))
    assert ok.ok, ok
    own = await forward(leader, sid, ReportFact(event=ReplicaFollowing(name=sname, primary=me)))
    assert own.ok, own


async def test_timeout_now_only_from_the_leader(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.node")
    leader = await cluster.leader()
    followers = [n for n in cluster.nodes if n is not leader]
    target, other = followers
    assert target.core is not None
    term = target.term
    message = Message(MessageType.TIMEOUT_NOW, frm=other.config.node_id, to=target.config.node_id, term=term)
    target.raft._on_frame(other.config.node_id, encode_payload(RaftPayload(message)))
    assert any("dropping timeout_now from a node that is not the leader" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(0.5)
    assert target.role is Role.FOLLOWER and target.term == term and leader.role is Role.LEADER
    # The same message from the leader is obeyed: the target campaigns at once and wins.
    real = Message(MessageType.TIMEOUT_NOW, frm=leader.config.node_id, to=target.config.node_id, term=leader.term)
    target.raft._on_frame(leader.config.node_id, encode_payload(RaftPayload(real)))
    deadline = time.monotonic() + 10
    while target.role is not Role.LEADER and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert target.role is Role.LEADER and target.term > term


async def test_raft_message_naming_another_sender_or_recipient_is_dropped(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ram.node")
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    third = next(n for n in cluster.nodes if n is not leader and n is not follower)
    lid, fid, tid = leader.config.node_id, follower.config.node_id, third.config.node_id
    term = follower.term
    # Node `third` (authenticated as such) sends a vote request in the leader's name, at a higher term.
    forged = Message(MessageType.VOTE, frm=lid, to=fid, term=term + 5, index=10**6, log_term=term + 5)
    follower.raft._on_frame(tid, encode_payload(RaftPayload(forged)))
    misaddressed = Message(MessageType.HEARTBEAT, frm=tid, to=lid, term=term)
    follower.raft._on_frame(tid, encode_payload(RaftPayload(misaddressed)))
    follower.raft._on_frame(tid, b"\x93garbage")  # and a payload that does not decode
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("forged sender or wrong recipient" in m for m in msgs) == 2
    assert any("dropping invalid payload" in m for m in msgs)
    await asyncio.sleep(0.3)
    assert follower.term == term and leader.role is Role.LEADER


async def test_answers_only_from_the_node_asked(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ram.node")
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    impostor = next(n for n in cluster.nodes if n is not leader and n is not follower)
    task = asyncio.create_task(follower.raft.ask_leader(LeaseRequest(request_id=0, lease_s=1.0), timeout=2))
    await asyncio.sleep(0)  # the request is registered; its id is the node's latest
    request_id = max(follower.raft._forward_targets)
    follower.raft._on_frame(
        impostor.config.node_id, encode_payload(ProposalOutcome(request_id, True, error="granted by me"))
    )
    answer = await task
    assert answer.error != "granted by me"
    assert any("an answer from a node that was not asked" in r.getMessage() for r in caplog.records)


async def test_multi_node_without_peer_authentication_refuses_to_start(tmp_path: Path) -> None:
    configs = cluster_configs(["postgresql://unused/x", "postgresql://unused/y"], tmp_path, insecure=False)
    with pytest.raises(ConfigError, match=r"raft\.secret_file .*raft\.insecure = true"):
        ClusterNode(configs[0], pool=None)  # type: ignore[arg-type]
    insecure = cluster_configs(["postgresql://unused/x", "postgresql://unused/y"], tmp_path, insecure=True)
    ClusterNode(insecure[0], pool=None)  # type: ignore[arg-type]  # explicit: allowed
