"""Resource soak (``-m slow``; ``RAM_SOAK_MINUTES``, default 10): a steady rate of committed events
(tag changes through the API, every node's API in turn) on a real cluster whose Raft snapshots every
200 entries. Sampled every 5 s: RSS and open file descriptors of every ``ram`` process, the Raft log
rows and the snapshot index in every store, the number of events.

Asserts: RSS and fds stay flat over the second half (the slopes are printed), the Raft log is
compacted (its rows stay bounded, the snapshot moves), ``pgraft.events`` grows with the events
asked for (at most one event per request plus a few others) and not at all while idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.cluster import HEADERS, ChaosCluster

SNAPSHOT_ENTRIES = 200


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


async def _sample(c: ChaosCluster, t0: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for m in c.info.members:
        assert m.pid is not None
        log_rows = await c.store_fetch(m.name, "SELECT count(*) FROM pgraft.log")
        snap = await c.store_fetch(m.name, "SELECT coalesce(max(idx), 0) FROM pgraft.snapshot")
        events = await c.store_fetch(m.name, "SELECT count(*) FROM pgraft.events")
        out[m.name] = {"t": time.monotonic() - t0, "rss_kb": _rss_kb(m.pid), "fds": _fds(m.pid),
                       "log_rows": log_rows[0][0], "snapshot_idx": snap[0][0], "events": events[0][0]}
    return out


@pytest.mark.slow
async def test_soak_resources_stay_flat() -> None:
    minutes = float(os.environ.get("RAM_SOAK_MINUTES", "10"))
    rate = float(os.environ.get("RAM_SOAK_RATE", "5"))  # requests (events) per second
    c = ChaosCluster(3, raft={"snapshot_entries": SNAPSHOT_ENTRIES})
    samples: list[dict[str, dict[str, float]]] = []
    try:
        await c.start()
        t0 = time.monotonic()
        requests = 0
        async with httpx.AsyncClient(timeout=15, headers=HEADERS) as http:
            names = [m.name for m in c.info.members]
            events_before = (await _sample(c, t0))[names[0]]["events"]
            next_sample = 0.0
            while time.monotonic() - t0 < minutes * 60:
                m = c.info.members[requests % len(names)]
                target = names[(requests // len(names)) % len(names)]
                body = {"failover_priority": requests % 7 + 1}
                reply = await http.put(f"{m.api_url}/members/{target}/tags", json=body)
                assert reply.status_code == 200, reply.text
                requests += 1
                if time.monotonic() - t0 >= next_sample:
                    samples.append(await _sample(c, t0))
                    next_sample += 5
                await asyncio.sleep(1 / rate)
            await c.wait_healthy(30)
            events_loaded = (await _sample(c, t0))[names[0]]["events"]
            await asyncio.sleep(30)  # idle: nothing asked, nothing should be recorded
            final = await _sample(c, t0)
        events_idle = final[names[0]]["events"] - events_loaded
    finally:
        await c.close()

    report: dict[str, object] = {"minutes": minutes, "requests": requests, "events_during_load":
                                 events_loaded - events_before, "events_while_idle_30s": events_idle}
    half = [s for s in samples if s[names[0]]["t"] >= minutes * 30]
    problems = []
    for name in names:
        rss = [(s[name]["t"], s[name]["rss_kb"] / 1024) for s in half]
        fds = [(s[name]["t"], s[name]["fds"]) for s in half]
        rows = [s[name]["log_rows"] for s in samples]
        snaps = [s[name]["snapshot_idx"] for s in samples]
        node = {"rss_mb_first": round(rss[0][1], 1), "rss_mb_last": round(rss[-1][1], 1),
                "rss_mb_per_min": round(slope_per_min(rss), 3), "fds_first": fds[0][1], "fds_last": fds[-1][1],
                "fds_per_min": round(slope_per_min(fds), 3), "log_rows_max": max(rows),
                "log_rows_last": final[name]["log_rows"], "snapshot_idx_last": final[name]["snapshot_idx"],
                "snapshot_moved": len(set(snaps)) > 1}
        report[name] = node
        if node["rss_mb_per_min"] > 1.0:
            problems.append(f"{name}: RSS grows {node['rss_mb_per_min']} MB/min")
        if node["fds_per_min"] > 0.5 or fds[-1][1] - fds[0][1] > 10:
            problems.append(f"{name}: open fds grow ({fds[0][1]} -> {fds[-1][1]})")
        if max(rows) > 3 * SNAPSHOT_ENTRIES + 100 or not node["snapshot_moved"]:
            problems.append(f"{name}: Raft log not compacted (rows max {max(rows)}, snapshots {sorted(set(snaps))})")
    if events_idle > 3:
        problems.append(f"{events_idle} events recorded in 30 idle seconds")
    if events_loaded - events_before > requests * 1.1 + 20:
        problems.append(f"{events_loaded - events_before} events for {requests} requests")
    print(json.dumps(report), file=sys.stderr)
    assert not problems, f"{problems}\n{json.dumps(report)}"
