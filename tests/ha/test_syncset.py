"""Synchronous set: desired set, implication, rendering/parsing and the two-step protocol."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ram.ha.settings import HASettings
from ram.ha.syncset import (
    SyncConfig,
    desired_sync,
    implies,
    parse_standby_names,
    pg_target,
    plan_sync_change,
    render_standby_names,
    weakest_common,
)

from .helpers import cluster

ON = HASettings(synchronous_mode="on")
QUORUM = HASettings(synchronous_mode="quorum", synchronous_node_count=1)
STRICT = HASettings(synchronous_mode="on", synchronous_strict=True)


@pytest.mark.parametrize(
    ("settings_", "members", "sync", "expected", "reason"),
    [
        (HASettings(), {}, {}, SyncConfig("off", 0), "synchronous_mode is off"),
        (ON, {}, {}, SyncConfig("on", 1, ("pg2",)), "FIRST 1: pg2"),
        (ON, {"pg2": {"lsn": 10}}, {}, SyncConfig("on", 1, ("pg3",)), "FIRST 1: pg3"),  # most advanced
        (
            ON,
            {"pg2": {"lsn": 10}},
            {"sync_mode": "on", "num_sync": 1, "sync_standbys": ("pg2",)},
            SyncConfig("on", 1, ("pg2",)),
            "FIRST 1: pg2",
        ),  # sticky
        (ON, {"pg2": {"nosync": True}}, {}, SyncConfig("on", 1, ("pg3",)), "FIRST 1: pg3"),
        (ON, {"pg2": {"is_learner": True}}, {}, SyncConfig("on", 1, ("pg3",)), "FIRST 1: pg3"),
        (ON, {"pg2": {"nofailover": True}}, {}, SyncConfig("on", 1, ("pg3",)), "FIRST 1: pg3"),
        (ON, {"pg2": {"healthy": False}}, {}, SyncConfig("on", 1, ("pg3",)), "FIRST 1: pg3"),
        (ON, {"pg2": {"timeline": 2}}, {}, SyncConfig("on", 1, ("pg3",)), "FIRST 1: pg3"),
        (
            HASettings(synchronous_mode="on", synchronous_node_count=3),
            {},
            {},
            SyncConfig("on", 2, ("pg2", "pg3")),
            "FIRST 2: pg2, pg3 (only 2 healthy, 3 wanted)",
        ),
        (QUORUM, {}, {}, SyncConfig("quorum", 1, ("pg2", "pg3")), "ANY 1 of 2 healthy standbys"),
        (
            ON,
            {"pg2": {"healthy": False}, "pg3": {"healthy": False}},
            {},
            SyncConfig("on", 0),
            "degraded to async: no healthy synchronous standby",
        ),
        (
            STRICT,
            {"pg2": {"healthy": False}, "pg3": {"healthy": False}},
            {"sync_mode": "on", "num_sync": 1, "sync_standbys": ("pg2",)},
            SyncConfig("on", 1, ("pg2",)),
            "strict: no healthy standby; keeping the set, writes wait",
        ),
        (
            STRICT,
            {"pg2": {"healthy": False}, "pg3": {"healthy": False}},
            {},
            SyncConfig("on", 0),
            "strict: no standby yet; writes wait for any standby",
        ),
    ],
)
def test_desired_sync(
    settings_: HASettings, members: dict[str, dict[str, Any]], sync: dict[str, Any], expected: SyncConfig, reason: str
) -> None:
    d = desired_sync(cluster(members=members, **sync), settings_)
    assert d.config == expected
    assert d.reason == reason


@pytest.mark.parametrize(
    ("strong", "weak", "result"),
    [
        (SyncConfig("on", 1, ("a",)), SyncConfig("on", 0), True),
        (SyncConfig("on", 0), SyncConfig("on", 1, ("a",)), False),
        (SyncConfig("on", 1, ("a",)), SyncConfig("on", 1, ("a", "b")), True),  # adding weakens
        (SyncConfig("on", 1, ("a", "b")), SyncConfig("on", 1, ("a",)), False),  # removing strengthens
        (SyncConfig("on", 2, ("a", "b")), SyncConfig("on", 1, ("a",)), True),
        (SyncConfig("quorum", 1, ("a", "b")), SyncConfig("quorum", 2, ("a", "b")), False),
        (SyncConfig("quorum", 2, ("a", "b", "c")), SyncConfig("on", 1, ("a", "b")), True),
    ],
)
def test_implies(strong: SyncConfig, weak: SyncConfig, result: bool) -> None:
    assert implies(strong, weak) is result


@given(
    st.lists(st.sampled_from("abcde"), unique=True, max_size=5).flatmap(
        lambda s: st.tuples(st.just(s), st.integers(0, len(s)))
    ),
    st.lists(st.sampled_from("abcde"), unique=True, max_size=5).flatmap(
        lambda s: st.tuples(st.just(s), st.integers(0, len(s)))
    ),
)
def test_weakest_common_implied_by_both(a: tuple[list[str], int], b: tuple[list[str], int]) -> None:
    ca = SyncConfig("on", a[1], tuple(a[0]) if a[1] else ())
    cb = SyncConfig("quorum", b[1], tuple(b[0]) if b[1] else ())
    w = weakest_common(ca, cb)
    assert implies(ca, w) and implies(cb, w)


@pytest.mark.parametrize(
    ("text", "cfg"),
    [
        ("", SyncConfig("off", 0)),
        ("*", SyncConfig("on", 0)),
        ('FIRST 1 ("pg2")', SyncConfig("on", 1, ("pg2",))),
        ('ANY 2 ("pg2", "pg3", "pg4")', SyncConfig("quorum", 2, ("pg2", "pg3", "pg4"))),
        ("pg2, pg3", SyncConfig("on", 1, ("pg2", "pg3"))),
        ('first 2 (a, "b,c")', SyncConfig("on", 2, ("a", "b,c"))),
        ("ANY 1 (*)", SyncConfig("quorum", 0)),
    ],
)
def test_parse_standby_names(text: str, cfg: SyncConfig) -> None:
    assert parse_standby_names(text) == cfg


def test_render_round_trip() -> None:
    for cfg in (SyncConfig("on", 1, ("pg2",)), SyncConfig("quorum", 2, ("a", "b", 'q"x'))):
        assert parse_standby_names(render_standby_names(cfg)) == cfg
    assert render_standby_names(SyncConfig("on", 0)) == ""
    assert render_standby_names(SyncConfig("on", 0), strict_block=True) == "*"
    assert render_standby_names(SyncConfig("on", 1, ("pg2",))) == 'FIRST 1 ("pg2")'


def test_two_step_replace_standby() -> None:
    """pg2 (committed) becomes unhealthy: widen {pg2,pg3} first, PostgreSQL -> pg3, then narrow."""
    st0 = cluster(members={"pg2": {"healthy": False}}, sync_mode="on", num_sync=1, sync_standbys=("pg2",))
    step = plan_sync_change(st0, ON, parse_standby_names('FIRST 1 ("pg2")'), 10)
    assert step.kind == "commit" and step.config == SyncConfig("on", 1, ("pg2", "pg3"))
    assert step.reason.startswith("step 1/2 toward FIRST 1 (pg3)") and step.guard_position is None
    # The primary, seeing the widened committed set, tells PostgreSQL the desired one.
    st1 = replace(st0, sync_standbys=("pg2", "pg3"), last_position=11)
    target, names = pg_target(st1, ON)
    assert target == SyncConfig("on", 1, ("pg3",)) and names == 'FIRST 1 ("pg3")'
    # Not yet reported: wait.
    step = plan_sync_change(st1, ON, parse_standby_names('FIRST 1 ("pg2")'), 11)
    assert step.kind == "wait" and "enforces FIRST 1 (pg2), not yet FIRST 1 (pg3)" in step.reason
    step = plan_sync_change(st1, ON, parse_standby_names(names), 10)
    assert step.kind == "wait" and "report it at position 11" in step.reason
    step = plan_sync_change(st1, ON, parse_standby_names(names), 11)
    assert step.kind == "commit" and step.config == SyncConfig("on", 1, ("pg3",)) and step.guard_position == 11
    assert step.reason.startswith("step 2/2")


def test_degrade_to_async_commits_first_and_says_so() -> None:
    st0 = cluster(
        members={"pg2": {"healthy": False}, "pg3": {"healthy": False}},
        sync_mode="on",
        num_sync=1,
        sync_standbys=("pg2",),
    )
    step = plan_sync_change(st0, ON, None, None)
    assert step.kind == "commit" and step.config == SyncConfig("on", 0) and step.degraded
    assert "degraded to async" in step.reason
    # While committed is still FIRST 1 (pg2), the primary keeps enforcing it.
    assert pg_target(st0, ON)[1] == 'FIRST 1 ("pg2")'
    st1 = replace(st0, num_sync=0, sync_standbys=())
    assert pg_target(st1, ON)[1] == ""


def test_from_async_strengthen_after_primary() -> None:
    st0 = cluster(sync_mode="off")
    step = plan_sync_change(st0, ON, None, None)
    assert step.kind == "commit" and step.config == SyncConfig("on", 0)  # widen: mode on, no promise
    st1 = replace(st0, sync_mode="on", last_position=11)
    assert pg_target(st1, ON)[1] == 'FIRST 1 ("pg2")'
    assert plan_sync_change(st1, ON, SyncConfig("off", 0), 11).kind == "wait"
    step = plan_sync_change(st1, ON, parse_standby_names('FIRST 1 ("pg2")'), 11)
    assert step.kind == "commit" and step.config == SyncConfig("on", 1, ("pg2",))


def test_strict_never_degrades() -> None:
    st0 = cluster(
        members={"pg2": {"healthy": False}, "pg3": {"healthy": False}},
        sync_mode="on",
        num_sync=1,
        sync_standbys=("pg2",),
    )
    assert plan_sync_change(st0, STRICT, None, None).kind == "none"
    assert (
        pg_target(cluster(sync_mode="on", members={"pg2": {"healthy": False}, "pg3": {"healthy": False}}), STRICT)[1]
        == "*"
    )


def test_turn_off_commits_directly() -> None:
    st0 = cluster(sync_mode="on", num_sync=1, sync_standbys=("pg2",))
    step = plan_sync_change(st0, HASettings(), None, None)
    assert step.kind == "commit" and step.config == SyncConfig("off", 0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["pg2", "pg3", "pg4"]), st.booleans()), max_size=12),
    st.sampled_from([ON, QUORUM, STRICT, HASettings(synchronous_mode="quorum", synchronous_node_count=2)]),
)
def test_protocol_promise_never_exceeds_enforcement(flips: list[tuple[str, bool]], s: HASettings) -> None:
    """Health flips interleaved with the protocol: the committed promise is always implied by what
    PostgreSQL enforces (PostgreSQL lags the committed state by one application)."""
    names = ("pg1", "pg2", "pg3", "pg4")
    state = cluster(names=names, sync_mode=s.synchronous_mode)
    pg = SyncConfig("off", 0)
    for name, healthy in [*flips, *([("pg2", True)] * 6)]:
        m = state.members[name]
        state = replace(
            state, members={**state.members, name: replace(m, healthy=healthy)}, last_position=state.last_position + 1
        )
        for _ in range(4):
            # primary applies the state, then the arbiter plans on the primary's report
            pg = parse_standby_names(pg_target(state, s)[1])
            step = plan_sync_change(state, s, pg, state.last_position)
            if step.kind == "commit":
                assert step.config is not None
                state = replace(
                    state,
                    sync_mode=step.config.mode,
                    num_sync=step.config.num_sync,
                    sync_standbys=step.config.standbys,
                    last_position=state.last_position + 1,
                )
            committed = SyncConfig(state.sync_mode, state.num_sync, state.sync_standbys)
            assert implies(pg, committed), (pg, committed)
