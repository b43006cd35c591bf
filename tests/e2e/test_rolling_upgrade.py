"""A rolling upgrade of RAM across a running cluster (issue #16), the way docs/deploy.md step 6 says:
a 3-node cluster runs an older RAM (a commit of this repository, exported with ``git archive`` and
put first on PYTHONPATH); each replica in turn is stopped and started on the current code, then the
primary is switched over to an upgraded node and upgraded last. Old and new nodes run side by side
on the wire (same peer protocol) and each node's store is migrated by the new code when it starts.

Checked: the cluster is healthy after every step, a client writing all along loses no acknowledged
write, every node ends on the new store schema, and the nodes' events agree.

Needs the older commit in the local git history (a shallow clone lacks it: skipped, with the reason).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ram import localcluster as lc
from ram.eventstore import schema
from ram.eventstore.schema import SCHEMA_HEAD
from tests.conftest import make_tempdir
from tests.e2e.cluster import E2ECluster, Writer

REPO = Path(__file__).resolve().parents[2]
#: The older release: the last commit of the 2026-11-29 morning sessions (peer protocol v2, store
#: schema 0005) - what an operator upgrading today runs.
OLD_COMMIT = "fb281ff"
OLD_SCHEMA = "0005"


def _old_tree_problem() -> str | None:
    if shutil.which("git") is None:
        return "git is not installed"
    probe = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                           capture_output=True, check=False)
    return None if probe.returncode == 0 else f"commit {OLD_COMMIT} is not in this clone's history (shallow clone?)"


pytestmark = pytest.mark.skipif(_old_tree_problem() is not None, reason=_old_tree_problem() or "")


def _export_old(target: Path) -> Path:
    archive = target / "old.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), OLD_COMMIT, "ram", "migrations",
                    "alembic.ini"], check=True, capture_output=True)
    tree = target / "old"
    tree.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="tar")
    return tree


async def _schema(cluster: E2ECluster, name: str) -> str:
    conn = await asyncpg.connect(lc.store_server(cluster.info).dsn(f"ram_{name}"), timeout=5)
    try:
        return str(await conn.fetchval("SELECT version_num FROM public.pgraft_alembic_version"))
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def old_cluster() -> AsyncIterator[tuple[E2ECluster, dict[str, str], dict[str, str]]]:
    work = make_tempdir("ram-upgrade-")
    cluster = E2ECluster()
    try:
        old_tree = await asyncio.to_thread(_export_old, work)
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        old_env = {**base, "PYTHONPATH": str(old_tree)}
        await lc.prepare(cluster.info, None)
        # The stores as the older release made them (prepare migrated them with today's code).
        for member in cluster.info.members:
            dsn = lc.store_server(cluster.info).dsn(f"ram_{member.name}")
            await asyncio.to_thread(schema.downgrade, dsn, OLD_SCHEMA)
        for member in cluster.info.members:
            lc.start_node(cluster.info, member, env=old_env)
        await cluster.wait_healthy(150)
        yield cluster, old_env, base
    finally:
        await cluster.close()
        shutil.rmtree(work, ignore_errors=True)


async def _restart_on(cluster: E2ECluster, name: str, env: dict[str, str]) -> None:
    member = cluster.member(name)
    await asyncio.to_thread(lc.stop_node, member, sig=signal.SIGTERM, timeout=30)
    lc.start_node(cluster.info, member, env=env)
    # The restarted node migrates its store as it starts; only then can it be healthy again (the
    # leader may still call it healthy from before the restart for a moment).
    deadline = asyncio.get_running_loop().time() + 90
    while await _schema(cluster, name) != SCHEMA_HEAD:
        assert asyncio.get_running_loop().time() < deadline, f"{name}'s store was not upgraded"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    await cluster.wait_healthy(120)


async def test_rolling_upgrade_keeps_the_cluster_writable(
    old_cluster: tuple[E2ECluster, dict[str, str], dict[str, str]],
) -> None:
    cluster, _old_env, new_env = old_cluster
    c = await cluster.wait_healthy(60)
    assert {await _schema(cluster, m.name) for m in cluster.info.members} == {OLD_SCHEMA}, "not the old RAM"
    primary = c["primary"]
    replicas = [m.name for m in cluster.info.members if m.name != primary]
    async with Writer(cluster.info.writer_dsn()) as writer:
        await asyncio.sleep(1.0)
        for name in replicas:  # replicas first, one at a time: old and new side by side
            await _restart_on(cluster, name, new_env)
            assert await _schema(cluster, name) == SCHEMA_HEAD
            await asyncio.sleep(1.0)
        # Then hand the primary to an upgraded node and upgrade the old primary last.
        reply = await cluster.api("POST", "/switchover", json={"candidate": replicas[0]})
        assert reply.status_code == 202, reply.text
        await cluster.wait_for(lambda c: c["primary"] == replicas[0], 60, "the switchover to an upgraded node")
        await cluster.wait_healthy(60)
        await _restart_on(cluster, primary, new_env)
        await asyncio.sleep(1.0)
    assert {await _schema(cluster, m.name) for m in cluster.info.members} == {SCHEMA_HEAD}
    final = (await cluster.wait_healthy(60))["primary"]
    rows = set(await cluster.rows(final, writer.table))
    lost = [i for i in writer.acked if i not in rows]
    assert writer.acked and not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    # Every node applied the same events (old and new code folded the same log).
    events = []
    for m in cluster.info.members:
        conn = await asyncpg.connect(lc.store_server(cluster.info).dsn(f"ram_{m.name}"), timeout=5)
        try:
            events.append([tuple(r) for r in await conn.fetch(
                "SELECT position, sub, type, payload::text FROM pgraft.events ORDER BY position, sub")])
        finally:
            await conn.close()
    shortest = min(len(e) for e in events)
    assert shortest > 0 and all(e[:shortest] == events[0][:shortest] for e in events)
