"""Failover candidate selection: who may be promoted, and why not the others.

Rules, in the order they are checked (the first that fails is the member's reason):

1. ``excluded``: the caller excludes it (the failed primary, a refused target).
2. ``learner``: a Raft learner is not promoted (it is still catching up / not a voter).
3. ``nofailover``: tagged ``nofailover`` or ``failover_priority`` 0.
3a. ``unhealthy`` (switchovers only, ``require_healthy``): not committed healthy, i.e. not streaming
   from the primary. A failover can not ask this: replicas stop streaming when the primary dies.
4. ``unreachable``: no report, a report older than ``report_timeout_s``, or reported unreachable.
5. ``not running``: its PostgreSQL is down.
6. ``role``: it reports ``primary`` (a second writer, or diverged) or ``unknown``.
7. ``timeline``: its replayed WAL is not a prefix of the committed history (a newer timeline, or an
   older one replayed past the next timeline's fork point: diverged). The replayed timeline comes
   from facts that never run ahead of it (:func:`ram.ha.streaming.replay_timeline`).
8. ``no position``: no WAL position known.
9. Asynchronous mode (committed ``num_sync`` is 0: mode off, or degraded): ``lag`` — further behind
   the primary's last known WAL position than ``maximum_lag_on_failover`` bytes (the reference is
   the primary's latest report, else its committed ``lsn``; without either, the candidate's own
   reported lag is used; without that it is refused: lag unknown).
10. Synchronous mode (committed ``k > 0`` of ``S``, ``n = |S|``): ``not in sync set`` — only members
    of the committed set may be promoted. Every acknowledged commit is on at least ``k`` members of
    ``S`` (the promise kept by :mod:`ram.ha.syncset`), and WAL is a prefix order: a standby that
    flushed position ``p`` holds everything before ``p``. So among ANY ``n - k + 1`` members of
    ``S`` at least one holds the last acknowledged commit, and the most advanced of them holds all
    acknowledged commits. Hence: with fewer than ``n - k + 1`` set members reporting a position
    (``sync quorum``), nobody is eligible; otherwise a member behind the most advanced reporting
    member is refused (``behind``). With ``k = n`` (``'on'`` mode here) one report suffices and every
    member qualifies. This holds for ``FIRST k`` as well as ``ANY k``: both acknowledge a commit once
    some ``k`` listed standbys flushed it.

Among the eligible, the one with the most WAL wins; ties: higher ``failover_priority``, then name.
``required`` restricts the choice to one member (switchover target): if it is not eligible there
is no choice, with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ram.eventstore.events import CandidateInfo
from ram.ha.settings import HASettings
from ram.ha.streaming import StandbyRow
from ram.ha.syncset import committed_sync
from ram.projections.state import ClusterState, Member

__all__ = [
    "CandidateChoice",
    "CandidateVerdict",
    "MemberObservation",
    "choose_candidate",
    "is_diverged",
    "is_fresh",
    "switchover_precheck",
    "target_refusal",
]

Role = Literal["primary", "replica", "unknown"]


@dataclass(frozen=True, slots=True)
class MemberObservation:
    """What the arbiter last heard from a member (``observed_at``: the arbiter's monotonic clock).

    ``sync_standby_names``: the primary's current setting (None: unknown / not a primary);
    ``state_position``: the committed position the member had applied when it reported;
    ``lease_released``: it gave its lease up (clean demotion); ``timeline_start_lsn``: where its
    current timeline forked (from the timeline history file; a new primary's switch point).
    For a primary, ``received_lsn`` is its current WAL position (``InstanceStatus.wal_position``).
    ``stopped_lsn``: for a cleanly stopped server, where its last (shutdown) checkpoint record
    starts — all of its WAL before that record; None when running, crashed or unknown.
    ``lag_bytes``: a standby's replay lag behind its upstream's WAL end (None: not streaming).
    """

    name: str
    reachable: bool
    pg_running: bool
    role: Role
    timeline: int | None
    received_lsn: int | None
    replayed_lsn: int | None
    lag_bytes: int | None
    observed_at: float
    sync_standby_names: str | None = None
    state_position: int = 0
    lease_released: bool = False
    timeline_start_lsn: int | None = None
    stopped_lsn: int | None = None
    #: A standby's own sample: its walreceiver streams from the primary on the cluster's timeline.
    streaming: bool | None = None
    replication_reason: str = ""
    #: A standby's lag behind its upstream's WAL end (``lag_bytes`` is the replay lag).
    receive_lag_bytes: int | None = None
    #: A primary's standbys as its pg_stat_replication shows them.
    standbys: tuple[StandbyRow, ...] = ()
    #: Parameters its PostgreSQL runs with an old value until restarted (pg_settings.pending_restart).
    pending_restart: tuple[str, ...] = ()

    @property
    def wal_position(self) -> int | None:
        xs = [x for x in (self.received_lsn, self.replayed_lsn) if x is not None]
        return max(xs) if xs else None


def is_diverged(state: ClusterState, timeline: int | None, wal_position: int | None) -> bool | None:
    """Is local WAL ``(timeline, position)`` NOT a prefix of the committed primary's history?

    Ahead (a newer timeline than the cluster's) diverges. On an older timeline ``t`` the local WAL
    must end at or before the point where the primary's history left ``t``. Unknown: None.

    The history is not always a line: a timeline can be promoted and then abandoned (a switchover
    to X, then X is cut off and a node that never followed X is promoted from the older timeline),
    and which later timeline forked from ``t`` is not recorded. The earliest fork point of all later
    timelines is never after the true one, so comparing with it may call a node diverged that is
    not (it is rewound; pg_rewind then finds nothing to do) but never the other way round.
    """
    if timeline is None or wal_position is None or state.timeline is None:
        return None
    if timeline > state.timeline:
        return True
    if timeline == state.timeline:
        return False
    forks = [r for r in state.timeline_history if r.timeline > timeline]
    if not forks:
        return None
    return wal_position > min(r.lsn for r in forks)


def is_fresh(obs: MemberObservation | None, now: float | None, settings: HASettings) -> bool:
    if obs is None or not obs.reachable:
        return False
    return now is None or now - obs.observed_at <= settings.report_timeout_s


@dataclass(frozen=True, slots=True)
class CandidateVerdict:
    name: str
    eligible: bool
    reason: str
    wal_position: int | None
    priority: int

    def to_info(self) -> CandidateInfo:
        return CandidateInfo(name=self.name, lsn=self.wal_position, eligible=self.eligible, note=self.reason[:1000])


@dataclass(frozen=True, slots=True)
class CandidateChoice:
    chosen: str | None
    verdicts: tuple[CandidateVerdict, ...]
    reason: str

    def verdict(self, name: str) -> CandidateVerdict | None:
        return next((v for v in self.verdicts if v.name == name), None)

    def infos(self) -> tuple[CandidateInfo, ...]:
        return tuple(v.to_info() for v in self.verdicts)


def _primary_reference(state: ClusterState, observations: Mapping[str, MemberObservation]) -> int | None:
    if state.primary is None:
        return None
    refs = []
    obs = observations.get(state.primary)
    if obs is not None and obs.wal_position is not None:
        refs.append(obs.wal_position)
    m = state.members.get(state.primary)
    if m is not None and m.lsn is not None:
        refs.append(m.lsn)
    return max(refs) if refs else None


def _static_rule(m: Member, *, require_healthy: bool) -> tuple[str, str] | None:
    """The first failing rule that needs no live report, as (rule, reason): the same for the
    arbiter, the API's pre-check and command validation (:func:`target_refusal`)."""
    if m.is_learner:
        return "learner", "learner: is a Raft learner"
    if m.tags.nofailover:
        return "nofailover", "nofailover: tagged nofailover"
    if m.tags.failover_priority == 0:
        return "nofailover", "nofailover: failover_priority is 0"
    if require_healthy and m.healthy is not True:
        return "unhealthy", f"unhealthy: {m.health_reason or 'not reported healthy'}"
    return None


def _static(m: Member, state: ClusterState, *, require_healthy: bool) -> str | None:
    rule = _static_rule(m, require_healthy=require_healthy)
    return None if rule is None else rule[1]


def target_refusal(state: ClusterState, name: str, *, forced: bool = False) -> str | None:
    """Why a command may not name member ``name`` as the next primary (failover or switchover
    target), judged on committed state only; None when it may. ``forced`` (an operator's manual
    failover) overrides the ``nofailover`` rule and nothing else: a learner is never promoted."""
    m = state.members.get(name)
    if m is None:
        return f"no member named {name!r}"
    rule = _static_rule(m, require_healthy=False)
    if rule is None or (forced and rule[0] == "nofailover"):
        return None
    return f"{name} is not eligible: {rule[1]}"


def _on_history(state: ClusterState, timeline: int | None, position: int | None) -> bool:
    """Its WAL is a prefix of the committed primary's history (same timeline, or an older one that
    ends at or before the next timeline's fork point)."""
    return is_diverged(state, timeline, position) is False or (
        state.timeline is not None and timeline == state.timeline
    )


def _basic(
    m: Member,
    obs: MemberObservation | None,
    state: ClusterState,
    settings: HASettings,
    now: float | None,
    *,
    require_healthy: bool = False,
) -> str | None:
    """The first failing basic rule (2-8), or None."""
    static = _static(m, state, require_healthy=require_healthy)
    if static is not None:
        return static
    if obs is None:
        return "unreachable: no report"
    if not obs.reachable:
        return "unreachable: reported unreachable"
    if now is not None and now - obs.observed_at > settings.report_timeout_s:
        return (
            f"unreachable: last report {now - obs.observed_at:.2f} s ago (report_timeout_s {settings.report_timeout_s})"
        )
    if not obs.pg_running:
        return "not running: PostgreSQL is down"
    if obs.role != "replica":
        return f"role: reports role {obs.role}"
    if state.timeline is not None and not _on_history(state, obs.timeline, obs.replayed_lsn or obs.wal_position):
        return (
            f"timeline: replays timeline {obs.timeline} up to {obs.replayed_lsn}, not a prefix of the cluster's "
            f"timeline {state.timeline}"
        )
    if obs.wal_position is None:
        return "no position: no WAL position reported"
    return None


def switchover_precheck(state: ClusterState, candidate: str | None) -> str | None:
    """Why a switchover to ``candidate`` (None: to whichever replica the arbiter picks) can not be
    accepted, judged on committed state only (the API answers on any node, which may not hold the
    live reports); None when it may go ahead. The arbiter then applies :func:`choose_candidate` with
    the live reports (positions, lag, synchronous quorum): the same rules, plus the ones that need
    fresh figures."""
    sync = committed_sync(state)
    reasons: dict[str, str] = {}
    for name in sorted(state.members):
        if name == state.primary:
            continue
        m = state.members[name]
        why = _static(m, state, require_healthy=True)
        if why is None and m.reported_role != "replica":
            why = f"role: reports role {m.reported_role}"
        if why is None and sync.promises and name not in sync.standbys:
            why = f"not in sync set: committed synchronous set is {sync.describe()}"
        if why is not None:
            reasons[name] = why
    if candidate is not None:
        if candidate not in state.members:
            return f"{candidate} is not a member"
        if candidate == state.primary:
            return f"{candidate} already is the primary"
        return None if candidate not in reasons else f"{candidate} is not eligible: {reasons[candidate]}"
    if any(n not in reasons for n in state.members if n != state.primary):
        return None
    return "no replica can take over: " + ("; ".join(f"{n}: {r}" for n, r in reasons.items()) or "no replicas")


def choose_candidate(
    state: ClusterState,
    observations: Mapping[str, MemberObservation],
    settings: HASettings,
    *,
    exclude: Iterable[str] = (),
    required: str | None = None,
    now: float | None = None,
    require_healthy: bool = False,
) -> CandidateChoice:
    """``require_healthy``: a switchover also requires committed health (a streaming replica); a
    failover can not, since replicas stop streaming when the primary dies."""
    excluded = set(exclude)
    sync = committed_sync(state)
    reasons: dict[str, str | None] = {}
    for name in sorted(state.members):
        m = state.members[name]
        if name in excluded:
            reasons[name] = "excluded: " + ("the old primary" if name == state.primary else "excluded by the caller")
        else:
            reasons[name] = _basic(m, observations.get(name), state, settings, now, require_healthy=require_healthy)

    def pos(name: str) -> int | None:
        o = observations.get(name)
        return o.wal_position if o is not None else None

    if not sync.promises:
        ref = _primary_reference(state, observations)
        for name, r in reasons.items():
            if r is not None:
                continue
            p = pos(name)
            assert p is not None
            obs = observations[name]
            if ref is not None:
                lag: int | None = max(0, ref - p)
            else:
                lag = obs.lag_bytes
            if lag is None:
                reasons[name] = "lag unknown: no primary position and no reported lag"
            elif lag > settings.maximum_lag_on_failover:
                reasons[name] = f"lag: {lag} bytes behind, maximum_lag_on_failover {settings.maximum_lag_on_failover}"
    else:
        members_s = set(sync.standbys)
        n, k = len(members_s), sync.num_sync
        need = n - k + 1
        reporting = {
            s: p
            for s in members_s
            if (p := pos(s)) is not None
            and is_fresh(observations.get(s), now, settings)
            and (
                state.timeline is None
                or _on_history(state, observations[s].timeline, observations[s].replayed_lsn or p)
            )
        }
        for name, r in reasons.items():
            if r is None and name not in members_s:
                reasons[name] = f"not in sync set: committed synchronous set is {sync.describe()}"
        if len(reporting) < need:
            for name, r in reasons.items():
                if r is None:
                    reasons[name] = (
                        f"sync quorum: only {len(reporting)} of {n} synchronous standbys reported; {need} needed "
                        "to know who holds every acknowledged commit"
                    )
        else:
            best = max(reporting.values())
            leader = min(s for s, p in reporting.items() if p == best)
            for name, r in reasons.items():
                if r is None and (pos(name) or 0) < best:
                    reasons[name] = f"behind: {leader} holds more WAL ({best} > {pos(name)})"
    verdicts = tuple(
        CandidateVerdict(
            name=name,
            eligible=r is None,
            reason=r or "eligible",
            wal_position=pos(name),
            priority=state.members[name].tags.failover_priority,
        )
        for name, r in reasons.items()
    )
    pool = [v for v in verdicts if v.eligible and (required is None or v.name == required)]
    if required is not None and required not in state.members:
        return CandidateChoice(None, verdicts, f"{required} is not a member")
    if required is not None and required in excluded:
        v = next(v for v in verdicts if v.name == required)
        return CandidateChoice(None, verdicts, f"{required} is not eligible: {v.reason}")
    if not pool:
        if required is not None:
            v = next(v for v in verdicts if v.name == required)
            return CandidateChoice(None, verdicts, f"{required} is not eligible: {v.reason}")
        return CandidateChoice(
            None, verdicts, "no eligible candidate: " + "; ".join(f"{v.name}: {v.reason}" for v in verdicts)
        )
    best_v = min(pool, key=lambda v: (-(v.wal_position or 0), -v.priority, v.name))
    others = len(pool) - 1
    return CandidateChoice(
        best_v.name,
        verdicts,
        f"{best_v.name} has the most WAL ({best_v.wal_position}) among {others + 1} eligible"
        + (f", priority {best_v.priority}" if others else ""),
    )
