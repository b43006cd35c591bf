"""Failover benchmark: write unavailability seen by a client, lost acknowledged writes, split-brain
incidents and rejoin time, on a real 3-node cluster on this machine (ram.localcluster).

The client writes through the libpq multi-host string (target_session_attrs=read-write) as fast as it
can, one row per transaction, and records every acknowledged write and which server took it.

    python bench/failover.py --repeat 5                      # all scenarios, async mode
    python bench/failover.py --scenario node_loss --sync on  # one scenario, synchronous mode

Prints one JSON object (last line) keyed by scenario with unavailability_s_median/max,
lost_acked_writes, split_brain and rejoin_s_median: the time from restarting the old primary's node
(node_loss) or healing the network (primary_isolated) until its PostgreSQL streams WAL from the new
primary (pg_stat_wal_receiver on the old primary, polled every 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.cluster import E2ECluster, Writer
from tests.e2e.test_policies import IPTABLES, cut_between

SCENARIOS = ("node_loss", "pg_crash", "primary_isolated", "switchover")


async def one_run(e2e: E2ECluster, scenario: str) -> dict[str, Any]:
    c = await e2e.wait_healthy(120)
    old = c["primary"]
    old_host = e2e.member(old).host
    others = [m.host for m in e2e.info.members if m.name != old]
    rejoin_s: float | None = None
    async with Writer(e2e.info.writer_dsn()) as writer:
        await asyncio.sleep(1.0)
        fault_at = time.monotonic()
        if scenario == "node_loss":
            e2e.kill_node(old)
        elif scenario == "pg_crash":
            e2e.crash_postgres(old)
        elif scenario == "switchover":
            target = next(m["name"] for m in c["members"] if m["name"] != old)
            reply = await e2e.api("POST", "/switchover", json={"candidate": target})
            if reply.status_code != 202:
                raise RuntimeError(f"switchover refused: {reply.text}")
        if scenario == "primary_isolated":
            with cut_between(old_host, others):
                await _wait_new_writes(writer, fault_at, exclude=old_host, timeout=60)
                await asyncio.sleep(0.5)
            healed_at = time.monotonic()
        else:
            await _wait_new_writes(writer, fault_at, exclude=old_host if scenario != "pg_crash" else None, timeout=60)
            await asyncio.sleep(0.5)
    unavailability = writer.unavailability(fault_at)
    new_primary = (await e2e.cluster())["primary"]
    # Split brain: the old primary acknowledged a write after another server acknowledged one.
    first_other = min((t for t, s in writer.servers if t > fault_at and s != old_host), default=None)
    split = bool(first_other and any(s == old_host and t > first_other for t, s in writer.servers))
    rows = set(await e2e.rows(new_primary, writer.table))
    lost = sum(1 for i in writer.acked if i not in rows)
    new_host = e2e.member(new_primary).host
    if scenario == "node_loss":
        restarted = time.monotonic()
        e2e.restart_node(old)
        rejoin_s = await _streams_again(e2e, old, new_host, restarted)
    elif scenario == "primary_isolated":
        rejoin_s = await _streams_again(e2e, old, new_host, healed_at)
    await e2e.wait_healthy(120)
    return {"unavailability_s": unavailability, "lost": lost, "split_brain": split, "rejoin_s": rejoin_s}


async def _streams_again(e2e: E2ECluster, old: str, new_host: str, since: float, timeout: float = 120) -> float:
    """Seconds from ``since`` until the old primary's PostgreSQL streams WAL from the new primary
    (pg_stat_wal_receiver on the old primary, polled every 50 ms)."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        if await e2e.streaming_from(old) == new_host:
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{old} did not stream from the new primary within {timeout} s")


async def _wait_new_writes(writer: Writer, since: float, exclude: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t > since + 0.05 and (exclude is None or s != exclude) for t, s in writer.servers):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("writes did not resume in time")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [args.scenario] if args.scenario else list(SCENARIOS)
    if "primary_isolated" in scenarios and (os.geteuid() != 0 or IPTABLES is None):
        scenarios.remove("primary_isolated")
    ha = {"synchronous_mode": "on"} if args.sync == "on" else None
    e2e = E2ECluster(ha=ha)
    out: dict[str, Any] = {"sync": args.sync, "repeat": args.repeat, "machine": f"{os.cpu_count()} cores"}
    try:
        await e2e.start()
        for scenario in scenarios:
            runs = [await one_run(e2e, scenario) for _ in range(args.repeat)]
            unav = [r["unavailability_s"] for r in runs]
            rejoins = [r["rejoin_s"] for r in runs if r["rejoin_s"] is not None]
            out[scenario] = {
                "unavailability_s_median": round(statistics.median(unav), 3),
                "unavailability_s_max": round(max(unav), 3),
                "lost_acked_writes": sum(r["lost"] for r in runs),
                "split_brain": sum(r["split_brain"] for r in runs),
                "rejoin_s_median": round(statistics.median(rejoins), 3) if rejoins else None,
                "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
            }
            print(json.dumps({scenario: out[scenario]}), file=sys.stderr)
    finally:
        await e2e.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sync", choices=("on", "off"), default="off")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
