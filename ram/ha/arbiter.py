"""The arbiter: the Raft leader's decision function, and its lease grant policy.

:func:`arbitrate` is pure: committed state + latest member reports + the leader's lease view + time
in, a list of decisions out. Each :class:`Decision` carries the events it proposes (none: it waits),
a ``reason`` and the name of the ``rule`` that decided it (logged, and stored in the events'
reasons). A decision that moves the lease away from a node names it in ``revokes``: the runtime
calls ``ArbiterLeaseView.revoke(name, until_position=<proposal index>)`` BEFORE proposing (see
:mod:`ram.ha.lease`). A synchronous-set step with ``guard_position`` is only valid while
``state.last_position`` equals it (the ``Arbitrate`` command's ``based_on`` enforces that).

Per tick: :data:`HEALTH_RULES` give zero or more ``member_health_changed``; then the first matching row of
:data:`RULES` gives the main decision (or none when the primary is healthy); then, when the primary
is healthy and nothing is in progress, the sync-set step (:func:`ram.ha.syncset.plan_sync_change`).

Lease designee (who may be granted, :func:`grant_policy`):

* failover in progress to X: X only;
* accepted switchover P -> X: P (it keeps its lease while it demotes cleanly), and X once X has
  caught up with P's last reported position and is an eligible candidate (the view still waits for
  P's lease to end or be released before granting X);
* otherwise the committed primary, unless its PostgreSQL has been down longer than
  ``primary_start_timeout_s`` (then its lease runs out and a failover can happen).

A switchover request (``SwitchoverRequested`` from the API) is validated first; the arbiter accepts
it with ``SwitchoverAccepted`` naming the chosen candidate (the operation's ``accepted`` flag).
Scheduled switchovers: the runtime passes the operation only once due.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ram.eventstore.events import (
    Event,
    FailoverCompleted,
    FailoverFailed,
    FailoverStarted,
    MemberHealthChanged,
    PrimaryPromoted,
    SwitchoverAccepted,
    SwitchoverCompleted,
    SwitchoverFailed,
    SynchronousStandbysChanged,
)
from ram.ha.candidates import CandidateChoice, MemberObservation, choose_candidate, is_fresh
from ram.ha.lease import ArbiterLeaseView, GrantVerdict
from ram.ha.settings import HASettings
from ram.ha.syncset import parse_standby_names, plan_sync_change
from ram.projections.state import ClusterState, OperationRecord

__all__ = [
    "HEALTH_RULES",
    "RULES",
    "ArbiterInput",
    "Decision",
    "arbitrate",
    "decide_grant",
    "grant_policy",
    "steady_holder",
    "switchover_accepted",
]

# -- decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision of the arbiter: the events it proposes, built by the rule that decided it (no
    mirror of the event catalogue here: what a decision records IS its events). No events: it
    waits, and ``reason`` says for what.

    ``revokes``: the node whose lease this decision moves away (the runtime revokes it before
    proposing, see :mod:`ram.ha.lease`). ``guard_position``: a synchronous-set step that is only
    valid while the state is still at that position. ``rule``: the name of the :data:`RULES` /
    :data:`HEALTH_RULES` row (or ``sync-set``) that decided it; logged, and stored at the end of
    every event reason by :meth:`to_events`."""

    reason: str
    events: tuple[Event, ...] = ()
    revokes: str | None = None
    guard_position: int | None = None
    rule: str = field(default="", kw_only=True, compare=False)

    @property
    def why(self) -> str:
        """The reason with the rule's name, as logged and stored."""
        return f"{self.reason} [rule {self.rule}]" if self.rule else self.reason

    @property
    def waits(self) -> bool:
        return not self.events

    def to_events(self) -> list[Event]:
        """The events to propose, each reason ending with the rule's name."""
        if not self.rule:
            return list(self.events)
        return [_with_rule(ev, self.rule) for ev in self.events]


def _with_rule(ev: Event, rule: str) -> Event:
    reason = getattr(ev, "reason", None)
    if not isinstance(reason, str):
        return ev  # events without a reason (promotions, completions): the rule is in the log line
    suffix = f" [rule {rule}]"
    return ev.model_copy(update={"reason": reason[: 1000 - len(suffix)] + suffix})


def _wait(reason: str) -> Decision:
    return Decision(reason)


# -- input and context ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArbiterInput:
    """``primary_down_since``: arbiter-clock instant the committed primary was first seen down (not
    reachable / PostgreSQL not running), None while it is up. ``operation_since``: arbiter-clock
    instant this leader first saw the current operation in progress. ``pending_switchover``: the
    in-progress switchover once it is due (default: taken from ``state``)."""

    now: float
    state: ClusterState
    observations: Mapping[str, MemberObservation]
    lease: ArbiterLeaseView
    settings: HASettings
    primary_down_since: float | None = None
    pending_switchover: OperationRecord | None = None
    operation_since: float | None = None
    #: When this node became the arbiter (its Raft leadership of this term began): until
    #: ``report_timeout_s`` later it has not heard every member yet, so it marks nobody unhealthy
    #: and leaves the synchronous set alone. None: long enough ago.
    arbiter_since: float | None = None
    #: Arbiter-clock time of the committed primary's last report as a running primary (None: this
    #: arbiter never saw one). A failover's recorded duration runs from there: the write outage
    #: clients saw, not only the time from the decision to the promotion.
    primary_last_ok_at: float | None = None
    #: Per replica, whether the primary's side shows it streaming and keeping up (from
    #: :class:`ram.ha.streaming.StreamingTracker`): (True/False/None for no evidence yet, why).
    #: None: no primary-side evidence is kept; each replica's own report decides (pure tests, sim).
    streaming: Mapping[str, tuple[bool | None, str]] | None = None


def steady_holder(state: ClusterState) -> str | None:
    """The holder a new leader may presume (``ArbiterLeaseView.on_became_leader``); None: anyone."""
    return state.primary if state.current_operation is None else None


def switchover_accepted(op: OperationRecord | None) -> bool:
    """A switchover the arbiter accepted (its candidate is final and the lease moves to it)."""
    return op is not None and op.kind == "switchover" and op.accepted


@dataclass
class Ctx:
    inp: ArbiterInput
    op: OperationRecord | None
    _choices: dict[tuple[tuple[str, ...], str | None, bool], CandidateChoice] = field(default_factory=dict)

    @property
    def state(self) -> ClusterState:
        return self.inp.state

    @property
    def now(self) -> float:
        return self.inp.now

    def obs(self, name: str | None) -> MemberObservation | None:
        return None if name is None else self.inp.observations.get(name)

    def fresh(self, name: str | None) -> bool:
        return is_fresh(self.obs(name), self.now, self.inp.settings)

    def choice(
        self, exclude: tuple[str, ...], required: str | None = None, *, switchover: bool = False
    ) -> CandidateChoice:
        """Candidates by the one eligibility rule (:func:`choose_candidate`); a switchover also
        requires a healthy (streaming) target, as the API's pre-check does."""
        key = (exclude, required, switchover)
        if key not in self._choices:
            self._choices[key] = choose_candidate(
                self.state,
                self.inp.observations,
                self.inp.settings,
                exclude=exclude,
                required=required,
                now=self.now,
                require_healthy=switchover,
            )
        return self._choices[key]

    def failover_choice(self) -> CandidateChoice:
        p = self.state.primary
        return self.choice((p,) if p else ())

    def primary_ok(self) -> bool:
        o = self.obs(self.state.primary)
        return (
            self.state.primary is not None
            and self.fresh(self.state.primary)
            and o is not None
            and (o.pg_running and o.role == "primary")
        )

    def primary_lease_expired(self) -> bool:
        p = self.state.primary
        return self.inp.lease.all_expired(self.now) if p is None else self.inp.lease.expired(p, self.now)

    def promoted(self, name: str | None) -> MemberObservation | None:
        """``name``'s report if it runs as a primary on a timeline newer than the committed one."""
        o = self.obs(name)
        if o is None or not self.fresh(name) or not o.pg_running or o.role != "primary" or o.timeline is None:
            return None
        if o.timeline <= (self.state.timeline or 0):
            return None
        # Its fork point is what the committed timeline history records and every replica's
        # divergence is judged by: no promotion is recorded before the report carries it.
        return o if o.timeline_start_lsn is not None or o.timeline <= 1 else None

    def settled(self) -> bool:
        """Has this arbiter been in office long enough to have heard from every live member?"""
        since = self.inp.arbiter_since
        return since is None or self.now - since >= self.inp.settings.report_timeout_s

    def streaming(self, name: str) -> tuple[bool | None, str]:
        """Does replica ``name`` stream from the primary? (True/False/None: no evidence, why)."""
        o = self.obs(name)
        own = None if o is None else o.streaming
        own_why = "" if o is None else o.replication_reason
        if self.inp.streaming is None:
            if own is False:
                return False, f"not streaming: {own_why or 'reported not streaming'}"
            return True, "streaming (reported by the replica)"
        seen, why = self.inp.streaming.get(name, (None, "no evidence yet"))
        if seen is True and own is False:
            return None, f"the primary saw it keep up, but it reports: {own_why}"
        return seen, why

    def outage_ms(self) -> int:
        """From the old primary's last report as a running primary to now (the new primary's first
        report as primary): an upper bound, within one report interval, of the time clients had no
        writable primary. Falls back to the operation's own duration when that report is unknown."""
        last = self.inp.primary_last_ok_at
        since = self.inp.operation_since
        if last is None or (since is not None and last > since):
            return self.elapsed_ms()
        return max(0, int((self.now - last) * 1000))

    def elapsed_ms(self) -> int:
        since = self.inp.operation_since
        return 0 if since is None else max(0, int((self.now - since) * 1000))

    def timed_out(self) -> bool:
        since = self.inp.operation_since
        return since is not None and self.now - since > self.inp.settings.primary_start_timeout_s


@dataclass(frozen=True)
class Rule:
    name: str
    when: Callable[[Ctx], bool]
    build: Callable[[Ctx, str], Decision | None]
    reason: str


def _pos(o: MemberObservation | None) -> int:
    return 0 if o is None or o.wal_position is None else o.wal_position


# -- builders -------------------------------------------------------------------------------------


def _bootstrap_as(reason: str, name: str) -> Decision:
    return Decision(reason, (PrimaryPromoted(name=name, timeline=1, lsn=0),))


def _bootstrap(c: Ctx, reason: str) -> Decision:
    pool = [
        m
        for m in c.state.members.values()
        if not m.is_learner and not m.tags.nofailover and m.tags.failover_priority > 0 and c.fresh(m.name)
    ]
    with_data = [m for m in pool if (o := c.obs(m.name)) is not None and o.pg_running and o.role == "primary"]
    if with_data:
        best = max(with_data, key=lambda m: (_pos(c.obs(m.name)), -m.node_id))
        return _bootstrap_as(f"{reason}: {best.name} already runs a primary with the most WAL", best.name)
    if not pool:
        return _wait(f"{reason}: no reachable voter without nofailover yet")
    first = min(pool, key=lambda m: m.node_id)
    return _bootstrap_as(f"{reason}: {first.name} has the lowest node id among reachable voters", first.name)


def _fork(o: MemberObservation) -> int:
    """The new timeline's switch point, from the server's timeline history file (:meth:`Ctx.promoted`
    requires it): what the committed history records and divergence checks use."""
    return o.timeline_start_lsn if o.timeline_start_lsn is not None else 0


def _complete_failover(c: Ctx, reason: str) -> Decision:
    assert c.op is not None and c.op.candidate is not None
    o = c.promoted(c.op.candidate)
    assert o is not None and o.timeline is not None
    done = FailoverCompleted(
        old_primary=c.op.old_primary,
        new_primary=c.op.candidate,
        timeline=o.timeline,
        lsn=_fork(o),
        duration_ms=c.outage_ms(),
    )
    return Decision(f"{reason}: {c.op.candidate} runs as primary on timeline {o.timeline}", (done,))


def _fail_failover(c: Ctx, reason: str) -> Decision:
    assert c.op is not None
    why = f"{reason}: {c.op.candidate}"
    return Decision(why, (FailoverFailed(old_primary=c.op.old_primary, reason=why[:1000]),), revokes=c.op.candidate)


def _candidate_lease_expired(c: Ctx) -> bool:
    return c.op is not None and c.op.candidate is not None and c.inp.lease.expired(c.op.candidate, c.now)


def _switchover_problem(c: Ctx) -> str | None:
    op = c.op
    assert op is not None
    if op.old_primary != c.state.primary:
        return f"{op.old_primary} is not the primary (the primary is {c.state.primary})"
    if not c.primary_ok():
        return f"the primary {op.old_primary} is not healthy"
    if op.candidate == op.old_primary:
        return f"{op.candidate} already is the primary"
    ch = c.choice((op.old_primary or "",), op.candidate, switchover=True)
    return None if ch.chosen else ch.reason


def _refuse_switchover(c: Ctx, reason: str) -> Decision:
    assert c.op is not None and c.op.old_primary is not None
    why = f"{reason}: {_switchover_problem(c)}"
    return Decision(why, (SwitchoverFailed(primary=c.op.old_primary, candidate=c.op.candidate, reason=why[:1000]),))


def _accept_switchover(c: Ctx, reason: str) -> Decision:
    op = c.op
    assert op is not None and op.old_primary is not None
    ch = c.choice((op.old_primary,), op.candidate, switchover=True)
    assert ch.chosen is not None  # checked by _switchover_problem
    why = f"{reason}: {ch.chosen} ({ch.reason})"
    return Decision(why, (SwitchoverAccepted(primary=op.old_primary, candidate=ch.chosen, reason=why[:1000]),))


def _complete_switchover(c: Ctx, reason: str) -> Decision:
    op = c.op
    assert op is not None and op.candidate is not None and op.old_primary is not None
    o = c.promoted(op.candidate)
    assert o is not None and o.timeline is not None
    done = SwitchoverCompleted(
        old_primary=op.old_primary,
        new_primary=op.candidate,
        timeline=o.timeline,
        lsn=_fork(o),
        duration_ms=c.elapsed_ms(),
    )
    return Decision(f"{reason}: {op.candidate} runs as primary on timeline {o.timeline}", (done,))


def _fail_switchover(c: Ctx, reason: str) -> Decision:
    op = c.op
    assert op is not None and op.old_primary is not None
    why = f"{reason}: {op.candidate}"
    failed = SwitchoverFailed(primary=op.old_primary, candidate=op.candidate, reason=why[:1000])
    return Decision(why, (failed,), revokes=op.candidate)


def _record_promotion(c: Ctx, reason: str) -> Decision:
    o = c.promoted(c.state.primary)
    assert o is not None and o.timeline is not None and c.state.primary is not None
    promoted = PrimaryPromoted(name=c.state.primary, timeline=o.timeline, lsn=_fork(o))
    return Decision(f"{reason}: timeline {o.timeline}", (promoted,))


def _lease_wait(c: Ctx, reason: str) -> Decision:
    p = c.state.primary
    if p is None:
        holders = ", ".join(c.inp.lease.holders(c.now)) or "none"
        return _wait(f"{reason}: no primary; leases possibly valid: {holders}")
    left = c.inp.lease.seconds_until_expired(p, c.now)
    return _wait(f"{reason}: {_down(c)}; lease of {p} expires in {left:.1f} s")


def _down(c: Ctx) -> str:
    p = c.state.primary
    o = c.obs(p)
    since = c.inp.primary_down_since
    ago = "" if since is None else f" for {c.now - since:.1f} s"
    if o is None or not c.fresh(p):
        return f"primary {p} unreachable{ago}"
    if not o.pg_running:
        return f"PostgreSQL of primary {p} is down{ago}"
    if o.role == "primary" and p is not None and c.inp.lease.expired(p, c.now):
        return f"lease of primary {p} expired (no renewal for {c.inp.settings.arbiter_wait_s:.2f} s)"
    return f"primary {p} reports role {o.role}{ago}"


def _start_failover(c: Ctx, reason: str) -> Decision:
    ch = c.failover_choice()
    assert ch.chosen is not None
    detail = _down(c) if c.state.primary is not None else "no primary"
    why = f"{reason}: {detail}; {ch.reason}"
    started = FailoverStarted(
        old_primary=c.state.primary, reason=why[:1000], candidates=tuple(v.to_info() for v in ch.verdicts),
        chosen=ch.chosen,
    )
    return Decision(why, (started,), revokes=c.state.primary)


def _no_candidate(c: Ctx, reason: str) -> Decision:
    return _wait(f"{reason}: {_down(c)}; {c.failover_choice().reason}")


def _const_wait(c: Ctx, reason: str) -> Decision:
    op = c.op
    extra = f" ({op.kind} {op.old_primary} -> {op.candidate})" if op is not None else ""
    return _wait(reason + extra)


def _nothing(c: Ctx, reason: str) -> None:
    return None


def _failover_op(c: Ctx) -> bool:
    return c.op is not None and c.op.kind == "failover"


def _switch_op(c: Ctx) -> bool:
    return c.op is not None and c.op.kind == "switchover"


RULES: list[Rule] = [
    Rule("not-bootstrapped", lambda c: c.state.cluster_id is None, _const_wait, "cluster not bootstrapped yet"),
    Rule(
        "bootstrap",
        lambda c: c.state.primary is None and not c.state.timeline_history and c.op is None,
        _bootstrap,
        "choose the initial primary",
    ),
    Rule(
        "failover-completed",
        lambda c: _failover_op(c) and c.promoted(c.op.candidate if c.op else None) is not None,
        _complete_failover,
        "failover completed",
    ),
    Rule(
        "failover-candidate-lost",
        lambda c: _failover_op(c) and not c.fresh(c.op.candidate if c.op else None) and _candidate_lease_expired(c),
        _fail_failover,
        "failover failed: candidate unreachable and its lease expired",
    ),
    Rule(
        "failover-timeout",
        lambda c: _failover_op(c) and c.timed_out() and _candidate_lease_expired(c),
        _fail_failover,
        "failover failed: no promotion within primary_start_timeout_s",
    ),
    Rule("failover-in-progress", _failover_op, _const_wait, "failover in progress: waiting for the promotion"),
    Rule(
        # A new arbiter has not heard from every member yet: "no report" is not a reason to refuse a
        # switchover the API just accepted (found by CI: the leadership move right after one
        # switchover made the next one fail with "unreachable: no report").
        "switchover-wait-new-arbiter",
        lambda c: _switch_op(c) and not switchover_accepted(c.op) and not c.settled()
        and _switchover_problem(c) is not None,
        _const_wait,
        "switchover waits: this arbiter is new and has not heard from every member yet",
    ),
    Rule(
        "switchover-refused",
        lambda c: _switch_op(c) and not switchover_accepted(c.op) and _switchover_problem(c) is not None,
        _refuse_switchover,
        "switchover refused",
    ),
    Rule(
        "switchover-accepted",
        lambda c: _switch_op(c) and not switchover_accepted(c.op),
        _accept_switchover,
        "switchover accepted",
    ),
    Rule(
        "switchover-completed",
        lambda c: _switch_op(c) and c.promoted(c.op.candidate if c.op else None) is not None,
        _complete_switchover,
        "switchover completed",
    ),
    Rule(
        "switchover-timeout",
        lambda c: _switch_op(c) and c.timed_out() and _candidate_lease_expired(c),
        _fail_switchover,
        "switchover failed: no promotion within primary_start_timeout_s",
    ),
    Rule("switchover-in-progress", _switch_op, _const_wait, "switchover in progress: demote, catch up, promote"),
    Rule(
        "promotion-recorded",
        lambda c: c.promoted(c.state.primary) is not None,
        _record_promotion,
        "the primary promoted itself onto a new timeline",
    ),
    # A primary whose lease expired has fenced itself (ram.ha.lease), whatever its last report said:
    # the failover need not also wait for the reports to go stale (report_timeout_s).
    Rule("primary-healthy", lambda c: c.primary_ok() and not c.primary_lease_expired(), _nothing, "primary healthy"),
    Rule("maintenance", lambda c: c.state.maintenance, _const_wait, "maintenance mode: no automatic failover"),
    Rule("lease-valid", lambda c: not c.primary_lease_expired(), _lease_wait, "waiting for the primary's lease"),
    Rule("no-candidate", lambda c: c.failover_choice().chosen is None, _no_candidate, "no failover possible"),
    Rule("failover", lambda c: True, _start_failover, "failover"),
]


# -- health ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthRule:
    """``healthy`` None: no verdict; the committed health stays as it is (no evidence either way)."""

    name: str
    when: Callable[[Ctx, str, MemberObservation | None], bool]
    healthy: bool | None
    reason: str


def _expected_primary(c: Ctx, n: str) -> bool:
    return n == c.state.primary or (c.op is not None and c.op.candidate == n and c.promoted(n) is not None)


def _cannot_judge_streaming(c: Ctx) -> bool:
    """Streaming can only be judged against a running primary with no operation moving it."""
    return c.op is not None or not c.primary_ok()


HEALTH_RULES: list[HealthRule] = [
    HealthRule(
        "unreachable-new-arbiter",
        lambda c, n, o: not c.fresh(n) and not c.settled(),
        None,
        "no report yet, but this arbiter is new: waiting one report timeout before judging",
    ),
    HealthRule("unreachable", lambda c, n, o: not c.fresh(n), False, "unreachable: no recent report"),
    HealthRule("pg-down", lambda c, n, o: o is not None and not o.pg_running, False, "PostgreSQL is down"),
    HealthRule(
        "primary-ok",
        lambda c, n, o: _expected_primary(c, n) and o is not None and o.role == "primary",
        True,
        "running as primary",
    ),
    HealthRule(
        "primary-not-primary", lambda c, n, o: _expected_primary(c, n), False, "expected primary, reports another role"
    ),
    HealthRule(
        "unexpected-primary",
        lambda c, n, o: o is not None and o.role == "primary",
        False,
        "reports primary but is not the primary",
    ),
    HealthRule(
        "timeline",
        lambda c, n, o: o is not None and c.state.timeline is not None and o.timeline != c.state.timeline,
        False,
        "not on the cluster's timeline",
    ),
    HealthRule("role-unknown", lambda c, n, o: o is not None and o.role != "replica", False, "role unknown"),
    HealthRule(
        "replica-primary-unknown",
        lambda c, n, o: _cannot_judge_streaming(c),
        None,
        "no running primary (or an operation moves it): streaming can not be judged",
    ),
    HealthRule(
        "replica-streaming", lambda c, n, o: c.streaming(n)[0] is True, True, "replica streaming from the primary"
    ),
    HealthRule(
        "replica-no-evidence",
        lambda c, n, o: c.streaming(n)[0] is None or not c.settled(),
        None,
        "not enough evidence yet whether it streams",
    ),
    HealthRule("replica-not-streaming", lambda c, n, o: True, False, "replica not streaming from the primary"),
]


def _health(c: Ctx) -> list[Decision]:
    out: list[Decision] = []
    for name in sorted(c.state.members):
        m = c.state.members[name]
        o = c.obs(name)
        rule = next(r for r in HEALTH_RULES if r.when(c, name, o))
        if rule.healthy is None:
            continue
        fresh = c.fresh(name)
        pg_running = bool(fresh and o is not None and o.pg_running)
        role = o.role if fresh and o is not None else "unknown"
        timeline = o.timeline if fresh and o is not None else m.timeline
        if (m.healthy, m.pg_running, m.reported_role, m.timeline) == (rule.healthy, pg_running, role, timeline):
            continue
        detail = rule.reason
        if rule.name == "unreachable":
            detail = (
                "unreachable: no report" if o is None else f"unreachable: last report {c.now - o.observed_at:.1f} s ago"
            )
        elif o is not None and rule.name in ("timeline", "primary-not-primary", "unexpected-primary"):
            detail = f"{rule.reason} (role {o.role}, timeline {o.timeline}, cluster timeline {c.state.timeline})"
        elif rule.name in ("replica-streaming", "replica-not-streaming"):
            detail = c.streaming(name)[1]
        why = f"{name} {'healthy' if rule.healthy else 'unhealthy'}: {detail}"
        out.append(
            Decision(
                why,
                (
                    MemberHealthChanged(
                        name=name,
                        healthy=rule.healthy,
                        pg_running=pg_running,
                        role=role,
                        timeline=timeline,
                        lsn=o.wal_position if o is not None and fresh else m.lsn,
                        lag_bytes=o.lag_bytes if o is not None and fresh else None,
                        reason=why[:1000],
                    ),
                ),
                rule=f"health:{rule.name}",
            )
        )
    return out


def _sync(c: Ctx, health_changed: bool) -> list[Decision]:
    if c.op is not None or not c.primary_ok() or not c.settled():
        return []
    o = c.obs(c.state.primary)
    enforces = None if o is None or o.sync_standby_names is None else parse_standby_names(o.sync_standby_names)
    step = plan_sync_change(c.state, c.inp.settings, enforces, None if o is None else o.state_position)
    if step.kind != "commit" or step.config is None:
        return []
    if step.guard_position is not None and health_changed:
        return []  # the guard would reject it: health events are proposed first
    changed = SynchronousStandbysChanged(
        mode=step.config.mode, num_sync=step.config.num_sync, standbys=step.config.standbys, reason=step.reason[:1000]
    )
    return [Decision(step.reason, (changed,), guard_position=step.guard_position, rule="sync-set")]


def arbitrate(inp: ArbiterInput) -> list[Decision]:
    """The decisions for this tick, in proposal order (health, main, sync set)."""
    op = inp.state.current_operation
    if (
        op is not None
        and op.kind == "switchover"
        and op.scheduled_at is not None
        and not switchover_accepted(op)
        and inp.pending_switchover is None
    ):
        op = None  # scheduled and not due yet: the runtime passes it as pending_switchover when due
    c = Ctx(inp, op)
    health = _health(c) if inp.state.cluster_id is not None else []
    out: list[Decision] = list(health)
    for rule in RULES:
        if rule.when(c):
            d = rule.build(c, rule.reason)
            if d is not None:
                out.append(replace(d, rule=rule.name))
            break
    if inp.state.cluster_id is not None:
        out.extend(_sync(c, bool(health)))
    return out


# -- lease grants ---------------------------------------------------------------------------------


def grant_policy(
    state: ClusterState,
    observations: Mapping[str, MemberObservation],
    settings: HASettings,
    holder: str,
    now: float,
    primary_down_since: float | None = None,
) -> GrantVerdict:
    """May ``holder`` be granted the lease per committed state (the view's timing check comes after)?"""
    op = state.current_operation
    if op is not None and op.kind == "failover":
        if holder == op.candidate:
            return GrantVerdict(True, f"{holder} is the failover candidate")
        return GrantVerdict(False, f"failover to {op.candidate} in progress")
    if switchover_accepted(op):
        assert op is not None
        if holder == op.old_primary:
            return GrantVerdict(True, f"{holder} is demoting for the switchover")
        if holder != op.candidate:
            return GrantVerdict(False, f"switchover {op.old_primary} -> {op.candidate} in progress")
        po = observations.get(op.old_primary or "")
        co = observations.get(holder)
        ch = choose_candidate(state, observations, settings, exclude=(op.old_primary or "",), required=holder, now=now)
        if ch.chosen != holder:
            return GrantVerdict(False, ch.reason)
        if is_fresh(po, now, settings) and po is not None:
            if po.role == "primary" and po.pg_running and not po.lease_released:
                return GrantVerdict(False, f"{op.old_primary} has not demoted yet")
            if not po.pg_running and po.lease_released:
                # Stopped cleanly, not yet back as a standby: its WAL ends with the shutdown checkpoint.
                if po.stopped_lsn is None:
                    return GrantVerdict(False, f"{op.old_primary} stopped; its final WAL position is not known yet")
                if _pos(co) <= po.stopped_lsn:
                    return GrantVerdict(
                        False,
                        f"{holder} has not received {op.old_primary}'s shutdown checkpoint "
                        f"({_pos(co)} <= {po.stopped_lsn})",
                    )
            elif _pos(co) < _pos(po):
                return GrantVerdict(
                    False, f"{holder} has not caught up with {op.old_primary} ({_pos(co)} < {_pos(po)})"
                )
        return GrantVerdict(True, f"{holder} is the switchover candidate and has caught up")
    if state.primary is None:
        return GrantVerdict(False, "no primary")
    if holder != state.primary:
        return GrantVerdict(False, f"{holder} is not the primary ({state.primary} is)")
    o = observations.get(holder)
    if (
        primary_down_since is not None
        and o is not None
        and is_fresh(o, now, settings)
        and not o.pg_running
        and now - primary_down_since > settings.primary_start_timeout_s
    ):
        return GrantVerdict(
            False,
            f"PostgreSQL of {holder} down for {now - primary_down_since:.1f} s > primary_start_timeout_s "
            f"{settings.primary_start_timeout_s}",
        )
    return GrantVerdict(True, f"{holder} is the primary")


def decide_grant(inp: ArbiterInput, holder: str, lease_s: float | None = None) -> GrantVerdict:
    """Policy, then the view's one-holder timing rule (records the grant when given). ``lease_s``:
    the holder's lease as it announced it (None: the same as ours)."""
    policy = grant_policy(inp.state, inp.observations, inp.settings, holder, inp.now, inp.primary_down_since)
    if not policy.granted:
        return policy
    released = _released_old_primary(inp, holder)
    if released is not None:
        inp.lease.on_released(released)
    return inp.lease.try_grant(holder, inp.now, applied_position=inp.state.last_position, lease_s=lease_s)


def _released_old_primary(inp: ArbiterInput, holder: str) -> str | None:
    """The old primary of the accepted switchover to ``holder``, if it reported that it stopped
    accepting writes and gave its lease up: its grant then no longer delays the candidate's.

    Sound because the holder releases only after its PostgreSQL stopped cleanly, and answers to
    renewals it sent before releasing are ignored on its side (:meth:`HolderLease.release`)."""
    op = inp.state.current_operation
    if not switchover_accepted(op) or op is None or holder != op.candidate or op.old_primary is None:
        return None
    po = inp.observations.get(op.old_primary)
    if po is None or not is_fresh(po, inp.now, inp.settings) or not po.lease_released:
        return None
    if po.pg_running and po.role == "primary":
        return None
    return op.old_primary
