"""Candidate rules: one row per rule, asserting the reason; properties over random clusters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ram.eventstore.events import MemberTags
from ram.ha.candidates import MemberObservation, choose_candidate
from ram.ha.settings import HASettings
from ram.projections.state import ClusterState

from .helpers import cluster, member, obs, observations

S = HASettings()
NOW = 100.5


def choose(state: ClusterState, ob: dict[str, MemberObservation], **kw: Any):  # type: ignore[no-untyped-def]
    return choose_candidate(
        state, ob, S, exclude=kw.pop("exclude", (state.primary,) if state.primary else ()), now=NOW, **kw
    )


# (id, member overrides for pg2, observation overrides for pg2, expected reason prefix)
RULES = [
    ("learner", {"is_learner": True}, {}, "learner: is a Raft learner"),
    ("nofailover", {"nofailover": True}, {}, "nofailover: tagged nofailover"),
    ("priority0", {"failover_priority": 0}, {}, "nofailover: failover_priority is 0"),
    ("unreachable_flag", {}, {"reachable": False}, "unreachable: reported unreachable"),
    ("stale", {}, {"observed_at": NOW - 2.0}, "unreachable: last report 2.00 s ago"),
    ("not_running", {}, {"pg_running": False}, "not running: PostgreSQL is down"),
    ("role_primary", {}, {"role": "primary"}, "role: reports role primary"),
    ("role_unknown", {}, {"role": "unknown"}, "role: reports role unknown"),
    ("timeline", {}, {"timeline": 2}, "timeline: replays timeline 2 up to 1000, not a prefix"),
    ("no_position", {}, {"received_lsn": None, "replayed_lsn": None}, "no position: no WAL position reported"),
    ("eligible", {}, {}, "eligible"),
]


@pytest.mark.parametrize(("mkw", "okw", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(mkw: dict[str, Any], okw: dict[str, Any], expected: str) -> None:
    state = cluster(members={"pg2": mkw})
    ob = observations(pg2=okw)
    c = choose(state, ob)
    v = c.verdict("pg2")
    assert v is not None
    assert v.reason.startswith(expected), v.reason
    assert v.eligible == (expected == "eligible")


def test_excluded_and_unreported() -> None:
    state = cluster()
    ob = observations()
    del ob["pg3"]
    c = choose(state, ob)
    assert c.verdict("pg1").reason == "excluded: the old primary"  # type: ignore[union-attr]
    assert c.verdict("pg3").reason == "unreachable: no report"  # type: ignore[union-attr]
    assert c.chosen == "pg2"
    c = choose(state, observations(), exclude=("pg1", "pg2"))
    assert c.verdict("pg2").reason == "excluded: excluded by the caller"  # type: ignore[union-attr]


def test_async_lag_limit() -> None:
    primary_lsn = 10 * 1024 * 1024
    state = cluster()
    ob = observations(
        pg1={"received_lsn": primary_lsn, "replayed_lsn": None},
        pg2={"received_lsn": primary_lsn - S.maximum_lag_on_failover - 1},
        pg3={"received_lsn": primary_lsn - S.maximum_lag_on_failover},
    )
    c = choose(state, ob)
    assert c.verdict("pg2").reason == (  # type: ignore[union-attr]
        f"lag: {S.maximum_lag_on_failover + 1} bytes behind, maximum_lag_on_failover {S.maximum_lag_on_failover}"
    )
    assert c.chosen == "pg3"


def test_async_lag_unknown_and_reported_lag_fallback() -> None:
    state = cluster(members={"pg1": {"lsn": None}})
    ob = observations(pg1={"received_lsn": None, "replayed_lsn": None}, pg2={"lag_bytes": None}, pg3={"lag_bytes": 10})
    c = choose(state, ob)
    assert c.verdict("pg2").reason.startswith("lag unknown")  # type: ignore[union-attr]
    assert c.chosen == "pg3"


def test_most_wal_then_priority_then_name() -> None:
    state = cluster(members={"pg3": {"failover_priority": 5}}, names=("pg1", "pg2", "pg3", "pg4"))
    ob = observations(names=("pg1", "pg2", "pg3", "pg4"), pg2={"received_lsn": 1500}, pg4={"received_lsn": 1500})
    assert choose(state, ob).chosen == "pg2"  # most WAL, name before pg4
    ob["pg3"] = obs("pg3", received_lsn=1500)
    c = choose(state, ob)
    assert c.chosen == "pg3" and "priority 5" in c.reason


def test_required() -> None:
    state = cluster(members={"pg3": {"nofailover": True}})
    ob = observations(pg2={"received_lsn": 2000})
    assert choose(state, ob, required="pg3").chosen is None
    assert choose(state, ob, required="pg3").reason == "pg3 is not eligible: nofailover: tagged nofailover"
    assert choose(state, observations(), required="pg2").chosen == "pg2"
    assert choose(state, ob, required="nope").reason == "nope is not a member"


def test_no_candidate_reason_lists_everyone() -> None:
    state = cluster(members={"pg2": {"nofailover": True}, "pg3": {"is_learner": True}})
    c = choose(state, observations())
    assert c.chosen is None
    assert c.reason.startswith("no eligible candidate: pg1: excluded")
    assert "pg2: nofailover" in c.reason and "pg3: learner" in c.reason
    infos = c.infos()
    assert [i.name for i in infos] == ["pg1", "pg2", "pg3"] and not any(i.eligible for i in infos)


# --- synchronous mode -------------------------------------------------------------------------


def test_sync_on_only_committed_set() -> None:
    state = cluster(sync_mode="on", num_sync=1, sync_standbys=("pg3",))
    ob = observations(pg2={"received_lsn": 5000})
    c = choose(state, ob)
    assert c.verdict("pg2").reason.startswith("not in sync set: committed synchronous set is FIRST 1 (pg3)")  # type: ignore[union-attr]
    assert c.chosen == "pg3"


def test_sync_quorum_needs_n_minus_k_plus_1_reports() -> None:
    names = ("pg1", "pg2", "pg3", "pg4")
    state = cluster(names=names, sync_mode="quorum", num_sync=1, sync_standbys=("pg2", "pg3", "pg4"))
    ob = observations(names=names, pg4={"reachable": False})
    c = choose(state, ob)
    assert c.chosen is None
    assert c.verdict("pg2").reason.startswith(  # type: ignore[union-attr]
        "sync quorum: only 2 of 3 synchronous standbys reported; 3 needed"
    )
    # ANY 2 of 3: two reports suffice; the most advanced wins, others are 'behind'.
    state2 = cluster(names=names, sync_mode="quorum", num_sync=2, sync_standbys=("pg2", "pg3", "pg4"))
    ob2 = observations(names=names, pg3={"received_lsn": 1200}, pg4={"reachable": False})
    c2 = choose(state2, ob2)
    assert c2.chosen == "pg3"
    assert c2.verdict("pg2").reason == "behind: pg3 holds more WAL (1200 > 1000)"  # type: ignore[union-attr]


def test_sync_degraded_uses_async_rules() -> None:
    state = cluster(sync_mode="on", num_sync=0, sync_standbys=())
    assert choose(state, observations()).chosen == "pg2"


# --- properties -------------------------------------------------------------------------------


@st.composite
def random_case(draw: st.DrawFn) -> tuple[ClusterState, dict[str, MemberObservation]]:
    names = tuple(f"pg{i}" for i in range(1, draw(st.integers(2, 6)) + 1))
    primary = names[0]
    members = {}
    obsd: dict[str, MemberObservation] = {}
    for n in names:
        members[n] = member(
            n,
            tags=MemberTags(nofailover=draw(st.booleans()), failover_priority=draw(st.integers(0, 3))),
            is_learner=draw(st.booleans()),
            reported_role="primary" if n == primary else "replica",
        )
        if draw(st.integers(0, 5)) == 0:
            continue
        obsd[n] = obs(
            n,
            reachable=draw(st.booleans()),
            pg_running=draw(st.booleans()),
            role=draw(st.sampled_from(["primary", "replica", "unknown"])),
            timeline=draw(st.sampled_from([1, 1, 1, 2])),
            received_lsn=draw(st.none() | st.integers(0, 4 * 1024 * 1024)),
            observed_at=NOW - draw(st.floats(0, 3)),
        )
    mode = draw(st.sampled_from(["off", "on", "quorum"]))
    if mode == "off":
        sync: dict[str, Any] = {}
    else:
        sset = draw(st.lists(st.sampled_from(names[1:]), unique=True, min_size=1))
        sync = {"sync_mode": mode, "num_sync": draw(st.integers(1, len(sset))), "sync_standbys": tuple(sorted(sset))}
    from dataclasses import replace

    base = cluster(names=names)
    return replace(base, members=members, **sync), obsd


@settings(max_examples=300, deadline=None)
@given(random_case())
def test_candidate_properties(case: tuple[ClusterState, dict[str, MemberObservation]]) -> None:
    state, ob = case
    c = choose(state, ob)
    if c.chosen is None:
        return
    m = state.members[c.chosen]
    o = ob[c.chosen]
    assert c.chosen != state.primary
    assert not m.tags.nofailover and m.tags.failover_priority > 0 and not m.is_learner
    assert o.reachable and NOW - o.observed_at <= S.report_timeout_s and o.pg_running and o.role == "replica"
    assert o.wal_position is not None
    if state.num_sync == 0:
        ref = ob[state.primary].wal_position if state.primary in ob else None  # type: ignore[index]
        refs = [x for x in (ref, state.members[state.primary].lsn) if x is not None]  # type: ignore[index]
        if refs:
            assert max(refs) - o.wal_position <= S.maximum_lag_on_failover
    else:
        assert c.chosen in state.sync_standbys
        # the chosen one holds at least as much as every fresh set member (so every acked commit)
        for s in state.sync_standbys:
            so = ob.get(s)
            if so is not None and so.reachable and NOW - so.observed_at <= S.report_timeout_s and so.timeline == 1:
                assert (so.wal_position or 0) <= o.wal_position
    # most WAL among the eligible
    assert all((v.wal_position or 0) <= o.wal_position for v in c.verdicts if v.eligible)
