"""Committed lease lengths end to end: nodes whose ``ha.lease_s`` is longer than 2 s commit it before
they use it, a new Raft leader presumes it for grants it never saw, and a node restarted with a
shorter lease commits the shorter one only once its previous process's leases have run out.

The timing argument itself (every node with settings of its own) is property-tested in
tests/ha/test_lease.py; this checks the wiring on real nodes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ram import localcluster as lc
from ram.ha.lease import lowering_delay
from ram.ha.settings import HASettings
from tests.e2e.cluster import E2ECluster

LEASE_S = 3.0


@pytest.fixture(scope="module")
async def e2e() -> AsyncIterator[E2ECluster]:
    cluster = E2ECluster(ha={"lease_s": LEASE_S})
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()


async def _leases(e2e: E2ECluster) -> dict[str, float | None]:
    return {m["name"]: m["lease_s"] for m in (await e2e.cluster())["members"]}


async def _announced(e2e: E2ECluster, name: str) -> list[float]:
    page = (await e2e.api("GET", "/events", params={"type": "member_lease_announced", "limit": 1000})).json()
    return [e["payload"]["lease_s"] for e in page["events"] if e["payload"]["name"] == name]


async def test_every_member_commits_its_longer_lease(e2e: E2ECluster) -> None:
    await e2e.wait_for(
        lambda c: all(m["lease_s"] == LEASE_S for m in c["members"]), 20, f"every member's lease_s {LEASE_S}"
    )
    for member in e2e.info.members:
        assert await _announced(e2e, member.name) == [LEASE_S]  # once, not on every renewal


async def test_a_shorter_lease_is_committed_only_after_the_old_ones_ran_out(e2e: E2ECluster) -> None:
    cluster = await e2e.cluster()
    name = next(m["name"] for m in cluster["members"] if m["role"] != "primary" and not m["is_raft_leader"])
    member = e2e.member(name)
    assert lc.stop_node(member, timeout=30)
    config = Path(member.config_file)
    text = await asyncio.to_thread(config.read_text)
    assert f"lease_s = {LEASE_S}" in text
    await asyncio.to_thread(config.write_text, text.replace(f"lease_s = {LEASE_S}", "lease_s = 1.0"))
    started = time.monotonic()
    e2e.restart_node(name)
    await e2e.wait_for(lambda c: next(m for m in c["members"] if m["name"] == name)["lease_s"] == 1.0, 30,
                       f"{name}'s lease_s 1.0 committed")
    took = time.monotonic() - started
    # Its previous process may have held a 3 s lease: a new leader must presume that long until then.
    assert took >= lowering_delay(LEASE_S, HASettings(lease_s=1.0)), took
    assert await _announced(e2e, name) == [LEASE_S, 1.0]
    assert (await _leases(e2e)) == {m.name: (1.0 if m.name == name else LEASE_S) for m in e2e.info.members}
    await e2e.wait_healthy(60)


async def test_a_new_raft_leader_presumes_the_longest_committed_lease(e2e: E2ECluster) -> None:
    """The node restarted with a 1 s lease leads Raft: for grants it never saw it presumes the others'
    committed 3 s, not max(2 s, its own 1 s) as before lease lengths were committed."""
    cluster = await e2e.cluster()
    target = next(m["name"] for m in cluster["members"] if m["lease_s"] == 1.0)
    assert cluster["raft_leader"] != target  # a non-leader was restarted, and leads only when asked
    log = Path(e2e.member(target).log_file)
    before = (await asyncio.to_thread(log.stat)).st_size
    async with e2e.http(timeout=15) as client:
        reply = await client.post(cluster["raft_leader_api"] + "/raft/leader", json={"to": target})
    assert reply.status_code == 200, reply.text
    await e2e.wait_for(lambda c: c["raft_leader"] == target, 20, f"{target} leading Raft")
    expected = HASettings(lease_s=1.0).arbiter_wait_for(LEASE_S)
    assert expected > HASettings(lease_s=1.0).arbiter_wait_for(2.0)  # what it presumed before
    deadline = time.monotonic() + 10
    while True:
        text = (await asyncio.to_thread(log.read_bytes))[before:].decode(errors="replace")
        found = re.findall(r"arbiter active term=\d+ .*presumed_wait_s=([0-9.]+)", text)
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert found and float(found[-1]) == pytest.approx(expected, abs=0.01), found
    await e2e.wait_healthy(60)
