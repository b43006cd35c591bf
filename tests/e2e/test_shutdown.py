"""Stopping a node (SIGTERM: `systemctl stop ram`, `ram cluster down`) ends within a bound its
supervisor can wait for, also when its PostgreSQL's clean shutdown hangs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from ram import localcluster as lc
from ram.ha.controller import SHUTDOWN_FAST_STOP_S
from tests.e2e.cluster import E2ECluster

#: What `ram cluster down` waits before SIGKILL (the systemd unit allows 60 s).
_SUPERVISOR_PATIENCE_S = 30.0


def _checkpointer(pids: list[int]) -> int:
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"checkpointer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise AssertionError(f"no checkpointer among {pids}")


async def test_sigterm_ends_the_node_in_time_although_its_postgres_clean_shutdown_hangs() -> None:
    """A replica's checkpointer frozen (as by a stalled disk): PostgreSQL's fast shutdown waits for
    a shutdown restartpoint that never comes. The node turns it into an immediate one and exits
    before its supervisor would SIGKILL it, with PostgreSQL stopped, and its log says so. (A
    primary's PostgreSQL can not hold its node that long: once the node stops renewing its lease,
    the fence guard kills it.)"""
    e2e = E2ECluster()
    frozen: int | None = None
    try:
        await e2e.start()
        c = await e2e.wait_healthy(90)
        replica = e2e.member(next(m["name"] for m in c["members"] if m["name"] != c["primary"]))
        assert replica.pid is not None
        postmaster = e2e.postmaster_pid(replica)
        assert postmaster is not None
        frozen = _checkpointer(e2e.instance_pids(replica.name))
        os.kill(frozen, signal.SIGSTOP)
        started = time.monotonic()
        os.kill(replica.pid, signal.SIGTERM)
        while lc.pid_alive(replica.pid) and time.monotonic() - started < 90:
            await asyncio.sleep(0.1)
        took = time.monotonic() - started
        log = await asyncio.to_thread(Path(replica.log_file).read_text, errors="replace")
        assert not lc.pid_alive(replica.pid), "the node did not exit within 90 s"
        assert took < _SUPERVISOR_PATIENCE_S, f"the node took {took:.1f} s to stop:\n{log[-4000:]}"
        premise = f"{took:.1f} s: the fast shutdown did not hang - test premise gone\n{log[-6000:]}"
        assert took >= SHUTDOWN_FAST_STOP_S - 1, premise
        assert not lc.pid_alive(postmaster), "the node left its PostgreSQL running"
        assert "postgres stopped with the node" in log and "mode=immediate" in log, log[-4000:]
        assert "shutdown step done step=ha" in log, log[-4000:]
    finally:
        if frozen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
        await e2e.close()
