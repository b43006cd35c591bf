"""Synchronous modes (``on``: FIRST k, ``quorum``: ANY k): losing the primary's node loses no
acknowledged commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from ram import localcluster as lc
from tests.e2e.cluster import E2ECluster, Writer


@pytest.fixture(scope="module", params=["on", "quorum", "on-strict"])
async def sync_cluster(request: pytest.FixtureRequest) -> AsyncIterator[E2ECluster]:
    mode, _, strict = str(request.param).partition("-")
    cluster = E2ECluster(
        ha={"synchronous_mode": mode, "synchronous_node_count": 1, "synchronous_strict": bool(strict)}
    )
    cluster.strict = bool(strict)  # type: ignore[attr-defined]
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


async def test_no_healthy_standby_degrades_to_async_unless_strict(sync_cluster: E2ECluster) -> None:
    """Both replicas' PostgreSQL frozen (their nodes and the Raft quorum stay up): without strict,
    the primary drops to asynchronous replication, records it, and writes go on; with strict, writes
    wait until a standby confirms them again. Then the synchronous set returns."""
    e2e = sync_cluster
    for m in e2e.info.members:  # an earlier test of this module may have left a node dead
        if not lc.pid_alive(m.pid):
            e2e.restart_node(m.name)
    await e2e.wait_healthy(90)
    c = await e2e.wait_for(lambda c: bool(c["synchronous"]["standbys"]), 60, "a synchronous standby")
    primary = c["primary"]
    replicas = [m["name"] for m in c["members"] if m["name"] != primary]
    since = c["applied_index"]
    frozen = [pid for name in replicas for pid in e2e.instance_pids(name)]
    assert frozen
    # Straight to the primary: a multi-host client would hang connecting to a frozen server first.
    strict = bool(getattr(e2e, "strict", False))
    m = e2e.member(primary)
    async with Writer(f"postgresql://postgres@{m.host}:{m.pg_port}/postgres") as writer:
        await asyncio.sleep(0.5)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):  # a backend may have just exited
                os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # Without strict the degrade takes about report_timeout_s (1.5 s); strict must hold out.
            deadline = time.monotonic() + (6 if strict else 30)
            while time.monotonic() < deadline and not any(t > frozen_at + 0.5 for t, _ in writer.servers):
                await asyncio.sleep(0.1)
            resumed = [t for t, _ in writer.servers if t > frozen_at + 0.5]
            if strict:
                assert not resumed, "strict synchronous mode acknowledged writes with no standby confirming them"
            else:
                assert resumed, "writes stayed blocked although no synchronous standby is healthy (not strict)"
            assert {s for t, s in writer.servers if t > frozen_at} <= {m.host}
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        if strict:  # the standbys are back: the writes that waited are confirmed and go on
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(t > frozen_at + 0.5 for t, _ in writer.servers):
                await asyncio.sleep(0.1)
            assert any(t > frozen_at + 0.5 for t, _ in writer.servers), "writes did not resume after the thaw"
    events = (await e2e.api("GET", f"/events?after={since}&type=synchronous_standbys_changed")).json()["events"]
    degraded = [ev for ev in events if not ev["payload"]["standbys"] and "degraded" in ev["payload"]["reason"]]
    assert bool(degraded) is not strict, events
    c = await e2e.wait_for(lambda c: bool(c["synchronous"]["standbys"]), 60, "a synchronous standby again")
    assert c["primary"] == primary
    await e2e.wait_healthy(60)
