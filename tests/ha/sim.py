"""A seeded simulation of the arbiter and the keepers over a 3-node cluster.

Abstract PostgreSQL: WAL is a list of record ids (so "diverged" is exactly "not a prefix"), LSN is
its length. Each node has a drifting monotonic clock. The Raft log is one global list of committed
events (the leader appends; connected nodes apply at once; an isolated node stops applying). The
Raft leader is the first connected, running node; a leader change builds a fresh lease view.
Lease renewals travel with random delays. Faults: machine crash (HA + PostgreSQL, restart later),
PostgreSQL crash, network isolation; switchover requests. Invariants are checked after every step.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from ram.eventstore.events import (
    ClusterBootstrapped,
    Event,
    FailoverStarted,
    MemberHealthChanged,
    MemberSpec,
    StoredEvent,
    SwitchoverRequested,
)
from ram.ha.arbiter import (
    ArbiterInput,
    Decision,
    arbitrate,
    decide_grant,
    steady_holder,
)
from ram.ha.candidates import MemberObservation, is_fresh
from ram.ha.keeper import (
    Clone,
    ConfigureSync,
    Demote,
    Fence,
    Follow,
    InitDb,
    KeeperInput,
    LocalPostgres,
    Promote,
    RestartCrashed,
    Rewind,
    StartPostgres,
    is_diverged,
    next_action,
    wants_lease,
)
from ram.ha.lease import ArbiterLeaseView, HolderLease, RenewToken
from ram.ha.settings import HASettings
from ram.ha.syncset import parse_standby_names
from ram.projections.state import ClusterState, fold

NAMES = ("pg1", "pg2", "pg3")
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DT = 0.05


class Violation(AssertionError):
    pass


@dataclass
class PG:
    has_data: bool = False
    running: bool = False
    in_recovery: bool = True
    timeline: int = 0
    wal: list[int] = field(default_factory=list)
    upstream: str | None = None
    sync_names: str = ""
    timeline_start: int = 0

    @property
    def writable(self) -> bool:
        return self.running and not self.in_recovery


@dataclass
class Node:
    name: str
    offset: float
    rate: float
    settings: HASettings
    up: bool = True
    isolated: bool = False
    incarnation: int = 0
    pg: PG = field(default_factory=PG)
    holder: HolderLease | None = None
    applied: int = 0
    pg_down_since: float | None = None
    rewind_failed: bool = False
    released: bool = False
    fault_until: float = 0.0

    def __post_init__(self) -> None:
        self.holder = HolderLease(self.settings)

    def clock(self, t: float) -> float:
        return self.offset + self.rate * t

    @property
    def connected(self) -> bool:
        return self.up and not self.isolated

    def lease(self) -> HolderLease:
        assert self.holder is not None
        return self.holder


def is_prefix(a: list[int], b: list[int]) -> bool:
    return len(a) <= len(b) and b[: len(a)] == a


class Sim:
    def __init__(self, seed: int, settings: HASettings, *, single_failure: bool, steps: int = 1200) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.s = settings
        self.single_failure = single_failure
        self.steps = steps
        rho = settings.clock_drift
        self.nodes = {
            n: Node(n, self.rng.uniform(-1e3, 1e3), self.rng.uniform(1 - rho, 1 + rho), settings) for n in NAMES
        }
        self.t = 0.0
        self.states: list[ClusterState] = [ClusterState()]
        self.events: list[StoredEvent] = []
        self.term = 0
        self.leader: str | None = None
        self.view = ArbiterLeaseView(settings)
        self.obs: dict[str, MemberObservation] = {}
        self.primary_down_since: float | None = None
        self.op_key: int | None = None
        self.op_since: float | None = None
        self.msgs: list[tuple[float, int, str, Any]] = []
        self.msg_seq = itertools.count()
        self.record_ids = itertools.count(1)
        self.max_timeline = 0
        self.acked: set[int] = set()  # acknowledged while PostgreSQL enforced k > 0 (or always, async)
        self.log: list[str] = []
        self.stats: dict[str, int] = {}
        self.append(
            ClusterBootstrapped(
                cluster_id="sim",
                cluster_name="sim",
                members=tuple(
                    MemberSpec(
                        name=n,
                        node_id=i + 1,
                        raft_address=f"h{i}:1",
                        api_address=f"h{i}:2",
                        pg_host=f"h{i}",
                        pg_port=5432,
                    )
                    for i, n in enumerate(NAMES)
                ),
            )
        )

    # -- log ---------------------------------------------------------------------------------------
    @property
    def state(self) -> ClusterState:
        return self.states[-1]

    def append(self, ev: Event) -> int:
        pos = len(self.events) + 1
        se = StoredEvent(position=pos, term=self.term, ts=T0 + dt.timedelta(seconds=self.t), event=ev)
        self.events.append(se)
        self.states.append(fold(self.states[-1], [se]))
        self.count(type(ev).__name__)
        return pos

    def count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def note(self, text: str) -> None:
        self.log.append(f"{self.t:7.2f} {text}")

    def fail(self, text: str) -> None:
        tail = "\n".join(self.log[-40:])
        raise Violation(f"seed {self.seed} t={self.t:.2f}: {text}\n{tail}")

    # -- one step -----------------------------------------------------------------------------------
    def run(self) -> None:
        for _ in range(self.steps):
            self.step()

    def step(self) -> None:
        self.t += DT
        self.faults()
        self.elect()
        self.deliver()
        for n in self.nodes.values():
            if n.connected:
                n.applied = len(self.events)
        self.fence_timers()
        self.write_and_replicate()
        self.report()
        self.arbitrate()
        self.keepers()
        self.renewals()
        self.check()

    def faults(self) -> None:
        for n in self.nodes.values():
            if n.fault_until and self.t >= n.fault_until:
                n.fault_until = 0.0
                if not n.up:
                    n.up, n.incarnation = True, n.incarnation + 1
                    n.holder = HolderLease(self.s)
                    n.released = False
                    self.note(f"{n.name} machine restarts")
                n.isolated = False
        faulty = [n for n in self.nodes.values() if n.fault_until or not n.up or n.isolated]
        if self.single_failure and faulty:
            return
        r = self.rng.random()
        victim = self.nodes[self.rng.choice(NAMES)]
        if victim.fault_until:
            return
        if r < 0.004:
            victim.up = False
            victim.pg.running = False
            victim.fault_until = self.t + self.rng.uniform(1, 8)
            self.note(f"{victim.name} machine crash")
        elif r < 0.008:
            victim.isolated = True
            victim.fault_until = self.t + self.rng.uniform(0.5, 8)
            self.note(f"{victim.name} isolated")
        elif r < 0.011 and victim.pg.running:
            victim.pg.running = False
            victim.pg_down_since = victim.clock(self.t)
            if self.single_failure:
                victim.fault_until = self.t + 3.0  # counts as the failure until it has had time to recover
            self.note(f"{victim.name} PostgreSQL crash")
        elif r < 0.013 and self.state.primary and self.state.current_operation is None:
            cand = self.rng.choice([None, *[x for x in NAMES if x != self.state.primary]])
            self.append(SwitchoverRequested(primary=self.state.primary, candidate=cand, requested_by="sim"))
            self.note(f"switchover requested -> {cand}")

    def elect(self) -> None:
        cand = next((n for n in NAMES if self.nodes[n].connected), None)
        if cand != self.leader:
            self.leader = cand
            self.term += 1
            self.view = ArbiterLeaseView(self.s)
            self.obs = {}
            self.primary_down_since = None
            self.op_since = None
            self.op_key = None
            if cand is not None:
                self.view.on_became_leader(self.nodes[cand].clock(self.t), steady_holder(self.state))
            self.note(f"leader {cand} term {self.term}")

    def now_l(self) -> float:
        assert self.leader is not None
        return self.nodes[self.leader].clock(self.t)

    def fence_timers(self) -> None:
        for n in self.nodes.values():
            if n.up and n.pg.writable and n.lease().must_fence(n.clock(self.t)):
                n.pg.running = False
                n.pg_down_since = n.clock(self.t)
                self.count("fence_timer")
                self.note(f"{n.name} fence timer")

    def write_and_replicate(self) -> None:
        writers = [n for n in self.nodes.values() if n.pg.writable]
        for w in writers:
            if self.rng.random() < 0.7:
                w.pg.wal.append(next(self.record_ids))
        for n in self.nodes.values():
            u = self.nodes.get(n.pg.upstream or "")
            if not (n.pg.running and n.pg.in_recovery and u is not None and u.pg.running):
                continue
            if n.isolated or u.isolated or not is_prefix(n.pg.wal, u.pg.wal):
                continue
            if u.pg.in_recovery and u.pg.timeline <= n.pg.timeline and len(u.pg.wal) <= len(n.pg.wal):
                continue
            take = len(u.pg.wal) if self.rng.random() < 0.8 else self.rng.randint(len(n.pg.wal), len(u.pg.wal))
            n.pg.wal = list(u.pg.wal[:take])
            n.pg.timeline = max(n.pg.timeline, u.pg.timeline)
        for w in writers:
            cfg = parse_standby_names(w.pg.sync_names)
            if self.s.synchronous_mode == "off" or cfg.num_sync == 0:
                if self.s.synchronous_mode == "off":
                    self.acked.update(w.pg.wal)
                continue
            have = [set(self.nodes[s].pg.wal) for s in cfg.standbys if s in self.nodes and s != w.name]
            for r in w.pg.wal[-50:]:
                if sum(r in h for h in have) >= cfg.num_sync:
                    self.acked.add(r)

    def report(self) -> None:
        if self.leader is None:
            return
        for n in self.nodes.values():
            if not n.connected:
                continue
            pg = n.pg
            role = "unknown" if not pg.running else ("replica" if pg.in_recovery else "primary")
            self.obs[n.name] = MemberObservation(
                name=n.name,
                reachable=True,
                pg_running=pg.running,
                role=role,  # type: ignore[arg-type]
                timeline=pg.timeline or None,
                received_lsn=len(pg.wal) if pg.has_data else None,
                replayed_lsn=None,
                lag_bytes=None,
                observed_at=self.now_l(),
                sync_standby_names=pg.sync_names if role == "primary" else None,
                state_position=n.applied,
                lease_released=n.released,
                timeline_start_lsn=pg.timeline_start,
            )

    def arbitrate(self) -> None:
        if self.leader is None:
            return
        now = self.now_l()
        st = self.state
        op = st.current_operation
        key = None if op is None else op.started_position
        if key != self.op_key:
            self.op_key, self.op_since = key, (None if key is None else now)
        p = st.primary
        po = self.obs.get(p or "")
        up = p is not None and is_fresh(po, now, self.s) and po is not None and po.pg_running and po.role == "primary"
        if p is not None and not up:
            self.primary_down_since = self.primary_down_since if self.primary_down_since is not None else now
        else:
            self.primary_down_since = None
        inp = ArbiterInput(
            now=now,
            state=st,
            observations=dict(self.obs),
            lease=self.view,
            settings=self.s,
            primary_down_since=self.primary_down_since,
            pending_switchover=op,
            operation_since=self.op_since,
        )
        for d in arbitrate(inp):
            self.apply_decision(d, inp)

    def apply_decision(self, d: Decision, inp: ArbiterInput) -> None:
        for started in d.events:
            if isinstance(started, FailoverStarted):
                self.check_failover_choice(started)
        if d.guard_position is not None and d.guard_position != len(self.events):
            self.count("guard_rejected")
            return
        if d.revokes is not None:
            self.view.revoke(d.revokes, until_position=len(self.events) + 1)
        for ev in d.to_events():
            self.append(ev)
        if not any(isinstance(ev, MemberHealthChanged) for ev in d.events):
            self.note(f"decide {d.rule}: {d.reason}")

    def check_failover_choice(self, ev: FailoverStarted) -> None:
        chosen = next(v for v in ev.candidates if v.name == ev.chosen)
        best = max((v.lsn or 0) for v in ev.candidates if v.eligible)
        if not chosen.eligible or (chosen.lsn or 0) < best:
            self.fail(f"failover chose {ev.chosen} at {chosen.lsn}, best eligible {best}")

    def keepers(self) -> None:
        for n in self.nodes.values():
            if not n.up:
                continue
            st = self.states[n.applied]
            now = n.clock(self.t)
            ki = self.keeper_input(n, st, now)
            a = next_action(ki)
            self.execute(n, a, st)

    def keeper_input(self, n: Node, st: ClusterState, now: float) -> KeeperInput:
        pg = n.pg
        local = LocalPostgres(
            has_data=pg.has_data,
            running=pg.running,
            in_recovery=pg.in_recovery if pg.running else None,
            timeline=pg.timeline or None,
            wal_position=len(pg.wal),
            upstream=pg.upstream,
            sync_standby_names=pg.sync_names,
        )
        return KeeperInput(
            me=n.name,
            now=now,
            state=st,
            pg=local,
            lease_valid=n.lease().holds(now),
            settings=self.s,
            diverged=is_diverged(st, pg.timeline or None, len(pg.wal)) if pg.has_data else False,
            pg_down_since=n.pg_down_since,
            rewind_failed=n.rewind_failed,
        )

    def execute(self, n: Node, a: object, st: ClusterState) -> None:
        pg = n.pg
        name = type(a).__name__
        if name != "Nothing":
            self.count(name)
        if isinstance(a, Fence):
            pg.running = False
            n.pg_down_since = n.clock(self.t)
            self.note(f"{n.name} fence: {a.reason}")
        elif isinstance(a, InitDb):
            pg.has_data, pg.timeline, pg.wal, pg.in_recovery = True, 1, [], False
            self.max_timeline = max(self.max_timeline, 1)
        elif isinstance(a, (StartPostgres, RestartCrashed)):
            standby = isinstance(a, StartPostgres) and a.role == "standby"
            if standby and isinstance(a, StartPostgres) and a.upstream is not None:
                self.check_stream(n, a.upstream)
            pg.running, pg.in_recovery = True, standby
            pg.upstream = a.upstream if isinstance(a, StartPostgres) else None
            n.pg_down_since = None
            if not standby:
                n.released = False
            self.note(f"{n.name} {name}: {a.reason}")
        elif isinstance(a, Promote):
            self.check_promotion(n)
            self.max_timeline += 1
            pg.in_recovery, pg.timeline, pg.upstream = False, self.max_timeline, None
            pg.timeline_start = len(pg.wal)
            pg.sync_names = ""
            n.released = False
            self.note(f"{n.name} promoted to timeline {pg.timeline} at {len(pg.wal)}")
        elif isinstance(a, Demote):
            for r in self.nodes.values():  # clean shutdown: connected standbys get everything
                linked = r.pg.running and r.pg.in_recovery and r.pg.upstream == n.name
                if linked and not r.isolated and not n.isolated and is_prefix(r.pg.wal, pg.wal):
                    r.pg.wal = list(pg.wal)
            pg.in_recovery, pg.upstream = True, a.follow
            n.lease().release()
            n.released = True
            if n.connected and self.leader is not None:
                self.view.on_released(n.name)
            self.note(f"{n.name} demoted")
        elif isinstance(a, Follow):
            self.check_stream(n, a.primary)
            pg.upstream = a.primary
        elif isinstance(a, Rewind):
            u = self.nodes[a.primary]
            if not u.pg.running or u.isolated or n.isolated:
                return
            if self.rng.random() < 0.2:
                n.rewind_failed = True
                self.note(f"{n.name} rewind failed")
                return
            common = 0
            while common < min(len(pg.wal), len(u.pg.wal)) and pg.wal[common] == u.pg.wal[common]:
                common += 1
            pg.wal, pg.timeline, pg.running = list(u.pg.wal[:common]), u.pg.timeline, False
            pg.timeline_start = u.pg.timeline_start
            self.note(f"{n.name} rewound onto {a.primary}")
        elif isinstance(a, Clone):
            u = self.nodes[a.primary]
            if not u.pg.running or u.isolated or n.isolated:
                return
            n.pg = PG(
                has_data=True,
                running=False,
                in_recovery=True,
                timeline=u.pg.timeline,
                wal=list(u.pg.wal),
                timeline_start=u.pg.timeline_start,
            )
            n.rewind_failed = False
            self.note(f"{n.name} cloned from {a.primary}")
        elif isinstance(a, ConfigureSync):
            pg.sync_names = a.standby_names

    def check_stream(self, n: Node, upstream: str) -> None:
        u = self.nodes[upstream]
        if u.pg.has_data and u.pg.timeline >= n.pg.timeline and not is_prefix(n.pg.wal, u.pg.wal):
            if n.pg.timeline < u.pg.timeline and len(n.pg.wal) <= u.pg.timeline_start:
                return
            self.fail(f"{n.name} would stream from {upstream} with a diverged WAL ({len(n.pg.wal)} records)")

    def check_promotion(self, n: Node) -> None:
        if self.s.synchronous_mode != "off" and self.single_failure:
            lost = self.acked - set(n.pg.wal)
            if lost:
                self.fail(f"{n.name} promotes without acknowledged records {sorted(lost)[:5]}")

    def renewals(self) -> None:
        for n in self.nodes.values():
            if not n.connected or self.leader is None:
                continue
            now = n.clock(self.t)
            if not wants_lease(self.keeper_input(n, self.states[n.applied], now)):
                continue
            tok = n.lease().on_renew_sent(now)
            self.send(self.t + self.rng.uniform(0, 0.1), "grant", (n.name, n.incarnation, tok, self.leader, self.term))

    def send(self, at: float, kind: str, payload: Any) -> None:
        self.msgs.append((at, next(self.msg_seq), kind, payload))

    def deliver(self) -> None:
        due = sorted(m for m in self.msgs if m[0] <= self.t)
        self.msgs = [m for m in self.msgs if m[0] > self.t]
        for _, _, kind, payload in due:
            if kind == "grant":
                name, inc, tok, leader, term = payload
                if leader != self.leader or term != self.term or not self.nodes[leader].connected:
                    continue
                if self.nodes[name].isolated:
                    continue
                inp = ArbiterInput(
                    now=self.now_l(),
                    state=self.state,
                    observations=dict(self.obs),
                    lease=self.view,
                    settings=self.s,
                    primary_down_since=self.primary_down_since,
                )
                if decide_grant(inp, name).granted:
                    self.send(self.t + self.rng.uniform(0, 0.1), "ok", (name, inc, tok))
            elif kind == "ok":
                name, inc, tok = payload
                n = self.nodes[name]
                if n.up and n.incarnation == inc and not n.isolated:
                    assert isinstance(tok, RenewToken)
                    n.lease().on_renew_ok(tok)

    def check(self) -> None:
        writers = [n.name for n in self.nodes.values() if n.pg.writable and n.up and n.lease().holds(n.clock(self.t))]
        unleased = [n.name for n in self.nodes.values() if n.pg.writable and not n.lease().holds(n.clock(self.t))]
        if unleased:
            self.fail(f"writable without lease after the fence timer: {unleased}")
        if len(writers) > 1:
            self.fail(f"two nodes accept writes: {writers}")


def run_sim(seed: int, settings: HASettings, *, single_failure: bool, steps: int = 1200) -> Sim:
    sim = Sim(seed, settings, single_failure=single_failure, steps=steps)
    sim.run()
    return sim


__all__ = ["Sim", "Violation", "is_prefix", "run_sim"]
