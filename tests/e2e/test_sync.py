"""Synchronous modes (``on``: FIRST k, ``quorum``: ANY k): losing the primary's node loses no
acknowledged commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.e2e.cluster import E2ECluster, Writer


@pytest.fixture(scope="module", params=["on", "quorum"])
async def sync_cluster(request: pytest.FixtureRequest) -> AsyncIterator[E2ECluster]:
    cluster = E2ECluster(ha={"synchronous_mode": request.param, "synchronous_node_count": 1})
    try:
        await cluster.start()
        await cluster.wait_for(lambda c: bool(c["synchronous"]["standbys"]), 150, "a committed synchronous standby")
        yield cluster
    finally:
        await cluster.close()


async def test_sync_node_loss_loses_no_acknowledged_write(sync_cluster: E2ECluster) -> None:
    e2e = sync_cluster
    c = await e2e.cluster()
    old = c["primary"]
    mode = c["synchronous"]["mode"]
    assert mode in ("on", "quorum") and c["synchronous"]["standbys"]
    conn = await e2e.connect(old)
    try:
        names = await conn.fetchval("SHOW synchronous_standby_names")
    finally:
        await conn.close()
    assert names, "the primary does not enforce synchronous replication"
    assert names.startswith("ANY" if mode == "quorum" else "FIRST"), names
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(1.5)
        killed_at = time.monotonic()
        e2e.kill_node(old)
        c = await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a new primary")
        new_host = e2e.member(c["primary"]).host
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s == new_host for t, s in writer.servers if t > killed_at):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    rows = set(await e2e.rows(c["primary"], writer.table))
    lost = [i for i in writer.acked if i not in rows]
    assert not lost, f"{len(lost)} acknowledged writes lost in synchronous mode, e.g. {lost[:5]}"
    assert len(writer.acked) > 20
