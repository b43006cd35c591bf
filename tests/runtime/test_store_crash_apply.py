"""A store crash between a commit and the durable apply (issue #14).

Applies commit with ``synchronous_commit = off``: their WAL may still sit in the store's WAL buffers
when the store crashes, and then the store comes back with a lower applied index than the node's.
The WAL writer of a dedicated store is frozen (SIGSTOP) so that the last apply is certainly not
written when every store process is killed (-9); the log writes before it are synchronous (the
committing backend flushes them itself), so exactly the apply tail is lost, as after a power cut.

Checked both ways the node finds out - the periodic seal of an idle node, and the next proposal -,
that a node restarted on such a store seals what it finds before it counts it as sealed, and that
afterwards the log and what was applied from it agree: every committed position is in
``pgraft.events`` exactly once, the projections equal the node's state, the applied index is the
node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
from collections.abc import AsyncIterator

import asyncpg

from ram.cluster.node import ClusterNode
from ram.config import NodeConfig
from ram.consensus.runtime.storage import open_store_pool
from ram.consensus.types import Role
from ram.eventstore import schema
from ram.eventstore.commands import PatchConfig
from ram.postgres import proctree
from ram.postgres.server import STORE_SETTINGS, PostgresServer
from ram.projections.sql import load_state
from tests.conftest import free_port, make_tempdir
from tests.runtime.helpers import cluster_configs
from tests.runtime.test_node_recovery import wait_for


async def _durable(server: PostgresServer) -> tuple[int, int, int]:
    """(applied index, events, distinct positions) as the store has them now."""
    conn = await _connect(server)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT applied_index FROM pgraft.applied) AS applied, count(*) AS events, "
            "count(DISTINCT position) AS positions FROM pgraft.events"
        )
        assert row is not None
        return int(row["applied"]), int(row["events"]), int(row["positions"])
    finally:
        await conn.close()


async def _connect(server: PostgresServer) -> asyncpg.Connection:
    """A connection once the store accepts them again (crash recovery takes a moment)."""
    for _ in range(300):
        with contextlib.suppress(OSError, asyncpg.CannotConnectNowError):
            return await asyncpg.connect(server.dsn("ram"), timeout=10)
        await asyncio.sleep(0.1)
    raise AssertionError("the store did not come back within 30 s")


@contextlib.asynccontextmanager
async def _walwriter_frozen(server: PostgresServer) -> AsyncIterator[None]:
    """The store's WAL writer stopped (SIGSTOP) inside the block: asynchronous commits stay unflushed."""
    conn = await _connect(server)
    try:
        pid = int(await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"))
    finally:
        await conn.close()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _crash(server: PostgresServer) -> int:
    """kill -9 of the postmaster and every process of the store: what is in shared memory is gone.
    Returns the killed postmaster's pid (for :func:`_restart`)."""
    postmaster = server.postmaster_pid()
    assert postmaster is not None
    tree = [postmaster, *proctree.children(postmaster)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proctree.reap(tree, kill_after=5.0)
    return postmaster


async def _restart(server: PostgresServer, postmaster: int) -> None:
    """Start the store again once the killed postmaster is reaped (a zombie still counts as a running
    server for ``pg_ctl status`` and for the new postmaster's lock file check)."""
    for _ in range(200):
        if not await asyncio.to_thread(os.path.exists, f"/proc/{postmaster}"):
            break
        await asyncio.sleep(0.05)
    await server.start()


async def _propose_until_lost(node: ClusterNode, server: PostgresServer, counter: list[int]) -> int:
    """Propose with the WAL writer frozen, crash the store, restart it; returns the applied index the
    node had. The store's applied index is then lower (the last apply was not written)."""
    async with _walwriter_frozen(server):
        for _ in range(5):
            counter[0] += 1
            await node.propose(PatchConfig(changes={f"crash.k{counter[0] % 3}": counter[0]}))
        applied = node.applied_index
        postmaster = _crash(server)
    await _restart(server, postmaster)
    durable, _, _ = await _durable(server)
    assert durable < applied, "the store kept every apply: this test did not crash between commit and apply"
    return applied


async def _assert_consistent(node: ClusterNode, server: PostgresServer) -> None:
    applied, events, positions = await _durable(server)
    assert applied == node.applied_index
    conn = await _connect(server)
    try:
        assert await load_state(conn) == node.state
        # Every position the node applied that yields events is there once (the primary key would
        # refuse a second copy; a gap would show as a missing position).
        rows = await conn.fetch("SELECT position, count(*) AS n FROM pgraft.events GROUP BY position ORDER BY 1")
        assert [r["position"] for r in rows] == sorted({r["position"] for r in rows})
        assert sum(r["n"] for r in rows) == events and len(rows) == positions
        assert node.state.events_applied == events
        assert max(r["position"] for r in rows) == node.state.last_position
    finally:
        await conn.close()


@dataclasses.dataclass
class _Rig:
    """One single-node cluster on a store of its own whose WAL writer waits 10 s (so that an
    apply's commit stays in the WAL buffers until a synchronous commit flushes it)."""

    server: PostgresServer
    config: NodeConfig
    pool: asyncpg.Pool
    node: ClusterNode

    async def new_node(self) -> ClusterNode:
        return await _start_node(self.config, self.pool)


async def _start_node(config: NodeConfig, pool: asyncpg.Pool) -> ClusterNode:
    """A node on the store, started; the timed seal is off (a crash must find the last apply
    unsealed) - a test turns it on where it wants it."""
    node = ClusterNode(config, pool)
    node.raft.settings = dataclasses.replace(node.raft.settings, seal_interval_s=3600.0)
    await node.start()
    return node


@contextlib.asynccontextmanager
async def _single_node_rig(prefix: str) -> AsyncIterator[_Rig]:
    base = make_tempdir(prefix)
    settings = dict(STORE_SETTINGS, wal_writer_delay="10s", wal_writer_flush_after="1GB")
    server = PostgresServer(datadir=base / "data", port=free_port(), listen_addresses="127.0.0.1", settings=settings)
    pool: asyncpg.Pool | None = None
    rig: _Rig | None = None
    first: ClusterNode | None = None
    try:
        await server.init()
        await server.start()
        admin = await asyncpg.connect(server.dsn())
        await admin.execute("CREATE DATABASE ram")
        await admin.close()
        await asyncio.to_thread(schema.upgrade, server.dsn("ram"))
        (config,) = cluster_configs([server.dsn("ram")], base)
        pool = await open_store_pool(server.dsn("ram"))
        first = node = await _start_node(config, pool)
        await wait_for(lambda: node.role is Role.LEADER and node.state.cluster_id is not None,
                       what="a bootstrapped single-node cluster")
        rig = _Rig(server, config, pool, node)
        yield rig
    finally:
        current = rig.node if rig is not None else first
        if current is not None:
            await current.stop(transfer=False)
        if pool is not None:
            await pool.close()
        with contextlib.suppress(Exception):
            await server.stop("immediate", 10)
        shutil.rmtree(base, ignore_errors=True)


async def test_store_crash_between_commit_and_durable_apply() -> None:
    async with _single_node_rig("ram-crash-apply-") as rig:
        node, server = rig.node, rig.server
        counter = [0]

        # 1. Found by the seal of an idle node.
        applied = await _propose_until_lost(node, server, counter)
        node.raft.settings = dataclasses.replace(node.raft.settings, seal_interval_s=0.2)
        await wait_for(lambda: node is not None and node.raft.stats.reapplied_batches >= 1, timeout=30,
                       what="the seal to write the lost applies again")
        assert node.applied_index == applied
        await _assert_consistent(node, server)

        # 2. Found by the next proposal.
        node.raft.settings = dataclasses.replace(node.raft.settings, seal_interval_s=3600.0)
        await asyncio.sleep(0.3)  # a seal in flight (0.2 s interval) finishes first
        before = node.raft.stats.reapplied_batches
        await _propose_until_lost(node, server, counter)
        result = await node.propose(PatchConfig(changes={"crash.after": True}), timeout=30)
        assert node.raft.stats.reapplied_batches > before
        assert node.applied_index >= result.index
        await _assert_consistent(node, server)
        assert node.state.dynamic_config["crash.after"] is True


async def test_restart_seals_unflushed_applies_before_counting_them() -> None:
    """A node stops with its last applies committed but not flushed (no seal at stop), a new run
    starts on the store and the store crashes right after: what the new run counted as sealed must
    have survived. Before the fix it took the store's applied index as sealed without a seal, the
    crash lost the tail, and the node fail-stopped on "applied index below the last seal"."""
    async with _single_node_rig("ram-crash-restart-") as rig:
        node, server = rig.node, rig.server
        await node.propose(PatchConfig(changes={"restart.before": 1}))
        async with _walwriter_frozen(server):
            for k in range(5):
                await node.propose(PatchConfig(changes={f"restart.k{k}": k}))  # waits for the apply write
            applied = node.applied_index
            await node.stop(transfer=False)
            rig.node = node = await rig.new_node()  # the new run; nothing else writes before the crash
            assert node.applied_index == applied
            postmaster = _crash(server)
        await _restart(server, postmaster)
        durable, _, _ = await _durable(server)
        assert durable == applied, f"the store lost applies the new run counted as sealed ({durable} < {applied})"
        result = await node.propose(PatchConfig(changes={"restart.after": True}), timeout=30)
        assert not node.failed.is_set() and node.applied_index >= result.index
        await _assert_consistent(node, server)
