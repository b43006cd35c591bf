"""Regression for the chaos run's hang (issue #17): an asynchronous replica that received WAL past
the new timeline's fork point must be rewound, must never count as healthy (nor become the
synchronous standby) before it streams, and writes on the new primary must not block.

Made deterministic: the synchronous standby's walreceiver is frozen (SIGSTOP) and its walsender on
the primary terminated; the primary commits with ``synchronous_commit = local`` (that WAL reaches
only the asynchronous replica); the primary's node is killed; the frozen receiver resumes; the
arbiter fails over to the synchronous standby (the only eligible candidate). The asynchronous
replica then holds WAL past the new timeline's fork point: PostgreSQL refuses to follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.cluster import E2ECluster, summary


@pytest.fixture(scope="module")
async def sync_on() -> AsyncIterator[E2ECluster]:
    cluster = E2ECluster(ha={"synchronous_mode": "on", "synchronous_node_count": 1})
    try:
        await cluster.start()
        await cluster.wait_for(lambda c: bool(c["synchronous"]["standbys"]), 90, "a committed synchronous standby")
        yield cluster
    finally:
        await cluster.close()


def _member(c: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in c["members"] if m["name"] == name)


async def test_replica_past_the_fork_is_rewound_and_writes_never_hang(sync_on: E2ECluster) -> None:
    e2e = sync_on
    c = await e2e.cluster()
    primary = c["primary"]
    (sync,) = c["synchronous"]["standbys"]
    (other,) = [m["name"] for m in c["members"] if m["name"] not in (primary, sync)]

    conn = await e2e.connect(sync)
    try:
        receiver = int(await conn.fetchval("SELECT pid FROM pg_stat_wal_receiver"))
    finally:
        await conn.close()
    writer = await e2e.connect(primary)
    watch = await e2e.connect(other)
    sync_conn = await e2e.connect(sync)
    await writer.execute("CREATE TABLE fork_probe (id serial PRIMARY KEY, pad text)")
    # Everything between the freeze and the kill stays well inside report_timeout_s (1.5 s): longer,
    # and the arbiter rightly replaces the synchronous standby that stopped confirming.
    os.kill(receiver, signal.SIGSTOP)
    try:
        # Cut its replication connection on the primary's side too: data already in the frozen
        # receiver's socket buffer would otherwise reach it when it resumes.
        await writer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = $1", sync
        )
        behind = int(await sync_conn.fetchval("SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn"))
        # One small commit: the few bytes past the fork are fewer than the new primary writes at its
        # promotion (the chaos case: a fork point taken from the new primary's current position
        # instead of its history file then hides the divergence).
        await writer.execute(
            "BEGIN; SET LOCAL synchronous_commit = local; INSERT INTO fork_probe (pad) VALUES ('x'); COMMIT"
        )
        deadline = time.monotonic() + 1.0
        ahead = 0
        while time.monotonic() < deadline:
            ahead = int(await watch.fetchval("SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn"))
            if ahead > behind:
                break
            await asyncio.sleep(0.01)
        e2e.kill_node(primary)
        assert ahead > behind, f"{other} did not receive more WAL than the frozen {sync} ({ahead} <= {behind})"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(receiver, signal.SIGCONT)
        for cn in (writer, watch, sync_conn):
            cn.terminate()

    c = await e2e.wait_for(lambda c: c["primary"] == sync and c["timeline"] is not None, 60, f"{sync} promoted")
    new_tl = c["timeline"]

    # From here on: writes on the new primary must never block for long, and the diverged replica is
    # never healthy or synchronous while it does not stream.
    longest = 0.0
    wrong: list[str] = []
    streamed = False
    deadline = time.monotonic() + 90
    conn = await e2e.connect(sync)
    try:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            started = time.monotonic()
            try:
                await conn.execute("INSERT INTO fork_probe (pad) VALUES ($1)", f"after-{i}", timeout=20)
            except TimeoutError:
                longest = max(longest, time.monotonic() - started)
                break
            longest = max(longest, time.monotonic() - started)
            streams = await e2e.streaming_from(other) == e2e.member(sync).host
            with contextlib.suppress(AssertionError):
                view = await e2e.cluster()
                m = _member(view, other)
                in_sync = other in view["synchronous"]["standbys"]
                if not streams and in_sync and m["healthy"]:
                    wrong.append(f"{other} healthy and synchronous while not streaming: {summary(view)}")
                if streams and m["healthy"] and (not view["synchronous"]["standbys"] or in_sync):
                    streamed = True
            if streamed:
                break
            await asyncio.sleep(0.2)
    finally:
        conn.terminate()
    assert not wrong, wrong[:3]
    assert longest < 8.0, f"a write on the new primary blocked for {longest:.1f} s"
    assert streamed, f"{other} never streamed from the new primary {sync} (timeline {new_tl})"
    # It was rewound onto the new timeline: it holds exactly the new primary's rows.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await e2e.rows(other, "fork_probe") == await e2e.rows(sync, "fork_probe"):
            break
        await asyncio.sleep(0.2)
    assert await e2e.rows(other, "fork_probe") == await e2e.rows(sync, "fork_probe")
