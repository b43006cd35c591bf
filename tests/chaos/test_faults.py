"""The fault library does what it says, on a real cluster (one cluster for the module, ~1 min):
a network cut stops Raft *and* replication and the API forwarding between the cut members (not
only the packets addressed from member to member), a one-way cut only one direction's connections,
a frozen node is frozen, the store fault makes the node lose its store, and every undo restores it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults import checkers
from tests.faults.cluster import ChaosCluster
from tests.faults.faults import FaultInjector, Freeze, NetCut, StoreDown, partition_drops
from tests.faults.net import usable as net_usable

pytestmark = pytest.mark.skipif(net_usable() is not None or os.geteuid() != 0,
                                reason=net_usable() or "fault injection needs root")


@pytest.fixture(scope="module")
async def chaos() -> AsyncIterator[tuple[ChaosCluster, FaultInjector]]:
    cluster = ChaosCluster(3)
    fx = FaultInjector(cluster)
    try:
        await cluster.start(before_nodes=fx.open_net)
        yield cluster, fx
    finally:
        await fx.close()
        await cluster.close()


async def _wal_stalls(cluster: ChaosCluster, primary: str, replica: str, seconds: float = 3.0) -> bool:
    """True if WAL written on the primary now does not reach the replica within ``seconds``
    (pg_stat_wal_receiver keeps saying "streaming" on a silently stalled connection until
    wal_receiver_timeout, so look at what arrives)."""
    conn = await cluster.connect(primary)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS chaos_probe (at timestamptz)")
        await conn.execute("INSERT INTO chaos_probe VALUES (now())")
        target = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    finally:
        await conn.close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rc = await cluster.connect(replica)
        try:
            if await rc.fetchval("SELECT pg_last_wal_receive_lsn() >= $1::text::pg_lsn", target):
                return False
        finally:
            await rc.close()
        await asyncio.sleep(0.2)
    return True


def _connections(host: str) -> list[str]:
    """Established TCP connections with ``host`` at either end (ss -tn)."""
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"{host}:" in line]


async def test_sources_of_member_connections_are_loopback(chaos: tuple[ChaosCluster, FaultInjector]) -> None:
    """Why cuts match on cgroups: replication connects from 127.0.0.1, not from the member's address."""
    cluster, _ = chaos
    c = await checkers.wait_converged(cluster, 60)
    assert c[0] is not None, c
    primary = cluster.member(c[1])
    lines = [ln for ln in _connections(primary.host) if f"{primary.host}:{primary.pg_port}" in ln]
    assert any(" 127.0.0.1:" in ln for ln in lines), lines


async def test_isolating_a_replica_cuts_raft_and_replication(chaos: tuple[ChaosCluster, FaultInjector]) -> None:
    cluster, fx = chaos
    took, primary = await checkers.wait_converged(cluster, 60)
    assert took is not None, primary
    names = [m.name for m in cluster.info.members]
    replica = next(n for n in names if n != primary)
    others = [n for n in names if n != replica]
    fault = await fx.apply(NetCut("isolate_node", [replica], drops=partition_drops([replica], others)))
    try:
        assert await _wal_stalls(cluster, primary, replica), "replication survived the cut"
        # Raft: the majority marks it unhealthy; the replica itself has no leader.
        await cluster.wait_for(lambda c: not next(m for m in c["members"] if m["name"] == replica)["healthy"],
                               20, f"{replica} unhealthy")
        answers = await cluster.cluster_answers(timeout=3)
        assert answers.get(replica, {}).get("raft_leader") in (None, ""), answers.get(replica)
    finally:
        await fx.undo(fault)
    took, _ = await checkers.wait_converged(cluster, 60)
    assert took is not None, "no convergence after healing"


async def test_one_way_cut_stops_the_cut_direction(chaos: tuple[ChaosCluster, FaultInjector]) -> None:
    """primary -> replica dropped: WAL stops arriving on the replication connection the *replica*
    opened (from 127.0.0.1; the primary's packets go to 127.0.0.1 and only the connection mark says
    whose they are). The other direction alone would not stop the WAL (the replica's acks are lost,
    the data still arrives until the primary's send window is full), as on a real network."""
    cluster, fx = chaos
    took, primary = await checkers.wait_converged(cluster, 60)
    assert took is not None, primary
    replica = next(m.name for m in cluster.info.members if m.name != primary)
    fault = await fx.apply(NetCut("one_way", [primary, replica], drops=[(primary, replica)]))
    try:
        assert await _wal_stalls(cluster, primary, replica), "replication survived the one-way cut"
    finally:
        await fx.undo(fault)
    took, why = await checkers.wait_converged(cluster, 60)
    assert took is not None, why


async def test_freeze_node_and_store_down_and_undo(chaos: tuple[ChaosCluster, FaultInjector]) -> None:
    cluster, fx = chaos
    took, primary = await checkers.wait_converged(cluster, 60)
    assert took is not None, primary
    replica = next(m.name for m in cluster.info.members if m.name != primary)
    fault = await fx.apply(Freeze("freeze_node", [replica], what="node"))
    try:
        await cluster.wait_for(lambda c: not next(m for m in c["members"] if m["name"] == replica)["healthy"],
                               20, f"frozen {replica} unhealthy")
    finally:
        await fx.undo(fault)
    fault = await fx.apply(StoreDown("store_down", [replica]))
    try:
        with pytest.raises(Exception, match="not currently accepting connections"):
            await cluster.store_fetch(replica, "SELECT 1")
    finally:
        await fx.undo(fault)
    took, why = await checkers.wait_converged(cluster, 60)
    assert took is not None, why
    assert (await checkers.events_diverge(cluster))["first_difference"] is None
