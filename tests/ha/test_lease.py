"""Lease timing: unit tests and the safety property over arbitrary delays, drifts and schedules."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ram.ha.lease import (
    UNANNOUNCED_LEASE_S,
    WILDCARD,
    ArbiterLeaseView,
    HolderLease,
    RenewToken,
    announced_lease,
    effective_lease,
    lease_to_announce,
    lowering_delay,
    presumed_lease,
)
from ram.ha.settings import HASettings

S = HASettings()


def test_settings_defaults_and_derived() -> None:
    assert (S.lease_s, S.renew_interval_s, S.clock_drift, S.safety_margin_s, S.fence_duration_s) == (
        1.0, 0.1, 0.01, 0.1, 0.2,
    )
    assert S.fence_early_s == pytest.approx(1.0 * 0.01 + 0.2)
    assert S.arbiter_wait_s == pytest.approx(1.0 * 1.01 + 0.1)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"renew_interval_s": 1.0}, "renew_interval_s (1.0) * 3 must be <= lease_s"),
        ({"fence_duration_s": 1.6}, "lease_s is too short for fence_duration_s"),
        ({"report_timeout_s": 0.3}, "report_interval_s (0.25) * 2 must be <= report_timeout_s"),
        ({"clock_drift": 0.5}, "clock_drift"),
        ({"synchronous_mode": "sometimes"}, "synchronous_mode"),
        ({"lease_s": -1}, "lease_s"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_settings_validation_names_keys(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as exc:
        HASettings(**kwargs)
    assert needle in str(exc.value)


def test_settings_frozen() -> None:
    with pytest.raises(ValidationError):
        S.lease_s = 3.0  # type: ignore[misc]


def test_holder_lease_basics() -> None:
    h = HolderLease(S)
    lease = S.lease_s
    assert h.must_fence(0.0) and h.time_left(0.0) == 0.0 and h.fence_at() is None
    tok = h.on_renew_sent(10.0)
    assert h.must_fence(10.0)  # not granted yet
    h.on_renew_ok(tok)
    assert h.valid_until == 10.0 + lease
    assert h.fence_at() == pytest.approx(10.0 + lease - S.fence_early_s)
    assert not h.must_fence(10.5)
    assert h.time_left(10.5) == pytest.approx(10.0 + lease - S.fence_early_s - 10.5)
    assert h.must_fence(10.0 + lease - S.fence_early_s)
    # A late answer to an older request never shortens the lease.
    t1 = h.on_renew_sent(10.5)
    t2 = h.on_renew_sent(10.75)
    h.on_renew_ok(t2)
    h.on_renew_ok(t1)
    assert h.valid_until == 10.75 + lease
    # Release: answers to requests sent before are ignored.
    t3 = h.on_renew_sent(11.0)
    h.release()
    h.on_renew_ok(t3)
    assert h.must_fence(11.0)
    with pytest.raises(ValueError, match="backwards"):
        h.on_renew_sent(1.0)


def test_arbiter_view_not_leader_never_expires() -> None:
    v = ArbiterLeaseView(S)
    assert not v.expired("p", 1e9)
    assert v.seconds_until_expired("p", 0) == math.inf
    assert not v.try_grant("p", 0).granted
    with pytest.raises(RuntimeError):
        v.on_grant("p", 0.0)


def test_arbiter_view_new_leader_presumes_grant_at_election() -> None:
    v = ArbiterLeaseView(S)
    # The predecessor's grants are of unknown length: the longest default any release had.
    assert v.presumed_wait == pytest.approx(UNANNOUNCED_LEASE_S * (1 + S.clock_drift) + S.safety_margin_s)
    v.on_became_leader(100.0)  # unknown holder
    assert not v.expired("p", 100.0 + v.presumed_wait - 0.01)
    assert v.expired("p", 100.0 + v.presumed_wait)
    verdict = v.try_grant("p", 101.0)
    assert not verdict.granted and "unknown holder" in verdict.reason
    assert v.try_grant("p", 100.0 + v.presumed_wait).granted


def test_arbiter_view_steady_holder_renews_at_once_others_wait() -> None:
    v = ArbiterLeaseView(S)
    v.on_became_leader(100.0, steady_holder="p")
    assert v.try_grant("p", 100.1).granted
    r = v.try_grant("x", 101.0)
    assert not r.granted and r.reason.startswith("lease of p may be valid for")
    assert v.seconds_until_expired("p", 101.0) == pytest.approx(100.0 + v.presumed_wait - 101.0)
    # Once the election is older than the presumed wait, p's own (announced) lease counts.
    t = 100.0 + v.presumed_wait
    assert v.try_grant("p", t).granted
    assert v.seconds_until_expired("p", t) == pytest.approx(S.arbiter_wait_s)
    assert not v.try_grant("x", t + S.arbiter_wait_s - 0.01).granted
    assert v.try_grant("x", t + S.arbiter_wait_s).granted
    assert v.holders(t + S.arbiter_wait_s) == ["x"]
    # p must now wait for x
    assert not v.try_grant("p", t + S.arbiter_wait_s + 0.1).granted


def test_arbiter_view_waits_for_the_holders_announced_lease() -> None:
    """Lease settings may differ between nodes for a while (a rolling upgrade, a one-by-one
    restart): the arbiter waits for the longer of its own lease and the holder's."""
    v = ArbiterLeaseView(S)
    v.on_became_leader(0.0, steady_holder="p")
    t = v.presumed_wait
    assert v.try_grant("p", t, lease_s=announced_lease(5.0)).granted
    assert v.seconds_until_expired("p", t) == pytest.approx(5.0 * (1 + S.clock_drift) + S.safety_margin_s)
    # A later, shorter announcement does not shorten a grant already given.
    assert v.try_grant("p", t + 0.1, lease_s=0.5).granted
    assert v.seconds_until_expired("p", t + 0.1) == pytest.approx(5.0 * (1 + S.clock_drift) + S.safety_margin_s - 0.1)
    # A holder that announces nothing (an older release) or garbage counts as UNANNOUNCED_LEASE_S.
    assert [announced_lease(x) for x in (0.0, -1.0, math.nan, math.inf)] == [UNANNOUNCED_LEASE_S] * 4
    assert announced_lease(0.5) == 0.5 and announced_lease(1e9) == 3600.0
    w = ArbiterLeaseView(S)
    w.on_became_leader(0.0, steady_holder="q")
    assert w.try_grant("q", 10.0, lease_s=announced_lease(0.0)).granted
    assert w.seconds_until_expired("q", 10.0) == pytest.approx(w.presumed_wait)
    # Shorter than ours: ours counts.
    assert w.try_grant("q", 20.0, lease_s=0.3).granted
    assert w.deadline("q") == pytest.approx(20.0 + S.arbiter_wait_s)


def test_arbiter_view_release_and_revoke() -> None:
    v = ArbiterLeaseView(S)
    v.on_became_leader(0.0, steady_holder="p")
    t = S.arbiter_wait_s + 1
    assert v.try_grant("p", t).granted
    v.revoke("p", until_position=10)
    r = v.try_grant("p", t + 0.1, applied_position=9)
    assert not r.granted and "being revoked" in r.reason
    assert v.try_grant("p", t + 0.1, applied_position=10).granted
    v.revoke("p")
    assert not v.try_grant("p", t + 0.2, applied_position=99).granted
    v.restore("p")
    assert v.try_grant("p", t + 0.2).granted
    v.on_released("p")
    assert v.expired("p", t + 0.3)
    assert v.try_grant("x", t + 0.3).granted
    assert WILDCARD not in v.holders(t + 0.3)
    v.on_lost_leadership()
    assert not v.expired("x", 1e9)


# ------------------------------------------------------------------------------------------------
# The safety property: no real instant where P may still write and the arbiter says "expired".


@dataclass(frozen=True)
class Clock:
    offset: float
    rate: float

    def at(self, t: float) -> float:
        return self.offset + self.rate * t

    def real(self, c: float) -> float:
        return (c - self.offset) / self.rate


settings_st = st.builds(
    HASettings,
    lease_s=st.floats(1.0, 10.0),
    renew_interval_s=st.just(0.25),
    clock_drift=st.floats(0.0, 0.1),
    safety_margin_s=st.floats(0.0, 0.5),
    fence_duration_s=st.floats(0.0, 0.4),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[HASettings, Clock, Clock, Clock, float, list[tuple[float, float, float, bool]]]:
    s = draw(settings_st)
    rho = s.clock_drift
    rate = st.floats(1 - rho, 1 + rho)
    cp = Clock(draw(st.floats(-1e4, 1e4)), draw(rate))
    cl = Clock(draw(st.floats(-1e4, 1e4)), draw(rate))
    cl2 = Clock(draw(st.floats(-1e4, 1e4)), draw(rate))
    n = draw(st.integers(1, 25))
    gaps = draw(st.lists(st.floats(0.0, 3.0), min_size=n, max_size=n))
    reqs = []
    t = 0.0
    for g in gaps:
        t += g
        reqs.append((t, draw(st.floats(0.0, 4.0)), draw(st.floats(0.0, 4.0)), draw(st.booleans())))
    u = draw(st.floats(0.0, t + 5.0))  # real instant the second leader learns it was elected
    return s, cp, cl, cl2, u, reqs


def _check(
    s: HASettings,
    cp: Clock,
    leaders: list[tuple[Clock, float, float, str | None]],
    reqs: list[tuple[float, float, float, bool]],
    *,
    leader_settings: list[HASettings] | None = None,
    committed: float | None = None,
    leaders_know_committed: bool = True,
) -> None:
    """``leaders``: (clock, elected_at_real, deposed_at_real, steady_holder); requests sent in
    [elected, deposed) go to that leader. Checks every interval between events exactly. ``s`` is
    the holder's settings, ``leader_settings`` each leader's (default: ``s``), ``committed`` the
    holder's committed lease length (known to every leader from the start, unless
    ``leaders_know_committed`` is False: the checker's own sanity test)."""
    known = [committed] if leaders_know_committed else []
    holder = HolderLease(s)
    views = []
    for i, (clock, elected, _deposed, steady) in enumerate(leaders):
        v = ArbiterLeaseView(leader_settings[i] if leader_settings else s)
        views.append(v)
        if elected == 0.0:
            v.on_became_leader(clock.at(0.0), steady_holder=steady, committed_leases=known)
    events: list[tuple[float, int, str, object]] = []
    for i, (_clock, elected, _, _) in enumerate(leaders):
        if elected > 0.0:
            events.append((elected, 0, "elect", i))
    for k, req in enumerate(reqs):
        events.append((req[0], 1, "send", k))
    tokens: dict[int, RenewToken] = {}
    timeline: list[float] = [0.0]
    # Process in real-time order, generating grant/answer events as we go.
    heap: list[tuple[float, int, int, str, Any]] = [(e[0], e[1], n, e[2], e[3]) for n, e in enumerate(events)]
    heapq.heapify(heap)
    seqn = len(heap)
    while heap:
        t, _, _, kind, arg = heapq.heappop(heap)
        # Before applying this event, check the open interval [last, t).
        _check_interval(s, cp, leaders, views, holder, timeline[-1], t)
        timeline.append(t)
        if kind == "elect":
            i = int(arg)
            clock, _, _, steady = leaders[i]
            views[i].on_became_leader(clock.at(t), steady_holder=steady, committed_leases=known)
        elif kind == "send":
            k = int(arg)
            _sent, d1, d2, ok = reqs[k]
            tokens[k] = holder.on_renew_sent(cp.at(t), committed)
            li = _leader_at(leaders, t)
            if li is not None and ok:
                heapq.heappush(heap, (t + d1, 2, seqn, "grant", (k, li, d2)))
                seqn += 1
        elif kind == "grant":
            k, li, d2 = arg
            clock = leaders[li][0]
            if views[li].try_grant("p", clock.at(t), lease_s=announced_lease(holder.lease_s)).granted:
                heapq.heappush(heap, (t + d2, 3, seqn, "ok", k))
                seqn += 1
        elif kind == "ok":
            holder.on_renew_ok(tokens[int(arg)])
    _check_interval(s, cp, leaders, views, holder, timeline[-1], timeline[-1] + 100.0)


def _leader_at(leaders: list[tuple[Clock, float, float, str | None]], t: float) -> int | None:
    for i, (_, elected, deposed, _) in enumerate(leaders):
        if elected <= t < deposed:
            return i
    return None


def _check_interval(
    s: HASettings,
    cp: Clock,
    leaders: list[tuple[Clock, float, float, str | None]],
    views: list[ArbiterLeaseView],
    holder: HolderLease,
    a: float,
    b: float,
) -> None:
    if b <= a:
        return
    fence = holder.fence_at()
    if fence is None:
        return
    writes_end = cp.real(fence + s.fence_duration_s)  # P may write strictly before this real instant
    for (clock, elected, deposed, _), view in zip(leaders, views, strict=True):
        if view.leader_since is None:
            continue
        lo, hi = max(a, elected), min(b, deposed)
        expired_from = clock.real(view.deadline("p"))
        start = max(lo, expired_from)
        end = min(hi, writes_end)
        assert not start < end - 1e-9, (
            f"P may write until {writes_end:.6f} but leader says expired from {expired_from:.6f} (interval {a}..{b})"
        )


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_lease_safety_single_leader(
    sc: tuple[HASettings, Clock, Clock, Clock, float, list[tuple[float, float, float, bool]]],
) -> None:
    s, cp, cl, _cl2, _u, reqs = sc
    _check(s, cp, [(cl, 0.0, math.inf, "p")], reqs)


@settings(max_examples=400, deadline=None)
@given(scenarios(), st.sampled_from([None, "p"]))
def test_lease_safety_across_leader_change(
    sc: tuple[HASettings, Clock, Clock, Clock, float, list[tuple[float, float, float, bool]]],
    steady: str | None,
) -> None:
    """Requests sent before ``u`` are answered by the old leader (possibly after ``u``: its quorum
    acks preceded the election); the new leader knows nothing of those grants."""
    s, cp, cl, cl2, u, reqs = sc
    if u <= 0.0:
        u = 1e-3
    _check(s, cp, [(cl, 0.0, u, "p"), (cl2, u, math.inf, steady)], reqs)


@st.composite
def mixed_scenarios(
    draw: st.DrawFn,
) -> tuple[HASettings, list[HASettings], Clock, Clock, Clock, float, list[tuple[float, float, float, bool]]]:
    """Each node with settings of its own (a rolling change of ``lease_s``, or one node's file
    differing), each clock within its own node's drift bound."""
    sp, s1, s2 = draw(mixed_settings_st), draw(mixed_settings_st), draw(mixed_settings_st)

    def clock(s: HASettings) -> Clock:
        return Clock(draw(st.floats(-1e4, 1e4)), draw(st.floats(1 - s.clock_drift, 1 + s.clock_drift)))

    cp, cl, cl2 = clock(sp), clock(s1), clock(s2)
    n = draw(st.integers(1, 25))
    reqs = []
    t = 0.0
    for g in draw(st.lists(st.floats(0.0, 3.0), min_size=n, max_size=n)):
        t += g
        reqs.append((t, draw(st.floats(0.0, 4.0)), draw(st.floats(0.0, 4.0)), draw(st.booleans())))
    u = max(1e-3, draw(st.floats(0.0, t + 5.0)))
    return sp, [s1, s2], cp, cl, cl2, u, reqs


mixed_settings_st = st.builds(
    HASettings,
    lease_s=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]) | st.floats(0.75, 12.0),
    renew_interval_s=st.just(0.1),
    clock_drift=st.floats(0.0, 0.1),
    safety_margin_s=st.floats(0.0, 0.5),
    fence_duration_s=st.floats(0.0, 0.2),
)


@settings(max_examples=400, deadline=None)
@given(mixed_scenarios(), st.sampled_from([None, "p"]), st.booleans())
def test_lease_safety_with_different_settings_on_each_node(
    sc: tuple[HASettings, list[HASettings], Clock, Clock, Clock, float, list[tuple[float, float, float, bool]]],
    steady: str | None,
    announced: bool,
) -> None:
    """Holder and leaders disagree on every lease setting; the holder's length is committed or not.
    A new leader still never says "expired" while the holder may write."""
    sp, leader_settings, cp, cl, cl2, u, reqs = sc
    _check(sp, cp, [(cl, 0.0, u, "p"), (cl2, u, math.inf, steady)], reqs,
           leader_settings=leader_settings, committed=sp.lease_s if announced else None)


def test_a_new_leader_that_ignores_committed_leases_is_caught() -> None:
    """Sanity for the rule above: a holder with a 10 s committed lease, and a new leader with 1 s of
    its own that presumes only 2 s (what it did before leases were committed), is unsafe."""
    sp, sl = HASettings(lease_s=10.0), HASettings(lease_s=1.0)
    cp = cl = cl2 = Clock(0.0, 1.0)
    reqs = [(0.5, 0.1, 0.1, True)]
    _check(sp, cp, [(cl, 0.0, 1.0, "p"), (cl2, 1.0, math.inf, None)], reqs,
           leader_settings=[sl, sl], committed=10.0)  # the real rule: safe
    with pytest.raises(AssertionError, match="P may write until"):
        _check(sp, cp, [(cl, 0.0, 1.0, "p"), (cl2, 1.0, math.inf, None)], reqs,
               leader_settings=[sl, sl], committed=10.0, leaders_know_committed=False)


def test_effective_and_presumed_lease() -> None:
    assert effective_lease(1.0, None) == 1.0  # up to 2 s needs no announcement
    assert effective_lease(5.0, None) == UNANNOUNCED_LEASE_S  # longer only once committed
    assert effective_lease(5.0, 3.0) == 3.0
    assert effective_lease(5.0, 5.0) == 5.0
    assert effective_lease(3.0, 5.0) == 3.0  # a shorter own setting always applies
    assert presumed_lease([], 1.0) == UNANNOUNCED_LEASE_S
    assert presumed_lease([None, 5.0, 3.0], 1.0) == 5.0
    assert presumed_lease([None], 4.0) == 4.0
    view = ArbiterLeaseView(HASettings())
    view.on_became_leader(100.0, None, [None, 30.0])
    assert view.deadline("anyone") == pytest.approx(100.0 + 30.0 * 1.01 + 0.1)


def test_lease_to_announce() -> None:
    s = HASettings()
    assert lease_to_announce(1.0, None, 0.0, s) is None  # the default never announces
    assert lease_to_announce(2.0, None, 0.0, s) is None
    assert lease_to_announce(5.0, None, 0.0, s) == 5.0  # longer: at once
    assert lease_to_announce(8.0, 5.0, 0.0, s) == 8.0
    assert lease_to_announce(5.0, 5.0, 99.0, s) is None
    # Shorter: only once every lease of the previous process (at most 5 s long) has run out.
    wait = lowering_delay(5.0, s)
    assert wait == pytest.approx(5.0 * 1.01 + 0.1)
    assert lease_to_announce(1.0, 5.0, wait - 0.01, s) is None
    assert lease_to_announce(1.0, 5.0, wait, s) == 1.0
    assert lease_to_announce(3.0, 5.0, wait, s) == 3.0


def test_safety_checker_detects_a_broken_rule() -> None:
    """Sanity: with the arbiter waiting only lease * (1 - drift), a slow arbiter clock breaks safety."""
    s = HASettings(clock_drift=0.1, safety_margin_s=0.0, fence_duration_s=0.0, lease_s=2.0)

    class Broken(ArbiterLeaseView):
        def deadline(self, holder: str) -> float:
            return super().deadline(holder) - s.lease_s * 0.25

    cp = Clock(0.0, 0.9)  # slow holder clock: it fences late in real time
    cl = Clock(0.0, 1.1)
    holder = HolderLease(s)
    view = Broken(s)
    view.on_became_leader(0.0, "p")
    tok = holder.on_renew_sent(cp.at(1.0))
    assert view.try_grant("p", cl.at(1.0)).granted
    holder.on_renew_ok(tok)
    with pytest.raises(AssertionError):
        _check_interval(s, cp, [(cl, 0.0, math.inf, "p")], [view], holder, 1.0, 100.0)
