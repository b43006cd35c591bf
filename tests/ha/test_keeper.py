"""Keeper transitions: one row per rule, asserting action and reason."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ram.ha.keeper import (
    KEEPER_RULES,
    Clone,
    ConfigureSync,
    Demote,
    Fence,
    Follow,
    InitDb,
    KeeperInput,
    LocalPostgres,
    Nothing,
    Promote,
    RefuseMemberAction,
    Reinit,
    ReportCannotRejoin,
    RestartCrashed,
    RestartPostgres,
    Rewind,
    StartPostgres,
    is_diverged,
    next_action,
    rewind_verdict,
    wants_lease,
)
from ram.ha.settings import HASettings
from ram.projections.state import ClusterState, TimelineRecord

from .helpers import cluster, operation

S = HASettings()
PRIMARY_PG = LocalPostgres(has_data=True, running=True, in_recovery=False, timeline=1, wal_position=100)
REPLICA_PG = LocalPostgres(has_data=True, running=True, in_recovery=True, timeline=1, wal_position=100, upstream="pg1")
DOWN_PG = LocalPostgres(has_data=True, running=False)
STARTING_PG = LocalPostgres(has_data=True, running=False, starting=True)
EMPTY_PG = LocalPostgres(has_data=False, running=False)

FAILOVER = cluster(operations=(operation("failover", "pg1", "pg2"),))
SWITCH = cluster(operations=(operation("switchover", "pg1", "pg2", reason="ok", accepted=True),))
SWITCH_UNACCEPTED = cluster(operations=(operation("switchover", "pg1", "pg2"),))
BOOT = cluster(primary="pg1", timeline_history=())


def asked(action: str, name: str = "pg2", **kw: Any) -> ClusterState:
    """A cluster where an operator asked ``name`` for ``action`` at position 7."""
    return cluster(members={name: {"pending_action": action, "pending_action_position": 7}}, **kw)


def inp(me: str, state: ClusterState, pg: LocalPostgres, **kw: Any) -> KeeperInput:
    kw.setdefault("lease_valid", False)
    kw.setdefault("diverged", False)
    return KeeperInput(me=me, now=1000.0, state=state, pg=pg, settings=S, **kw)


ROWS: list[tuple[str, KeeperInput, type, str]] = [
    (
        "fence-not-primary",
        inp("pg2", cluster(), PRIMARY_PG, lease_valid=True),
        Fence,
        "fence: PostgreSQL accepts writes but the committed role is not primary (replica of pg1)",
    ),
    (
        "fence-old-primary-in-failover",
        inp("pg1", FAILOVER, PRIMARY_PG, lease_valid=True),
        Fence,
        "fence: PostgreSQL accepts writes but the committed role is not primary (failover from pg1 to pg2 in progress)",
    ),
    (
        "fence-no-lease",
        inp("pg1", cluster(), PRIMARY_PG),
        Fence,
        "fence: PostgreSQL accepts writes without a valid lease (committed primary)",
    ),
    (
        "fence-in-maintenance",
        inp("pg1", cluster(maintenance=True), PRIMARY_PG),
        Fence,
        "fence: PostgreSQL accepts writes without a valid lease (committed primary)",
    ),
    ("promote-no-data", inp("pg2", FAILOVER, EMPTY_PG), ReportCannotRejoin, "cannot promote: no data directory"),
    ("promote-start", inp("pg2", FAILOVER, DOWN_PG), StartPostgres, "start as a standby before promoting"),
    (
        "promote",
        inp("pg2", FAILOVER, REPLICA_PG, lease_valid=True),
        Promote,
        "promote: designated and holding the lease (failover candidate (from pg1))",
    ),
    ("promote-wait-lease", inp("pg2", FAILOVER, REPLICA_PG), Nothing, "waiting for the lease before promoting"),
    (
        "promoted",
        inp("pg2", FAILOVER, PRIMARY_PG, lease_valid=True),
        Nothing,
        "promoted: waiting for the arbiter to record it",
    ),
    (
        "switchover-promote",
        inp("pg2", SWITCH, REPLICA_PG, lease_valid=True),
        Promote,
        "promote: designated and holding the lease (switchover candidate (from pg1))",
    ),
    ("demote", inp("pg1", SWITCH, PRIMARY_PG, lease_valid=True), Demote, "demote: clean stop, then standby"),
    ("demote-without-lease-fences", inp("pg1", SWITCH, PRIMARY_PG), Fence, "fence: PostgreSQL accepts writes without"),
    ("demoted", inp("pg1", SWITCH, REPLICA_PG), Nothing, "demoted: waiting for the candidate to promote"),
    (
        "unaccepted-switchover-keeps-primary",
        inp("pg1", SWITCH_UNACCEPTED, PRIMARY_PG, lease_valid=True),
        Nothing,
        "primary running",
    ),
    ("restart-no-data", inp("pg2", asked("restart"), EMPTY_PG), RefuseMemberAction, "restart refused: no data"),
    ("restart-not-running", inp("pg2", asked("restart"), DOWN_PG), RefuseMemberAction, "restart refused: PostgreSQL"),
    ("restart-requested", inp("pg2", asked("restart"), REPLICA_PG), RestartPostgres, "restart requested by an"),
    (
        "restart-requested-in-maintenance",
        inp("pg2", asked("restart", maintenance=True), REPLICA_PG),
        RestartPostgres,
        "restart requested by an operator",
    ),
    (
        "restart-requested-primary",
        inp("pg1", asked("restart", "pg1"), PRIMARY_PG, lease_valid=True),
        RestartPostgres,
        "restart requested by an operator (committed primary)",
    ),
    (
        "restart-done-not-repeated",
        inp("pg2", asked("restart"), REPLICA_PG, completed_action_position=7),
        Nothing,
        "streaming from the primary",
    ),
    ("reinit-refused", inp("pg1", asked("reinit", "pg1"), PRIMARY_PG, lease_valid=True), RefuseMemberAction, "reinit"),
    ("reinit-requested", inp("pg2", asked("reinit"), REPLICA_PG), Reinit, "reinit requested by an operator"),
    ("maintenance", inp("pg2", cluster(maintenance=True), DOWN_PG), Nothing, "maintenance mode: hands off"),
    ("initdb", inp("pg1", BOOT, EMPTY_PG), InitDb, "initialize the initial primary"),
    (
        "primary-lost-data",
        inp(
            "pg1",
            replace(cluster(), timeline_history=(*cluster().timeline_history, *cluster(timeline=2).timeline_history)),
            EMPTY_PG,
        ),
        ReportCannotRejoin,
        "committed primary has no data directory",
    ),
    (
        "primary-in-recovery",
        inp("pg1", cluster(), REPLICA_PG, lease_valid=True),
        Promote,
        "promote: committed primary runs as a standby",
    ),
    (
        "primary-start-wait-lease",
        inp("pg1", cluster(), DOWN_PG),
        Nothing,
        "waiting for the lease before running as primary",
    ),
    (
        "primary-start",
        inp("pg1", cluster(), DOWN_PG, lease_valid=True),
        StartPostgres,
        "start the primary (lease held)",
    ),
    (
        "primary-restart",
        inp("pg1", cluster(), DOWN_PG, lease_valid=True, pg_down_since=990.0),
        RestartCrashed,
        "restart the crashed primary in place: down for 10.0 s of primary_start_timeout_s 30.0",
    ),
    (
        "primary-give-up",
        inp("pg1", cluster(), DOWN_PG, lease_valid=True, pg_down_since=900.0),
        Nothing,
        "primary down longer than primary_start_timeout_s",
    ),
    (
        "primary-sync",
        KeeperInput(
            "pg1",
            0.0,
            cluster(sync_mode="on", num_sync=1, sync_standbys=("pg2",)),
            replace(PRIMARY_PG, sync_standby_names=""),
            True,
            HASettings(synchronous_mode="on"),
        ),
        ConfigureSync,
        "set synchronous_standby_names: 'FIRST 1 (\"pg2\")'",
    ),
    (
        "primary-ok",
        inp("pg1", cluster(), replace(PRIMARY_PG, sync_standby_names=""), lease_valid=True),
        Nothing,
        "primary running",
    ),
    ("replica-clone", inp("pg2", cluster(), EMPTY_PG), Clone, "no data: clone from the primary (replica of pg1)"),
    (
        "replica-rewind",
        inp("pg2", cluster(), DOWN_PG, diverged=True),
        Rewind,
        "diverged from the primary's timeline: pg_rewind before following",
    ),
    (
        "replica-stuck-rewind",
        inp("pg2", cluster(), REPLICA_PG, not_streaming_for=11.0),
        Rewind,
        "running but not streaming from the healthy primary: rewind (treated as diverged): 11 s",
    ),
    (
        "replica-stuck-reclone",
        inp("pg2", cluster(), REPLICA_PG, not_streaming_for=11.0, stuck_rewound=True),
        Clone,
        "still not streaming after a rewind: re-clone",
    ),
    ("replica-not-stuck-yet", inp("pg2", cluster(), REPLICA_PG, not_streaming_for=3.0), Nothing, "streaming from"),
    (
        # Up but never consistent (its recovery stands at one WAL file): found by the chaos run.
        "replica-stuck-starting-rewind",
        inp("pg2", cluster(), STARTING_PG, not_streaming_for=21.0),
        Rewind,
        "running but not streaming from the healthy primary: rewind (treated as diverged): 21 s",
    ),
    (
        "replica-stuck-starting-reclone",
        inp("pg2", cluster(), STARTING_PG, not_streaming_for=21.0, stuck_rewound=True),
        Clone,
        "still not streaming after a rewind: re-clone",
    ),
    (
        # Crash recovery that moves on between WAL files is not stuck (the observer restarts the clock).
        "replica-starting-not-stuck-yet",
        inp("pg2", cluster(), STARTING_PG, not_streaming_for=12.0),
        StartPostgres,
        "start as a standby",
    ),
    (
        "primary-sync-unknown",
        inp("pg1", cluster(sync_mode="on", num_sync=1, sync_standbys=("pg2",)), PRIMARY_PG, lease_valid=True),
        Nothing,
        "primary running",
    ),
    (
        "replica-reclone",
        inp("pg2", cluster(), DOWN_PG, diverged=True, rewind_failed=True),
        Clone,
        "diverged and pg_rewind failed: re-clone",
    ),
    (
        "replica-cannot-rejoin",
        KeeperInput(
            "pg2",
            0.0,
            cluster(),
            DOWN_PG,
            False,
            HASettings(rewind_fallback_to_clone=False),
            diverged=True,
            rewind_failed=True,
        ),
        ReportCannotRejoin,
        "diverged, pg_rewind failed and rewind_fallback_to_clone is off",
    ),
    (
        "replica-divergence-unknown",
        inp("pg2", cluster(), DOWN_PG, diverged=None),
        Nothing,
        "cannot tell whether the data diverged",
    ),
    ("replica-start", inp("pg2", cluster(), DOWN_PG), StartPostgres, "start as a standby (replica of pg1)"),
    ("replica-follow", inp("pg2", cluster(primary="pg3"), REPLICA_PG), Follow, "re-point the standby at the primary"),
    ("replica-ok", inp("pg2", cluster(), REPLICA_PG), Nothing, "streaming from the primary"),
    ("idle-no-primary", inp("pg2", cluster(primary=None), DOWN_PG), Nothing, "nothing to do (no primary yet)"),
    ("idle-not-member", inp("pgX", cluster(), DOWN_PG), Nothing, "nothing to do (pgX is not a member)"),
]


@pytest.mark.parametrize(("ki", "cls", "reason"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_keeper_rule(ki: KeeperInput, cls: type, reason: str) -> None:
    action = next_action(ki)
    assert type(action) is cls, action
    assert action.reason.startswith(reason), action.reason


def test_every_rule_is_exercised() -> None:
    names = {r.name for r in KEEPER_RULES}
    covered = {r[0] for r in ROWS}
    missing = {n for n in names if not any(c.startswith(n) for c in covered)} - {"fence-not-primary"}
    assert not missing, missing


def test_action_targets() -> None:
    assert next_action(inp("pg2", cluster(), DOWN_PG)) == StartPostgres(
        "start as a standby (replica of pg1)", role="standby", upstream="pg1"
    )
    a = next_action(inp("pg1", SWITCH, PRIMARY_PG, lease_valid=True))
    assert isinstance(a, Demote) and a.follow == "pg2"
    a = next_action(inp("pg2", cluster(), DOWN_PG, diverged=True))
    assert isinstance(a, Rewind) and a.primary == "pg1"
    sync = cluster(sync_mode="on", num_sync=1, sync_standbys=("pg2",))
    primary = replace(PRIMARY_PG, sync_standby_names="")
    a = next_action(KeeperInput("pg1", 0.0, sync, primary, True, HASettings(synchronous_mode="on")))
    assert isinstance(a, ConfigureSync) and a.standby_names == 'FIRST 1 ("pg2")'


def test_never_promotes_without_designation_and_lease() -> None:
    for state in (cluster(), FAILOVER, SWITCH, SWITCH_UNACCEPTED, cluster(maintenance=True)):
        for me in ("pg1", "pg2", "pg3"):
            for pg in (PRIMARY_PG, REPLICA_PG, DOWN_PG, EMPTY_PG):
                for lease in (False, True):
                    a = next_action(inp(me, state, pg, lease_valid=lease))
                    if isinstance(a, Promote):
                        assert lease
                        op = state.current_operation
                        assert state.primary == me or (op is not None and op.candidate == me)
                    if pg.writable and not lease:
                        assert isinstance(a, Fence)


def test_wants_lease() -> None:
    assert wants_lease(inp("pg1", cluster(), PRIMARY_PG))
    assert not wants_lease(inp("pg2", cluster(), REPLICA_PG))
    assert wants_lease(inp("pg2", FAILOVER, REPLICA_PG))
    assert not wants_lease(inp("pg1", FAILOVER, PRIMARY_PG))
    assert wants_lease(inp("pg1", SWITCH, PRIMARY_PG)) and not wants_lease(inp("pg1", SWITCH, REPLICA_PG))
    assert wants_lease(inp("pg1", cluster(), DOWN_PG, pg_down_since=990.0))
    assert not wants_lease(inp("pg1", cluster(), DOWN_PG, pg_down_since=900.0))


def test_is_diverged() -> None:
    import datetime as dt

    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    hist = (TimelineRecord(1, "pg1", 0, 1, at), TimelineRecord(2, "pg2", 5000, 20, at))
    st = cluster(primary="pg2", timeline=2, timeline_history=hist)
    assert is_diverged(st, 1, 5000) is False  # ended exactly at the fork: can follow
    assert is_diverged(st, 1, 5001) is True  # wrote past the fork
    assert is_diverged(st, 2, 9999) is False
    assert is_diverged(st, 3, 1) is True
    assert is_diverged(st, None, 1) is None
    assert is_diverged(cluster(primary="pg2", timeline=2, timeline_history=()), 1, 10) is None
    # Not a line: timeline 3 (promoted at 505 from timeline 2) was abandoned, and timeline 4 forked
    # from timeline 2 at 492 (a switchover to pg1, then pg1 cut off and pg3 promoted). A node that
    # stopped on timeline 2 at 505 passed the fork that counts (492): diverged, whatever tl3 says.
    branched = (*hist, TimelineRecord(3, "pg1", 505, 30, at), TimelineRecord(4, "pg3", 492, 40, at))
    st4 = cluster(primary="pg3", timeline=4, timeline_history=branched)
    assert is_diverged(st4, 2, 505) is True
    assert is_diverged(st4, 2, 492) is False
    assert is_diverged(st4, 3, 506) is True  # on the abandoned branch


def test_operator_actions_never_unfence_or_promote() -> None:
    """A restart of a primary without a lease waits (it would come back writable); a restart of a
    node that must not accept writes is preceded by fencing."""
    a = next_action(inp("pg1", asked("restart", "pg1"), PRIMARY_PG, lease_valid=False))
    assert isinstance(a, Fence), a
    a = next_action(inp("pg2", asked("restart"), PRIMARY_PG, lease_valid=True))
    assert isinstance(a, Fence), a
    a = next_action(inp("pg2", asked("reinit"), REPLICA_PG))
    assert isinstance(a, Reinit) and a.primary == "pg1" and a.position == 7


def test_actions_carry_their_rule() -> None:
    """Every action names the KEEPER_RULES row that chose it (for the log line and any fact)."""
    names = {r.name for r in KEEPER_RULES}
    a = next_action(inp("pg2", cluster(), DOWN_PG))
    assert a.rule == "replica-start" and a.why.endswith("[rule replica-start]")
    for state in (cluster(), FAILOVER, SWITCH, cluster(maintenance=True)):
        for me in ("pg1", "pg2"):
            assert next_action(inp(me, state, PRIMARY_PG, lease_valid=True)).rule in names


def test_rewind_verdict() -> None:
    """Only a rewind that ran and failed unlocks the re-clone fallback."""
    assert rewind_verdict(rejoined=True, source_unreachable=True) == "rejoined"
    assert rewind_verdict(rejoined=False, source_unreachable=True) == "source-unreachable"
    assert rewind_verdict(rejoined=False, source_unreachable=False) == "failed"
