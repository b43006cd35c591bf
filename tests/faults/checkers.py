"""Checkers over a recorded history (tests.faults.workload) and the cluster's final state.

(a) :func:`lost_writes` — every acknowledged insert is on the final primary (synchronous mode: none
    may be missing; asynchronous mode: the count is reported).
(b) :func:`split_brain` — no write is acknowledged by a node after (in real time: invoked after the
    other's acknowledgement) another node acknowledged a write on the same or a newer timeline. A
    legitimate change of primary always moves to a newer timeline, so this catches both an old
    primary accepting writes after its successor took over and two nodes accepting writes at once.
(c) :func:`events_diverge` — every node's ``pgraft.events`` is identical up to the shortest.
(d) :func:`wait_converged` — one primary, every other member streaming from it (by the API *and* by
    ``pg_stat_wal_receiver``), within a bound.
(e) :func:`unavailability` — stretches without an acknowledged write through the multi-host string;
    those outside every fault's window (plus a grace for recovery) must stay under a bound.
(f) :func:`api_mismatches` — what the Raft leader's ``GET /cluster`` says matches PostgreSQL: its
    primary accepts a write, a member it calls streaming streams from the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tests.faults.cluster import ChaosCluster
from tests.faults.workload import TABLE, Op

# ------------------------------------------------------------------------------------------ (a)


async def final_ids(cluster: ChaosCluster, primary: str) -> set[int]:
    conn = await cluster.connect(primary)
    try:
        return {r[0] for r in await conn.fetch(f"SELECT id FROM {TABLE}", timeout=60)}
    finally:
        await conn.close()


def lost_writes(ops: list[Op], present: set[int]) -> list[Op]:
    return [op for op in ops if op.status == "ok" and op.id not in present]


# ------------------------------------------------------------------------------------------ (b)


def split_brain(ops: list[Op], limit: int = 20) -> list[dict[str, Any]]:
    """Acknowledged writes that a node took after another node had acknowledged one on the same or a
    newer timeline (see the module docstring). Returns up to ``limit`` incidents."""
    acks = [op for op in ops if op.status == "ok" and op.node is not None and op.timeline is not None]
    by_ack = sorted(acks, key=lambda o: o.complete)
    by_invoke = sorted(acks, key=lambda o: o.invoke)
    best: dict[str, Op] = {}  # per node: its acknowledged write with the highest timeline so far
    incidents: list[dict[str, Any]] = []
    j = 0
    for a in by_invoke:
        while j < len(by_ack) and by_ack[j].complete < a.invoke:
            b = by_ack[j]
            assert b.node is not None and b.timeline is not None
            if b.node not in best or (best[b.node].timeline or 0) < b.timeline:
                best[b.node] = b
            j += 1
        for node, b in best.items():
            if node != a.node and (b.timeline or 0) >= (a.timeline or 0):
                incidents.append({
                    "late": {"node": a.node, "timeline": a.timeline, "id": a.id, "client": a.client,
                             "invoke": round(a.invoke, 3), "ack": round(a.complete, 3)},
                    "earlier": {"node": b.node, "timeline": b.timeline, "id": b.id, "client": b.client,
                                "ack": round(b.complete, 3)},
                })
                break
        if len(incidents) >= limit:
            break
    return incidents


# ------------------------------------------------------------------------------------------ (c)


async def events_diverge(cluster: ChaosCluster) -> dict[str, Any]:
    """Compare every node's pgraft.events up to the shortest; returns lengths and the first difference."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for member in cluster.info.members:
        recs = await cluster.store_fetch(
            member.name,
            "SELECT position, sub, type, schema_version, payload::text, term, proposer, ts "
            "FROM pgraft.events ORDER BY position, sub",
        )
        rows[member.name] = [tuple(r) for r in recs]
    lengths = {name: len(r) for name, r in rows.items()}
    shortest = min(lengths.values())
    names = list(rows)
    first: dict[str, Any] | None = None
    for i in range(shortest):
        values = {name: rows[name][i] for name in names}
        if len(set(values.values())) > 1:
            first = {"index": i, "rows": {n: [str(x) for x in v[:5]] for n, v in values.items()}}
            break
    return {"lengths": lengths, "first_difference": first}


# ------------------------------------------------------------------------------------------ (d)


async def converged(cluster: ChaosCluster) -> tuple[bool, str]:
    """One primary by the leader's /cluster, every other member streaming from it (API and PostgreSQL)."""
    try:
        doc = await cluster.cluster()
    except (AssertionError, Exception) as exc:
        return False, f"no leader answer: {exc}"
    primary = doc.get("primary")
    if not primary:
        return False, "no primary"
    members = doc["members"]
    primaries = [m["name"] for m in members if m["role"] == "primary"]
    if primaries != [primary]:
        return False, f"primaries by role: {primaries}"
    host = cluster.member(primary).host
    for m in members:
        if m["name"] == primary:
            if not m["healthy"]:
                return False, f"primary {primary} not healthy"
            continue
        if not (m["healthy"] and m["following"] == primary and m.get("streaming")):
            return False, (f"{m['name']}: healthy={m['healthy']} following={m['following']} "
                           f"streaming={m.get('streaming')} ({m.get('streaming_reason')})")
        if await cluster.streaming_from(m["name"]) != host:
            return False, f"{m['name']}: pg_stat_wal_receiver does not stream from {host}"
    if not await cluster.writable(primary):
        return False, f"primary {primary} is in recovery"
    return True, primary


async def wait_converged(cluster: ChaosCluster, timeout: float) -> tuple[float | None, str]:
    """Seconds until :func:`converged` (None: not within ``timeout``) and the primary / last reason."""
    start = time.monotonic()
    reason = ""
    while time.monotonic() - start < timeout:
        ok, reason = await converged(cluster)
        if ok:
            return time.monotonic() - start, reason
        await asyncio.sleep(0.25)
    return None, reason


# ------------------------------------------------------------------------------------------ (e)


@dataclass
class Gap:
    start: float
    end: float
    in_fault: bool

    @property
    def length(self) -> float:
        return self.end - self.start


def gaps(ops: list[Op], since: float, until: float) -> list[Gap]:
    """Stretches without an acknowledged write by any multi-host client (``w*``) between since/until."""
    acks = sorted(op.complete for op in ops if op.client.startswith("w") and op.status == "ok"
                  and since <= op.complete <= until)
    points = [since, *acks, until]
    return [Gap(a, b, False) for a, b in itertools.pairwise(points) if b > a]


@dataclass
class Availability:
    per_fault: list[float] = field(default_factory=list)
    worst_outside: float = 0.0
    outside_violations: list[dict[str, float]] = field(default_factory=list)


def unavailability(ops: list[Op], windows: list[tuple[float, float, str]], since: float, until: float,
                   grace: float, bound: float) -> Availability:
    """Per fault window: the longest gap overlapping it. Outside every window (+grace after undo): the
    longest gap, and every gap longer than ``bound``."""
    out = Availability()
    all_gaps = gaps(ops, since, until)
    starts = sorted(s for s, _, _ in windows)
    for start, end, _ in windows:
        # A fault's own stretch: from its start to its end plus the grace, cut at the next fault.
        nxt = min((s for s in starts if s > start), default=float("inf"))
        stop = min(end + grace, nxt)
        overlapping = [g.length for g in all_gaps if g.end > start and g.start < stop]
        out.per_fault.append(max(overlapping, default=0.0))
    for g in all_gaps:
        if any(g.end > s and g.start < e + grace for s, e, _ in windows):
            continue
        out.worst_outside = max(out.worst_outside, g.length)
        if g.length > bound:
            out.outside_violations.append({"start": round(g.start, 3), "length_s": round(g.length, 3)})
    return out


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


# ------------------------------------------------------------------------------------------ (f)


async def api_mismatches(cluster: ChaosCluster, attempts: int = 5) -> list[str]:
    """The leader's view against PostgreSQL, retried (a change between the two reads is not a lie)."""
    problems: list[str] = []
    for _ in range(attempts):
        problems = await _api_vs_pg_once(cluster)
        if not problems:
            return []
        await asyncio.sleep(0.5)
    return problems


async def _api_vs_pg_once(cluster: ChaosCluster) -> list[str]:
    try:
        doc = await cluster.cluster()
    except Exception as exc:
        return [f"no leader answer: {exc}"]
    problems: list[str] = []
    primary = doc.get("primary")
    if primary:
        try:
            conn = await cluster.connect(primary)
            try:
                await conn.execute(f"INSERT INTO {TABLE} (id, client) VALUES ($1, 'probe')",
                                   -int(time.monotonic() * 1000), timeout=5)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            problems.append(f"/cluster says {primary} is primary but a write there failed: {exc}")
    for m in doc["members"]:
        if m["name"] == primary:
            continue
        if m.get("streaming") and primary:
            sender = await cluster.streaming_from(m["name"])
            if sender != cluster.member(primary).host:
                problems.append(f"/cluster says {m['name']} streams, pg_stat_wal_receiver says {sender}")
        if m["role"] == "primary":
            problems.append(f"{m['name']} has role primary but the cluster's primary is {primary}")
    with contextlib.suppress(Exception):
        for m in doc["members"]:
            if m["name"] != primary and await cluster.writable(m["name"]):
                problems.append(f"{m['name']} accepts writes but /cluster says the primary is {primary}")
    return problems
