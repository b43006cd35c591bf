"""Three Raft nodes in one process: real TCP between them, each with its own real store database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ram.cluster.node import ClusterNode
from ram.consensus.runtime.errors import CommandRefused
from ram.consensus.runtime.storage import open_store_pool
from ram.consensus.types import Role
from ram.eventstore.commands import PatchConfig, RemoveMember, SetMaintenance
from ram.postgres.server import PostgresServer
from tests.runtime.helpers import cluster_configs, create_store_databases, drop_databases


class Cluster:
    def __init__(self, nodes: list[ClusterNode], pools: list[asyncpg.Pool]) -> None:
        self.nodes = nodes
        self.pools = pools

    async def leader(self, timeout: float = 10.0) -> ClusterNode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [n for n in self.nodes if n.core is not None and n.role is Role.LEADER]
            if len(leaders) == 1 and leaders[0].state.cluster_id is not None:
                return leaders[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no single leader elected in time")

    async def events(self, i: int) -> list[tuple[object, ...]]:
        async with self.pools[i].acquire() as conn:
            rows = await conn.fetch(
                "SELECT position, sub, type, payload::text, term, proposer, ts FROM pgraft.events ORDER BY 1, 2"
            )
        return [tuple(r) for r in rows]


@pytest.fixture
async def cluster(pg_server: PostgresServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    dsns = await create_store_databases(pg_server, 3)
    configs = cluster_configs(dsns, tmp_path)
    pools = [await open_store_pool(d) for d in dsns]
    nodes = [ClusterNode(c, p) for c, p in zip(configs, pools, strict=True)]
    try:
        for node in nodes:
            await node.start()
        yield Cluster(nodes, pools)
    finally:
        for node in nodes:
            await node.stop(transfer=False)
        for pool in pools:
            await pool.close()
        await drop_databases(pg_server, dsns)


async def test_elects_leader_commits_and_applies_everywhere(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    result = await leader.propose(PatchConfig(changes={"ttl": 30}))
    assert result.events and result.events[0].type == "dynamic_config_changed"
    # A follower forwards to the leader and returns once applied locally.
    forwarded = await follower.propose(SetMaintenance(enabled=True, reason="test"))
    assert forwarded.index > result.index
    assert follower.state.maintenance is True
    # ReadIndex: after the barrier every node has applied the write.
    for node in cluster.nodes:
        await node.read_barrier()
        assert node.state.dynamic_config.get("ttl") == 30
    first = await cluster.events(0)
    assert [e[2] for e in first].count("cluster_bootstrapped") == 1
    assert "raft_leader_elected" in [e[2] for e in first]
    for i in (1, 2):
        assert await cluster.events(i) == first


async def test_invalid_command_is_rejected_identically(cluster: Cluster) -> None:
    leader = await cluster.leader()
    with pytest.raises(CommandRefused, match="no member with node id 99"):
        await leader.propose(RemoveMember(node_id=99))
    await asyncio.gather(*(n.read_barrier() for n in cluster.nodes))
    for i in range(3):
        rejected = [e for e in await cluster.events(i) if e[2] == "command_rejected"]
        assert len(rejected) == 1 and "no member with node id 99" in str(rejected[0][3])
    assert await cluster.events(1) == await cluster.events(0) == await cluster.events(2)


async def test_concurrent_proposals_are_batched(cluster: Cluster) -> None:
    leader = await cluster.leader()
    before = leader.stats.persisted_batches
    results = await asyncio.gather(*(leader.propose(PatchConfig(changes={f"k{i}": i})) for i in range(200)))
    assert len({r.index for r in results}) == 200
    # Group commit: far fewer store transactions than entries.
    assert leader.stats.persisted_batches - before < 150
