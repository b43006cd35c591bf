"""Bootstrap, node loss, PostgreSQL crash, rejoin by rewind, switchover — on real PostgreSQL servers.

The tests in this module share one cluster and run in order: each starts from the healthy state the
previous one left. Timings are generous upper bounds; bench/failover.py measures speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from tests.e2e.cluster import E2ECluster, Writer


async def test_bootstrap_streams_to_every_replica(e2e: E2ECluster) -> None:
    c = await e2e.cluster()
    primary = c["primary"]
    assert primary and sum(m["role"] == "primary" for m in c["members"]) == 1
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(1.0)
    assert writer.acked, "no write was acknowledged"
    assert {server for _, server in writer.servers} == {e2e.member(primary).host}
    for m in c["members"]:
        await _wait_rows(e2e, m["name"], writer.acked, writer.table)
    assert {e["type"] for e in (await e2e.api("GET", "/events?limit=1000")).json()["events"]} >= {
        "cluster_bootstrapped",
        "primary_promoted",
        "replica_following",
    }
    # The Raft leader moves off the primary's node (so losing that node needs no election first).
    c = await e2e.wait_for(lambda c: c["raft_leader"] not in (None, c["primary"]), 20, "the leader off the primary")
    assert c["primary"] == primary


async def _wait_rows(e2e: E2ECluster, name: str, expected: list[int], table: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    rows: list[int] = []
    while time.monotonic() < deadline:
        rows = await e2e.rows(name, table)
        if set(expected) <= set(rows):
            return
        await asyncio.sleep(0.2)
    missing = sorted(set(expected) - set(rows))
    raise AssertionError(f"{name} is missing {len(missing)} acknowledged rows, e.g. {missing[:5]}")


async def test_node_loss_fails_over_and_old_primary_rejoins(e2e: E2ECluster) -> None:
    old = (await e2e.cluster())["primary"]
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        e2e.kill_node(old)
        c = await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a new primary")
        new = c["primary"]
        new_host = e2e.member(new).host
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s == new_host for t, s in writer.servers if t > killed_at):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    assert any(s == new_host for t, s in writer.servers if t > killed_at), "no write reached the new primary"
    unavailable = writer.unavailability(killed_at)
    assert unavailable < 20, f"writes unavailable for {unavailable:.1f} s"
    old_host = e2e.member(old).host
    first_new = min(t for t, s in writer.servers if s == new_host and t > killed_at)
    assert not any(s == old_host and t > first_new for t, s in writer.servers), "old primary acked after the new"
    history = (await e2e.api("GET", "/history")).json()["operations"]
    assert history[-1]["kind"] == "failover" and history[-1]["new_primary"] == new

    # The old primary comes back: it must never accept writes, rewind onto the new timeline, stream.
    e2e.restart_node(old)
    c = await e2e.wait_healthy(60)
    assert c["primary"] == new
    assert not await e2e.writable(old)
    # Async mode may lose the last writes the dead primary acknowledged; what the new primary holds,
    # every member holds (the rewound old primary included).
    reference = await e2e.rows(new, writer.table)
    for m in c["members"]:
        await _wait_rows(e2e, m["name"], reference, writer.table)
    assert (await e2e.rows(old, writer.table))[: len(reference)] == reference


async def test_postgres_crash_on_primary_is_restarted_in_place(e2e: E2ECluster) -> None:
    c = await e2e.cluster()
    primary = c["primary"]
    timeline = c["timeline"]
    e2e.crash_postgres(primary)
    await asyncio.sleep(0.5)
    c = await e2e.wait_healthy(60)
    # primary_start_timeout_s (30 s) lets it restart in place: no failover, same timeline.
    assert c["primary"] == primary and c["timeline"] == timeline
    assert await e2e.writable(primary)


async def test_switchover_to_a_named_replica_and_back(e2e: E2ECluster) -> None:
    # The previous test crashed and restarted the primary: its replicas stream again within a second
    # or two (wal_retrieve_retry_interval), and a switchover to a candidate that does not stream yet
    # is refused by design.
    c = await e2e.wait_healthy(60)
    old = c["primary"]
    target = next(m["name"] for m in c["members"] if m["name"] != old)
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(0.5)
        reply = await e2e.api("POST", "/switchover", json={"candidate": target})
        assert reply.status_code == 202, reply.text
        await e2e.wait_for(lambda c: c["primary"] == target, 30, f"{target} to become primary")
        await e2e.wait_healthy(60)
        await asyncio.sleep(0.5)
    # The old primary follows the new one without a rewind.
    events = (await e2e.api("GET", "/events?limit=1000&type=replica_rejoined")).json()["events"]
    assert not [e for e in events if e["payload"]["name"] == old and e["position"] > reply.json()["write"]["index"]]
    reference = await e2e.rows(target, writer.table)
    assert set(writer.acked) <= set(reference), "a switchover lost an acknowledged write"
    await _wait_rows(e2e, old, reference, writer.table)
    # And back.
    reply = await e2e.api("POST", "/switchover", json={"candidate": old})
    assert reply.status_code == 202, reply.text
    await e2e.wait_for(lambda c: c["primary"] == old, 30, f"{old} to become primary again")
    await e2e.wait_healthy(60)
    # Each switchover is one row of the history (the arbiter's acceptance updates the request).
    since = reply.json()["write"]["index"]
    ops = (await e2e.api("GET", "/history")).json()["operations"]
    switchovers = [op for op in ops if op["kind"] == "switchover" and op["started_position"] >= since]
    assert [(op["outcome"], op["candidate"]) for op in switchovers] == [("succeeded", old)], switchovers


async def test_switchover_refusals(e2e: E2ECluster) -> None:
    c = await e2e.cluster()
    primary = c["primary"]
    reply = await e2e.api("POST", "/switchover", json={"candidate": primary})
    assert reply.status_code == 400 and "already the primary" in reply.json()["error"]
    reply = await e2e.api("POST", "/switchover", json={"candidate": "ghost"})
    assert reply.status_code == 400 and "ghost" in reply.json()["error"]
    reply = await e2e.api("POST", "/failover", json={"candidate": next(m["name"] for m in c["members"]
                                                                      if m["name"] != primary)})
    assert reply.status_code == 409 and "use a switchover" in reply.json()["error"]


def _log_size(path: str) -> int:
    with open(path, "rb") as f:
        return f.seek(0, 2)


def _log_since(path: str, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _processes_on(data_dir: str, program: str) -> list[int]:
    """Pids of ``program`` processes (by executable, not a wrapper such as runuser) naming ``data_dir``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if Path(argv[0]).name == program and data_dir in " ".join(argv):
                    out.append(int(entry.name))
    return out


async def test_ram_killed_mid_rewind_rejoins_cleanly(e2e: E2ECluster) -> None:
    """kill -9 of `ram` while it rewinds its former primary: the rewind dies with it (no orphan
    keeps writing into the data directory), and the restarted node rejoins with the primary's data."""
    c = await e2e.wait_healthy(60)
    old = c["primary"]
    member = e2e.member(old)
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(0.5)
        e2e.kill_node(old)
        c = await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a new primary")
        await asyncio.sleep(1.0)
    new = c["primary"]
    offset = _log_size(member.log_file)
    e2e.restart_node(old)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "keeper action=Rewind" not in _log_since(member.log_file, offset):
        await asyncio.sleep(0.02)
    assert "keeper action=Rewind" in _log_since(member.log_file, offset), "the old primary did not rewind"
    rewind_deadline = time.monotonic() + 3
    while time.monotonic() < rewind_deadline and not _processes_on(member.pg_data_dir, "pg_rewind"):
        await asyncio.sleep(0.01)
    assert member.pid is not None
    rewinding = _processes_on(member.pg_data_dir, "pg_rewind")
    os.kill(member.pid, signal.SIGKILL)
    if rewinding:  # caught in the act: it must stop with ram, not finish on its own a second later
        orphans_deadline = time.monotonic() + 0.5
        while time.monotonic() < orphans_deadline and _processes_on(member.pg_data_dir, "pg_rewind"):
            await asyncio.sleep(0.02)
        assert not _processes_on(member.pg_data_dir, "pg_rewind"), "pg_rewind outlived the ram that started it"
    await asyncio.sleep(0.5)
    e2e.restart_node(old)
    c = await e2e.wait_healthy(120)
    assert c["primary"] == new
    await _wait_rows(e2e, old, await e2e.rows(new, writer.table), writer.table, timeout=30)
