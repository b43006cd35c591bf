"""A real 3-node cluster in this process (real TCP, real stores), each node serving its API on loopback."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from ram.api import ApiServer, create_app, serve
from ram.cluster.node import ClusterNode
from ram.config import parse_address
from ram.consensus.types import Role
from ram.postgres.server import PostgresServer
from ram.security import ApiSecurity
from tests.conftest import make_tempdir
from tests.runtime.helpers import cluster_configs, create_store_databases, drop_databases

#: The tokens every test node accepts: the API is never open in tests unless a test says so.
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
READ_TOKEN = "test-read-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


def test_security(**kwargs: object) -> ApiSecurity:
    """Token authentication with an ``admin`` token named ``ops`` and a ``read`` token named ``viewer``."""
    return ApiSecurity.with_tokens({"ops": ("admin", ADMIN_TOKEN), "viewer": ("read", READ_TOKEN)}, **kwargs)


test_security.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class ApiCluster:
    nodes: list[ClusterNode]
    pools: list[asyncpg.Pool]
    servers: list[ApiServer]
    dsns: list[str]

    def url(self, i: int) -> str:
        return self.servers[i].url

    def index_of(self, node: ClusterNode) -> int:
        return self.nodes.index(node)

    def leader(self) -> ClusterNode:
        leaders = [n for n in self.nodes if n.role is Role.LEADER]
        assert len(leaders) == 1, "expected exactly one leader"
        return leaders[0]

    def follower(self) -> ClusterNode:
        return next(n for n in self.nodes if n.role is not Role.LEADER)

    async def settled(self, timeout: float = 15.0) -> ClusterNode:
        """Wait for one leader whose term is recorded in every node's state and applied everywhere."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [n for n in self.nodes if n.role is Role.LEADER]
            if len(leaders) == 1:
                leader = leaders[0]
                if all(
                    n.state.cluster_id is not None
                    and n.state.raft_term == leader.term
                    and n.leader_id == leader.config.node_id
                    and n.applied_index >= n.commit_index
                    for n in self.nodes
                ):
                    return leader
            await asyncio.sleep(0.02)
        raise AssertionError("cluster did not settle (one leader, recorded and applied everywhere)")

    async def barrier(self) -> None:
        await asyncio.gather(*(n.read_barrier() for n in self.nodes))


@pytest.fixture(scope="module")
async def api_cluster(pg_server: PostgresServer) -> AsyncIterator[ApiCluster]:
    data_root = make_tempdir("ram-api-test-")
    dsns = await create_store_databases(pg_server, 3)
    configs = cluster_configs(dsns, data_root, tick_ms=20, heartbeat_ms=40, election_ms=300)
    pools = [await asyncpg.create_pool(d, min_size=1, max_size=6) for d in dsns]
    nodes = [ClusterNode(c, p) for c, p in zip(configs, pools, strict=True)]
    servers: list[ApiServer] = []
    try:
        for node in nodes:
            await node.start()
        for node, pool, dsn in zip(nodes, pools, dsns, strict=True):
            # On the advertised API address: the cluster state names it (leader hints point there).
            host, port = parse_address(node.config.api.listen or "")
            app = create_app(node, store_dsn=dsn, pool=pool, security=test_security())
            servers.append(await serve(app, host, port))
        cluster = ApiCluster(nodes, pools, servers, dsns)
        await cluster.settled()
        yield cluster
    finally:
        for server in servers:
            await server.stop()
        for node in nodes:
            await node.stop(transfer=False)
        for pool in pools:
            await pool.close()
        await drop_databases(pg_server, dsns)
        shutil.rmtree(data_root, ignore_errors=True)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that sends the admin token (the tests of access control use their own)."""
    async with httpx.AsyncClient(timeout=15.0, headers=ADMIN) as c:
        yield c
