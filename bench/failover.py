"""Failover benchmark: write unavailability seen by a client, lost acknowledged writes, split-brain
incidents and rejoin time, on a real 3-node cluster on this machine (ram.localcluster).

The client writes through the libpq multi-host string (target_session_attrs=read-write) as fast as it
can, one row per transaction, and records every acknowledged write and which server took it.

    python bench/failover.py --repeat 5                      # all scenarios, async mode
    python bench/failover.py --scenario node_loss --sync on  # one scenario, synchronous mode
    python bench/failover.py --scenario steady --seconds 600 --stress --sync on   # false failovers

primary_isolated cuts the old primary off from the other members for real (as root: every node in
its own cgroup, Raft AND replication AND forwarded API calls dropped, tests/faults/net.py); the client
keeps reaching it, as a client on its side of a partition would. steady injects nothing: it writes
for --seconds and counts what should not happen on a healthy cluster. --stress runs
``stress-ng --cpu 4 --io 2`` for the whole benchmark (both cores saturated, an fsync storm).

Every scenario also reports false_failovers: failovers started, nodes fenced and members judged
unhealthy that the scenario itself does not explain (steady: all of them; the fault scenarios: those
beyond their one expected operation).

Prints one JSON object (last line) keyed by scenario with unavailability_s_median/max,
lost_acked_writes, split_brain and rejoin_s_median: the time from restarting the old primary's node
(node_loss) or healing the network (primary_isolated) until its PostgreSQL streams WAL from the new
primary (pg_stat_wal_receiver on the old primary, polled every 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.stoppable import run_stoppable
from tests.e2e.cluster import E2ECluster, Writer
from tests.faults.cluster import ChaosCluster
from tests.faults.faults import FaultInjector, NetCut, partition_drops
from tests.faults.net import usable as net_usable

SCENARIOS = ("node_loss", "pg_crash", "primary_isolated", "switchover", "steady")
#: What a healthy cluster must never show (counted from the events after a run's start).
UNEXPECTED = ("failover_started", "node_fenced")


async def _position(e2e: E2ECluster) -> int:
    reply = await e2e.api("GET", "/events", params={"last": 1})
    events = reply.json()["events"]
    return int(events[-1]["position"]) if events else 0


async def _surprises(e2e: E2ECluster, after: int) -> dict[str, int]:
    """Failovers started, fences and unhealthy verdicts committed after position ``after``, counted
    on the member whose store holds the most events: right after a cut heals, the first member may
    not have caught up yet, and every store holds a prefix of the same history."""
    best: dict[str, int] = {}
    best_seen = -1
    async with e2e.http(timeout=15) as client:
        for member in e2e.info.members:
            counts = {"failover_started": 0, "node_fenced": 0, "member_unhealthy": 0}
            seen, cursor = 0, after
            try:
                while True:
                    reply = await client.get(f"{member.api_url}/events", params={"after": cursor, "limit": 1000})
                    doc = reply.json()
                    for e in doc["events"]:
                        seen += 1
                        if e["type"] in UNEXPECTED:
                            counts[e["type"]] += 1
                        elif e["type"] == "member_health_changed" and not e["payload"].get("healthy", True):
                            counts["member_unhealthy"] += 1
                    if not doc["events"] or doc.get("next_after") is None:
                        break
                    cursor = int(doc["next_after"])
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            if seen > best_seen:
                best, best_seen = counts, seen
    if best_seen < 0:
        raise RuntimeError("no member answered GET /events")
    return best


async def one_run(e2e: E2ECluster, scenario: str, fx: FaultInjector | None, seconds: float) -> dict[str, Any]:
    c = await e2e.wait_healthy(120)
    old = c["primary"]
    old_host = e2e.member(old).host
    rejoin_s: float | None = None
    start_position = await _position(e2e)
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
        if scenario == "steady":
            await asyncio.sleep(seconds)
        elif scenario == "primary_isolated":
            assert fx is not None
            others = [m.name for m in e2e.info.members if m.name != old]
            cut = await fx.apply(NetCut("isolate_primary", [old], drops=partition_drops([old], others)))
            try:
                await _wait_new_writes(writer, fault_at, exclude=old_host, timeout=60)
                await asyncio.sleep(0.5)
            finally:
                await fx.undo(cut)
            healed_at = time.monotonic()
        else:
            await _wait_new_writes(writer, fault_at, exclude=old_host if scenario != "pg_crash" else None, timeout=60)
            await asyncio.sleep(0.5)
    unavailability = writer.unavailability(fault_at)
    new_primary = (await e2e.cluster())["primary"]
    surprises = await _surprises(e2e, start_position)
    expected_failovers = 1 if scenario in ("node_loss", "pg_crash", "primary_isolated") else 0
    # A fault scenario explains its one failover, the fence of the cut-off primary and the unhealthy
    # verdict(s) on the member it hit. A switchover explains unhealthy verdicts (its old primary is
    # down while it restarts as a standby, the other replica re-connects) but no fence; a steady
    # cluster explains nothing.
    false = max(0, surprises["failover_started"] - expected_failovers)
    if scenario in ("steady", "switchover"):
        false += surprises["node_fenced"]
    if scenario == "steady":
        false += surprises["member_unhealthy"]
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
    return {"unavailability_s": unavailability, "lost": lost, "split_brain": split, "rejoin_s": rejoin_s,
            "false_failovers": false, "events": surprises}


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
    scenarios = [args.scenario] if args.scenario else [s for s in SCENARIOS if s != "steady"]
    out: dict[str, Any] = {"sync": args.sync, "repeat": args.repeat, "machine": f"{os.cpu_count()} cores",
                           "stress": args.stress}
    why_not = net_usable() if os.geteuid() == 0 else "root needed (cgroups, iptables)"
    if "primary_isolated" in scenarios and why_not is not None:
        scenarios.remove("primary_isolated")
        out["skipped"] = {"primary_isolated": why_not}
    ha = {"synchronous_mode": "on"} if args.sync == "on" else None
    isolating = "primary_isolated" in scenarios
    e2e: E2ECluster = ChaosCluster(ha=ha) if isolating else E2ECluster(ha=ha)
    fx = FaultInjector(e2e) if isinstance(e2e, ChaosCluster) else None
    stress: asyncio.subprocess.Process | None = None
    try:
        if fx is not None:
            assert isinstance(e2e, ChaosCluster)
            await e2e.start(before_nodes=fx.open_net)
        else:
            await e2e.start()
        if args.stress:
            stress = await asyncio.create_subprocess_exec(
                "stress-ng", "--cpu", "4", "--io", "2", "--timeout", "0",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            )
        for scenario in scenarios:
            runs = [await one_run(e2e, scenario, fx, args.seconds) for _ in range(args.repeat)]
            unav = [r["unavailability_s"] for r in runs]
            rejoins = [r["rejoin_s"] for r in runs if r["rejoin_s"] is not None]
            out[scenario] = {
                "unavailability_s_median": round(statistics.median(unav), 3),
                "unavailability_s_max": round(max(unav), 3),
                "lost_acked_writes": sum(r["lost"] for r in runs),
                "split_brain": sum(r["split_brain"] for r in runs),
                "rejoin_s_median": round(statistics.median(rejoins), 3) if rejoins else None,
                "false_failovers": sum(r["false_failovers"] for r in runs),
                "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs],
            }
            print(json.dumps({scenario: out[scenario]}), file=sys.stderr)
    finally:
        if stress is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stress.pid, signal.SIGKILL)
            await stress.wait()
        if fx is not None:
            await fx.close()
        await e2e.close()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sync", choices=("on", "off"), default="off")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the steady scenario writes")
    parser.add_argument("--stress", action="store_true", help="stress-ng --cpu 4 --io 2 during the whole run")
    parsed = parser.parse_args()
    if parsed.stress and shutil.which("stress-ng") is None:
        parser.error("--stress needs stress-ng (apt-get install -y stress-ng)")
    print(json.dumps(run_stoppable(main(parsed))))
