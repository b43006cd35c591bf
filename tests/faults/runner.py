"""The chaos run: random faults from the library at random times under write load, then the checkers.

One run = a fresh local cluster (:class:`ChaosCluster`), the workload, and until the time is up:
wait until the cluster has converged (checker d; the time is recorded), a quiet spell in which the
API is compared with PostgreSQL (checker f), one fault drawn by the seeded RNG, held for a random
time, then removed. At the end: the workload stops, the cluster must converge once more, and the
history goes through checkers a, b, c and e. :func:`run` returns the report (one JSON-able dict).

The seed fixes the sequence of fault kinds, hold times, quiet times and target draws; the targets
themselves depend on who is primary at the time, so a replay reproduces the schedule, not every
timing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tests.faults import checkers
from tests.faults.cluster import ChaosCluster, loop_disks_usable
from tests.faults.faults import KINDS, Fault, FaultInjector, FaultSkipped, make_fault
from tests.faults.net import cleanup_stale
from tests.faults.net import usable as net_usable
from tests.faults.workload import Workload


@dataclass
class ChaosConfig:
    minutes: float = 3.0
    seed: int = 1
    sync: str = "on"
    nodes: int = 3
    kinds: tuple[str, ...] = KINDS
    hold_s: tuple[float, float] = (2.0, 10.0)
    quiet_s: tuple[float, float] = (1.0, 4.0)
    #: Checker bounds.
    converge_bound_s: float = 60.0
    outside_bound_s: float = 5.0
    grace_s: float = 10.0
    writers: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def replay(self) -> str:
        kinds = "" if set(self.kinds) == set(KINDS) else f" --faults {','.join(self.kinds)}"
        return (f"python bench/chaos.py --minutes {self.minutes:g} --seed {self.seed} --sync {self.sync} "
                f"--nodes {self.nodes}{kinds}")


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def run(cfg: ChaosConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    ha = {"synchronous_mode": "on"} if cfg.sync == "on" else None
    wants_disks = any(k.startswith("disk_") for k in cfg.kinds)
    cluster = ChaosCluster(cfg.nodes, ha=ha, disks=wants_disks)
    fx = FaultInjector(cluster)
    names = [m.name for m in cluster.info.members]
    report: dict[str, Any] = {"seed": cfg.seed, "minutes": cfg.minutes, "sync": cfg.sync, "nodes": cfg.nodes}
    failures: list[str] = []
    convergence: list[float] = []
    converged_after: dict[str, list[float]] = collections.defaultdict(list)  # fault kind -> seconds
    mismatches: list[str] = []
    workload: Workload | None = None
    t_start = time.monotonic()
    try:
        if net_usable() is None:
            cleanup_stale()
        await cluster.start(before_nodes=fx.open_net)
        log(f"cluster up in {time.monotonic() - t_start:.1f} s: {cluster.info.dir}")
        workload = Workload(cluster.info.writer_dsn(), {m.name: m.host for m in cluster.info.members},
                            {m.name: m.pg_port for m in cluster.info.members}, writers=cfg.writers)
        await workload.start()
        since = time.monotonic()
        deadline = since + cfg.minutes * 60
        while time.monotonic() < deadline:
            took, why = await checkers.wait_converged(cluster, cfg.converge_bound_s)
            if took is None:
                failures.append(f"no convergence within {cfg.converge_bound_s:g} s after "
                                f"{fx.done[-1].kind if fx.done else 'start'}: {why}")
                log(failures[-1])
                break
            if fx.done:
                convergence.append(took)
                converged_after[fx.done[-1].kind].append(took)
            await asyncio.sleep(rng.uniform(*cfg.quiet_s))
            if time.monotonic() >= deadline:
                break
            problems = await checkers.api_mismatches(cluster)
            if problems:
                mismatches.extend(problems)
                log(f"API vs PostgreSQL: {problems}")
            kind = rng.choice(cfg.kinds)
            hold = rng.uniform(*cfg.hold_s)
            try:
                doc = await cluster.cluster()
            except AssertionError:
                doc = {}
            fault = make_fault(kind, rng, doc, names)
            try:
                await fx.apply(fault)
            except FaultSkipped as exc:
                log(f"skip {kind}: {exc}")
                continue
            except Exception as exc:  # a fault that could not be applied is a harness problem
                failures.append(f"applying {kind} {fault.targets}: {type(exc).__name__}: {exc}")
                log(failures[-1])
                continue
            log(f"fault {kind} {fault.targets} {fault.detail} for {hold:.1f} s")
            if kind != "switchover":
                await asyncio.sleep(hold)
            try:
                await fx.undo(fault)
            except Exception as exc:
                failures.append(f"undoing {kind} {fault.targets}: {type(exc).__name__}: {exc}")
                log(failures[-1])
        await fx.undo_all()
        final_took, final_primary = await checkers.wait_converged(cluster, cfg.converge_bound_s)
        if final_took is None:
            failures.append(f"no final convergence within {cfg.converge_bound_s:g} s: {final_primary}")
        await asyncio.sleep(1.0)
        until = time.monotonic()
        await workload.stop()
        problems = await checkers.api_mismatches(cluster)
        mismatches.extend(problems)
        report.update(await _check(cluster, fx, workload, cfg, since, until, final_primary if final_took is not None
                                   else None, failures))
        report["convergence_s"] = {
            "max": round(max(convergence), 3) if convergence else None,
            "median": checkers.median(convergence),
            "final": round(final_took, 3) if final_took is not None else None,
            "bound": cfg.converge_bound_s,
            "max_by_fault": {k: round(max(v), 3) for k, v in sorted(converged_after.items())},
        }
        report["api_mismatches"] = mismatches[:20]
        if mismatches:
            failures.append(f"API and PostgreSQL disagree ({len(mismatches)} times): {mismatches[0]}")
    except Exception as exc:
        failures.append(f"harness: {type(exc).__name__}: {exc}")
        log(failures[-1])
    finally:
        if workload is not None:
            with contextlib.suppress(Exception):
                await workload.stop()
        await fx.close()
        await cluster.close()
    report["faults"] = dict(collections.Counter(f.kind for f in fx.done))
    report["skipped"] = fx.skipped
    report["fault_log"] = [_fault_entry(f, t_start) for f in fx.done]
    report["failures"] = failures
    report["ok"] = not failures
    report["replay"] = cfg.replay()
    report["duration_s"] = round(time.monotonic() - t_start, 1)
    return report


def _fault_entry(f: Fault, t0: float) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": f.kind, "targets": f.targets}
    if f.applied_at is not None:
        out["at_s"] = round(f.applied_at - t0, 1)
    if f.applied_at is not None and f.undone_at is not None:
        out["held_s"] = round(f.undone_at - f.applied_at, 1)
    out.update({k: v for k, v in f.detail.items() if k in ("outcome", "took_s", "sides", "direction", "killed")})
    return out


async def _check(cluster: ChaosCluster, fx: FaultInjector, workload: Workload, cfg: ChaosConfig, since: float,
                 until: float, primary: str | None, failures: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ops = workload.ops
    statuses = collections.Counter(op.status for op in ops)
    out["writes"] = {"acknowledged": statuses["ok"], "failed": statuses["fail"], "unknown": statuses["info"]}
    # (a) lost acknowledged writes
    if primary is not None:
        present = await checkers.final_ids(cluster, primary)
        lost = checkers.lost_writes(ops, present)
        out["lost_acked_writes"] = len(lost)
        out["lost_examples"] = [{"id": op.id, "client": op.client, "node": op.node, "timeline": op.timeline}
                                for op in lost[:5]]
        if lost and cfg.sync == "on":
            failures.append(f"{len(lost)} acknowledged writes missing from the final primary {primary} "
                            f"(synchronous mode), e.g. {out['lost_examples'][:2]}")
    else:
        out["lost_acked_writes"] = None
    # (b) split brain
    incidents = checkers.split_brain(ops)
    out["split_brain"] = len(incidents)
    out["split_brain_examples"] = incidents[:3]
    if incidents:
        failures.append(f"split brain: {len(incidents)} incident(s), first {incidents[0]}")
    # (c) identical events
    events = await checkers.events_diverge(cluster)
    out["events"] = events
    if events["first_difference"] is not None:
        failures.append(f"pgraft.events differ between nodes: {events['first_difference']}")
    # (e) availability
    windows = [(f.applied_at, f.undone_at or until, f.kind) for f in fx.done if f.applied_at is not None]
    avail = checkers.unavailability(ops, windows, since, until, cfg.grace_s, cfg.outside_bound_s)
    out["unavailability_s"] = {
        "worst": round(max(avail.per_fault), 3) if avail.per_fault else 0.0,
        "median": checkers.median(avail.per_fault),
        "per_fault": {k: round(max(v), 3) for k, v in _by_kind(windows, avail.per_fault).items()},
        "worst_outside_faults": round(avail.worst_outside, 3),
        "outside_bound": cfg.outside_bound_s,
    }
    if avail.outside_violations:
        failures.append(f"writes unavailable outside any fault window: {avail.outside_violations[:3]}")
    # failovers and switchovers committed
    leader_events = await cluster.store_fetch(
        cluster.info.members[0].name, "SELECT type, count(*) FROM pgraft.events WHERE type = ANY($1) GROUP BY type",
        ["failover_completed", "switchover_completed", "failover_failed", "switchover_failed", "primary_promoted"],
    )
    counts = {r[0]: r[1] for r in leader_events}
    out["failovers"] = counts.get("failover_completed", 0)
    out["switchovers"] = counts.get("switchover_completed", 0)
    out["operations_failed"] = counts.get("failover_failed", 0) + counts.get("switchover_failed", 0)
    return out


def _by_kind(windows: list[tuple[float, float, str]], values: list[float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = collections.defaultdict(list)
    for (_, _, kind), v in zip(windows, values, strict=True):
        out[kind].append(v)
    return out


def disks_note() -> str | None:
    return None if loop_disks_usable() else "disk faults need root, loop devices and mkfs.ext4"
