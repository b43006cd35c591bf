"""The HA clocks as pure functions of observed times (ram.ha.timers): no loop, no clock."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from ram.ha.settings import HASettings
from ram.ha.timers import ArbiterClocks, advance_arbiter_clocks, due_switchover, primary_seen_down, since

from .helpers import cluster, obs, observations, operation

S = HASettings()


def test_since_keeps_the_start_while_it_holds() -> None:
    assert since(None, False, 5.0) is None
    assert since(None, True, 5.0) == 5.0
    assert since(5.0, True, 9.0) == 5.0
    assert since(5.0, False, 9.0) is None


def test_primary_seen_down() -> None:
    assert primary_seen_down(None, 100.0, S)
    assert not primary_seen_down(obs("pg1", role="primary"), 100.0, S)
    assert primary_seen_down(obs("pg1", pg_running=False), 100.0, S)
    assert primary_seen_down(obs("pg1", observed_at=100.0 - S.report_timeout_s - 0.1), 100.0, S)


def test_arbiter_clocks_follow_the_primary_and_the_operation() -> None:
    state = cluster()
    up = observations()
    c = advance_arbiter_clocks(ArbiterClocks(), state, up, 100.5, S)
    assert (c.primary_down_since, c.primary_last_ok_at, c.operation_since) == (None, 100.0, None)
    down = observations(pg1={"pg_running": False, "observed_at": 101.0})
    c = advance_arbiter_clocks(c, state, down, 101.0, S)
    assert (c.primary_down_since, c.primary_last_ok_at) == (101.0, 100.0)  # last ok: its last report as primary
    c = advance_arbiter_clocks(c, state, down, 102.0, S)
    assert c.primary_down_since == 101.0
    # An operation starts its clock when first seen; the same operation keeps it, another restarts it.
    failing = replace(state, operations=(operation("failover", "pg1", "pg2"),))
    c = advance_arbiter_clocks(c, failing, down, 103.0, S)
    assert (c.operation_key, c.operation_since) == (5, 103.0)
    assert advance_arbiter_clocks(c, failing, down, 104.0, S).operation_since == 103.0
    moved = replace(state, operations=(replace(operation("failover", "pg1", "pg3"), started_position=9),))
    assert advance_arbiter_clocks(c, moved, down, 105.0, S).operation_since == 105.0
    # Without a committed primary its clocks stay as they were.
    none = advance_arbiter_clocks(c, replace(state, primary=None), {}, 106.0, S)
    assert (none.primary_down_since, none.primary_last_ok_at, none.operation_since) == (101.0, 100.0, None)


def test_due_switchover_is_the_wall_clock_check() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    later = operation("switchover", "pg1", "pg2", scheduled_at=now + dt.timedelta(seconds=1))
    due = operation("switchover", "pg1", "pg2", scheduled_at=now)
    assert due_switchover(later, now) is None
    assert due_switchover(due, now) is due
    assert due_switchover(operation("switchover", "pg1", "pg2"), now) is None
    assert due_switchover(operation("failover", "pg1", "pg2", scheduled_at=now), now) is None
    assert due_switchover(None, now) is None
