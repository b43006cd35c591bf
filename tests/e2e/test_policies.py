"""Maintenance mode, nofailover, and a network cut that isolates the primary — on real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import E2ECluster, Writer


async def _recover(e2e: E2ECluster, name: str) -> None:
    e2e.restart_node(name)
    await e2e.wait_healthy(90)


async def test_maintenance_mode_blocks_failover(e2e: E2ECluster) -> None:
    old = (await e2e.cluster())["primary"]
    reply = await e2e.api("POST", "/maintenance", json={"reason": "e2e"})
    assert reply.status_code == 200, reply.text
    try:
        e2e.kill_node(old)
        await asyncio.sleep(e2e_lease_wait(e2e) * 3)
        c = await e2e.cluster()
        assert c["primary"] == old and c["maintenance"], "a failover happened in maintenance mode"
        history = (await e2e.api("GET", "/history")).json()["operations"]
        assert not [op for op in history if op["kind"] == "failover" and op["old_primary"] == old
                    and op["outcome"] == "in_progress"]
    finally:
        reply = await e2e.api("DELETE", "/maintenance")
        assert reply.status_code == 200, reply.text
    # Resuming picks up the current state: the dead primary is replaced.
    await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a failover after resume")
    await _recover(e2e, old)


def e2e_lease_wait(e2e: E2ECluster) -> float:
    return 2.5


async def test_nofailover_is_respected(e2e: E2ECluster) -> None:
    c = await e2e.cluster()
    old = c["primary"]
    replicas = sorted(m["name"] for m in c["members"] if m["name"] != old)
    tagged, other = replicas
    reply = await e2e.api("PUT", f"/members/{tagged}/tags", json={"nofailover": True})
    assert reply.status_code == 200, reply.text
    try:
        e2e.kill_node(old)
        c = await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a failover")
        assert c["primary"] == other, f"{tagged} is tagged nofailover but {c['primary']} was promoted"
    finally:
        reply = await e2e.api("PUT", f"/members/{tagged}/tags", json={})
        assert reply.status_code == 200, reply.text
    await _recover(e2e, old)


IPTABLES = shutil.which("iptables") or next(
    (p for p in ("/usr/sbin/iptables", "/sbin/iptables") if os.path.exists(p)), None
)


@contextlib.contextmanager
def cut_between(a: str, others: list[str]) -> Iterator[None]:
    """Drop every packet between address ``a`` and each of ``others`` (both directions)."""
    rules = [r for b in others for r in (["-s", a, "-d", b], ["-s", b, "-d", a])]
    added: list[list[str]] = []
    try:
        for rule in rules:
            subprocess.run([str(IPTABLES), "-I", "INPUT", *rule, "-j", "DROP"], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run([str(IPTABLES), "-D", "INPUT", *rule, "-j", "DROP"], check=False, capture_output=True)


needs_iptables = pytest.mark.skipif(
    os.geteuid() != 0 or IPTABLES is None, reason="cutting the network needs root and iptables"
)


@needs_iptables
async def test_isolated_primary_fences_itself_and_majority_fails_over(e2e: E2ECluster) -> None:
    c = await e2e.cluster()
    old = c["primary"]
    old_host = e2e.member(old).host
    others = [m.host for m in e2e.info.members if m.name != old]
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(1.0)
        with cut_between(old_host, others):
            cut_at = time.monotonic()
            # The old primary can not renew its lease: it must stop accepting writes within the lease.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and await e2e.writable(old):
                await asyncio.sleep(0.1)
            fenced_after = time.monotonic() - cut_at
            assert not await e2e.writable(old), "the isolated primary still accepts writes"
            assert fenced_after < 5, f"fenced only after {fenced_after:.1f} s"
            c = await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a new primary in the majority")
            new_host = e2e.member(c["primary"]).host
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(s == new_host for t, s in writer.servers if t > cut_at):
                await asyncio.sleep(0.1)
    first_new = min(t for t, s in writer.servers if s == new_host and t > cut_at)
    late = [t - first_new for t, s in writer.servers if s == old_host and t >= first_new]
    assert not late, f"the old primary acknowledged writes after the new one accepted its first: {late[:3]}"
    # Healed: the old primary rejoins as a replica.
    c = await e2e.wait_healthy(90)
    assert c["primary"] != old and not await e2e.writable(old)


async def _action_outcome(e2e: E2ECluster, name: str, action: str, since: int, timeout: float) -> dict[str, Any]:
    """The ``member_action_completed`` event ``name`` reports for ``action`` after position ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await e2e.api("GET", f"/events?after={since}&type=member_action_completed")
        for ev in reply.json()["events"]:
            if ev["payload"]["name"] == name and ev["payload"]["action"] == action:
                return dict(ev["payload"])
        await asyncio.sleep(0.3)
    raise AssertionError(f"{name} did not report the end of its {action} within {timeout} s")


def _leave_marker(data_dir: Path) -> Path:
    """A file in the data directory, owned like it, that a re-clone must not keep."""
    marker = data_dir / "ram_e2e_marker"
    marker.write_text("from before the reinit\n")
    shutil.chown(marker, user=data_dir.owner())
    return marker


async def test_restart_and_reinit_members(e2e: E2ECluster) -> None:
    c = await e2e.wait_healthy(60)
    primary = c["primary"]
    replica = sorted(m["name"] for m in c["members"] if m["name"] != primary)[0]
    member = e2e.member(replica)

    # Restart of a replica: a new postmaster, same role, streaming again.
    before = e2e.postmaster_pid(member)
    reply = await e2e.api("POST", f"/members/{replica}/restart")
    assert reply.status_code == 202, reply.text
    outcome = await _action_outcome(e2e, replica, "restart", reply.json()["write"]["index"] - 1, 60)
    assert outcome["ok"], outcome
    assert e2e.postmaster_pid(member) not in (None, before)
    await e2e.wait_healthy(60)

    # The primary is never re-cloned; a second request for the same member waits for the first.
    reply = await e2e.api("POST", f"/members/{primary}/reinit")
    assert reply.status_code == 409 and "primary" in reply.json()["error"], reply.text

    # Reinit of a replica: its data directory is replaced by a fresh clone that holds the primary's data.
    marker = _leave_marker(Path(member.pg_data_dir))
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(0.5)
        reply = await e2e.api("POST", f"/members/{replica}/reinit")
        assert reply.status_code == 202, reply.text
        again = await e2e.api("POST", f"/members/{replica}/restart")
        assert again.status_code == 409 and "pending" in again.json()["error"], again.text
        outcome = await _action_outcome(e2e, replica, "reinit", reply.json()["write"]["index"] - 1, 120)
        assert outcome["ok"], outcome
        await asyncio.sleep(0.5)
    assert not marker.exists(), "reinit kept the old data directory"
    await e2e.wait_healthy(60)
    expected = set(writer.acked)
    deadline = time.monotonic() + 30
    while set(await e2e.rows(replica, writer.table)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    assert set(await e2e.rows(replica, writer.table)) == expected

    # Restart of the primary: in place, no failover, writes resume on the same server.
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(0.5)
        reply = await e2e.api("POST", f"/members/{primary}/restart")
        assert reply.status_code == 202, reply.text
        outcome = await _action_outcome(e2e, primary, "restart", reply.json()["write"]["index"] - 1, 60)
        assert outcome["ok"], outcome
        await asyncio.sleep(1.0)
    assert (await e2e.cluster())["primary"] == primary
    last_server = writer.servers[-1][1]
    assert last_server == e2e.member(primary).host
    await e2e.wait_healthy(60)


def _no_late_acks(writer: Writer, old_host: str, since: float) -> None:
    """No write acknowledged by the old primary after another server acknowledged its first."""
    first_new = min(t for t, s in writer.servers if s != old_host and t > since)
    late = [t - first_new for t, s in writer.servers if s == old_host and t >= first_new]
    assert not late, f"the old primary acknowledged writes after the new one accepted its first: {late[:3]}"


async def _taken_over(e2e: E2ECluster, writer: Writer, old: str, since: float) -> None:
    """Wait until another member is primary and the writer had a write acknowledged there."""
    c = await e2e.wait_for(lambda c: c["primary"] not in (None, old), 30, "a new primary")
    new_host = e2e.member(c["primary"]).host
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(s == new_host for t, s in writer.servers if t > since):
        await asyncio.sleep(0.1)


async def _fenced_within(e2e: E2ECluster, name: str, since: float, bound: float) -> float:
    deadline = time.monotonic() + bound + 10
    while time.monotonic() < deadline and await e2e.writable(name):
        await asyncio.sleep(0.05)
    took = time.monotonic() - since
    assert not await e2e.writable(name), f"{name} still accepts writes"
    assert took < bound, f"{name} stopped accepting writes only after {took:.1f} s"
    return took


async def test_ram_killed_alone_its_guard_fences_the_primary(e2e: E2ECluster) -> None:
    """kill -9 of `ram` only: its PostgreSQL would accept writes forever; the fence guard stops it."""
    c = await e2e.wait_healthy(60)
    old = c["primary"]
    member = e2e.member(old)
    assert member.pid is not None
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(member.pid, signal.SIGKILL)
        await _fenced_within(e2e, old, killed_at, 3.0)
        await _taken_over(e2e, writer, old, killed_at)
    _no_late_acks(writer, member.host, killed_at)
    e2e.restart_node(old)
    c = await e2e.wait_healthy(90)
    assert c["primary"] != old and not await e2e.writable(old)


async def test_frozen_ram_is_fenced_and_rejoins_when_it_thaws(e2e: E2ECluster) -> None:
    """SIGSTOP of the primary's `ram` (a hung process): the guard fences within the lease; after
    SIGCONT the old node finds itself demoted and rejoins."""
    c = await e2e.wait_healthy(60)
    old = c["primary"]
    member = e2e.member(old)
    assert member.pid is not None
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(0.5)
        frozen_at = time.monotonic()
        os.kill(member.pid, signal.SIGSTOP)
        try:
            await _fenced_within(e2e, old, frozen_at, 4.0)
            await _taken_over(e2e, writer, old, frozen_at)
        finally:
            os.kill(member.pid, signal.SIGCONT)
        await asyncio.sleep(1.0)
    _no_late_acks(writer, member.host, frozen_at)
    c = await e2e.wait_healthy(90)
    assert c["primary"] != old and not await e2e.writable(old)
