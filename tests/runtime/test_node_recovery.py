"""Runtime recovery paths with real stores and real TCP: a store outage, catch-up by snapshot,
and a new member joining as a learner that is promoted once caught up."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

import asyncpg
import pytest

from ram.cluster.node import ClusterNode
from ram.config import parse_address, parse_config
from ram.consensus.runtime.storage import open_store_pool
from ram.consensus.runtime.transport import PeerAddress
from ram.consensus.types import Role
from ram.eventstore import schema
from ram.eventstore.commands import AddMember, PatchConfig
from ram.eventstore.events import MemberSpec
from ram.postgres.server import PostgresServer
from tests.conftest import free_port, make_tempdir
from tests.runtime.helpers import cluster_configs, create_store_databases, drop_databases


async def wait_for(predicate: object, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def leader_of(nodes: list[ClusterNode]) -> ClusterNode:
    def ready() -> bool:
        leaders = [n for n in nodes if n.role is Role.LEADER]
        return len(leaders) == 1 and leaders[0].state.cluster_id is not None

    await wait_for(ready, what="a single leader of a bootstrapped cluster")
    return next(n for n in nodes if n.role is Role.LEADER)


async def event_rows(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT position, sub, type, payload::text, term FROM pgraft.events ORDER BY 1, 2")
    return [tuple(r) for r in rows]


async def _close_database(server: PostgresServer, db: str, *, closed: bool) -> None:
    admin = await asyncpg.connect(server.dsn())
    try:
        await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS {"false" if closed else "true"}')
        if closed:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db)
    finally:
        await admin.close()


@pytest.mark.parametrize("outage", ["server_stopped", "database_closed"])
async def test_store_outage_stops_acks_then_recovers(pg_server: PostgresServer, tmp_path: Path, outage: str) -> None:
    """Node 3's store goes down: the node keeps running without acknowledging, the other two keep
    committing, and node 3 catches up once its store is back. Two ways to lose it: the server stops
    (connections refused), or the database is closed to new sessions and the open ones are
    terminated (the server itself refuses with SQLSTATE 55000 - this one used to kill the node)."""
    base = make_tempdir("ram-outage-")
    own = PostgresServer(datadir=base / "data", port=free_port(), listen_addresses="127.0.0.1")
    dsns = await create_store_databases(pg_server, 2)
    pools: list[asyncpg.Pool] = []
    nodes: list[ClusterNode] = []
    try:
        await own.init()
        await own.start()
        admin = await asyncpg.connect(own.dsn())
        await admin.execute("CREATE DATABASE ram")
        await admin.close()
        await asyncio.to_thread(schema.upgrade, own.dsn("ram"))
        all_dsns = [*dsns, own.dsn("ram")]
        configs = cluster_configs(all_dsns, tmp_path)
        pools = [await open_store_pool(d) for d in all_dsns]
        nodes = [ClusterNode(c, p) for c, p in zip(configs, pools, strict=True)]
        for node in nodes:
            await node.start()
        leader = await leader_of(nodes)
        if leader is nodes[2]:
            await nodes[2].stop()  # keep the victim a follower: restart it without leadership
            nodes[2] = ClusterNode(configs[2], pools[2])
            await nodes[2].start()
            leader = await leader_of(nodes[:2])
        await leader.propose(PatchConfig(changes={"before": 1}))
        if outage == "server_stopped":
            await own.stop("immediate", 10)
        else:
            await _close_database(own, "ram", closed=True)
        for i in range(20):
            await leader.propose(PatchConfig(changes={"during": i}), timeout=10)
        assert not nodes[2].failed.is_set(), "store outage must not kill the node"
        assert leader.core is not None
        # Node 3 could not make anything durable, so it acknowledged none of the new entries.
        assert leader.core.progress[3].match < leader.commit_index
        # Its first failing write may still be on its way (a terminated session's error arrives when
        # the node next uses that connection; the other two commit without waiting for it).
        await wait_for(lambda: nodes[2].stats.store_failures > 0, timeout=10, what="node 3's store write to fail")
        assert leader.core.progress[3].match < leader.commit_index
        if outage == "server_stopped":
            await own.start()
        else:
            await _close_database(own, "ram", closed=False)
        # Every store has what the leader decided (node 1's store is compared below, and a store is
        # written up to 50 ms after its node decided).
        await wait_for(lambda: all(n.applied_index >= leader.decided_index for n in nodes), timeout=20,
                       what="catch-up")
        assert nodes[2].state.dynamic_config.get("during") == 19
        assert await event_rows(pools[2]) == await event_rows(pools[0])
    finally:
        for node in nodes:
            await node.stop(transfer=False)
        for pool in pools:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)
        with contextlib.suppress(Exception):
            await own.stop("immediate", 10)
        shutil.rmtree(base, ignore_errors=True)
        await drop_databases(pg_server, dsns)


async def test_restarted_node_catches_up_by_snapshot(pg_server: PostgresServer, tmp_path: Path) -> None:
    dsns = await create_store_databases(pg_server, 3)
    configs = cluster_configs(dsns, tmp_path, snapshot_entries=100)
    pools = [await open_store_pool(d) for d in dsns]
    nodes = [ClusterNode(c, p) for c, p in zip(configs, pools, strict=True)]
    try:
        for node in nodes:
            await node.start()
        leader = await leader_of(nodes)
        lagging = next(i for i, n in enumerate(nodes) if n is not leader)
        await nodes[lagging].stop(transfer=False)
        await asyncio.gather(*(leader.propose(PatchConfig(changes={f"k{i % 5}": i})) for i in range(260)))
        running = [n for i, n in enumerate(nodes) if i != lagging]
        # Whoever leads when the lagging node returns must have compacted past what it holds.
        await wait_for(
            lambda: all(n.core is not None and n.core.first_index > 150 for n in running), what="compaction"
        )
        # The transport keeps frames for a peer that is down (Raft tolerates either); drop them, as a
        # lossy network would, so that the entries the node missed exist nowhere but in snapshots.
        for node in running:
            peers = {p.id: PeerAddress(*parse_address(p.address)) for p in node.config.raft.peers}
            node.transport.set_peers({pid: a for pid, a in peers.items() if pid != lagging + 1})
            node.transport.set_peers(peers)
        nodes[lagging] = ClusterNode(configs[lagging], pools[lagging])
        await nodes[lagging].start()
        await wait_for(lambda: nodes[lagging].applied_index >= leader.decided_index == leader.applied_index,
                       timeout=20, what="snapshot")
        assert nodes[lagging].stats.snapshots_installed >= 1, "caught up by snapshot, not by log"
        reference = await event_rows(pools[nodes.index(leader)])
        assert await event_rows(pools[lagging]) == reference
        assert nodes[lagging].state.dynamic_config == leader.state.dynamic_config
    finally:
        for node in nodes:
            await node.stop(transfer=False)
        for pool in pools:
            await pool.close()
        await drop_databases(pg_server, dsns)


async def test_new_member_joins_as_learner_and_is_promoted(pg_server: PostgresServer, tmp_path: Path) -> None:
    dsns = await create_store_databases(pg_server, 4)
    configs = cluster_configs(dsns[:3], tmp_path)
    port = free_port()
    peers = [{"id": c.node_id, "name": c.name, "address": c.raft.listen} for c in configs]
    joiner_config = parse_config(
        {
            "cluster_id": "test",
            "node_id": 4,
            "name": "node4",
            "data_dir": str(tmp_path / "node4"),
            "join": [configs[0].raft.listen],
            "raft": {"listen": f"127.0.0.1:{port}", "peers": peers, "secret_file": str(configs[0].raft.secret_file)},
            "store": {"dsn": dsns[3]},
        }
    )
    pools = [await open_store_pool(d) for d in dsns]
    nodes = [ClusterNode(c, p) for c, p in zip([*configs, joiner_config], pools, strict=True)]
    try:
        for node in nodes[:3]:
            await node.start()
        leader = await leader_of(nodes[:3])
        for i in range(30):
            await leader.propose(PatchConfig(changes={"x": i}))
        await nodes[3].start()
        spec = MemberSpec(
            name="node4", node_id=4, raft_address=f"127.0.0.1:{port}", api_address="127.0.0.1:8008",
            pg_host="127.0.0.1", pg_port=5432,
        )
        await leader.propose(AddMember(member=spec, as_learner=True))
        # Promoted: the configuration change is applied (not only appended) on the leader.
        await wait_for(
            lambda: "node4" in leader.state.members and not leader.state.members["node4"].is_learner,
            timeout=20,
            what="promotion to voter",
        )
        assert leader.core is not None and 4 in leader.core.conf.voters
        await wait_for(lambda: nodes[3].applied_index >= leader.decided_index == leader.applied_index,
                       what="joiner catch-up")
        types = [row[2] for row in await event_rows(pools[3])]
        assert "member_added" in types and "learner_promoted" in types
        assert await event_rows(pools[3]) == await event_rows(pools[nodes.index(leader)])
        assert nodes[3].state.members["node4"].is_learner is False
    finally:
        for node in nodes:
            await node.stop(transfer=False)
        for pool in pools:
            await pool.close()
        await drop_databases(pg_server, dsns)
