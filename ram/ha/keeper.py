"""The keeper: each node's reconciliation of its own PostgreSQL toward the committed state.

:func:`next_action` returns ONE action with its reason; the runtime executes it, observes again and
asks again (pg_auto_failover's keeper loop). The rules are the table :data:`KEEPER_RULES`, checked in
order; the first whose condition holds gives the action. The fencing rules come first and hold in
every mode, maintenance included:

* PostgreSQL accepting writes (running, not in recovery) on a node whose committed role is not
  primary, or without a valid lease, is fenced at once: a former primary never accepts writes.
* A node promotes only when the committed state designates it (failover candidate, accepted
  switchover candidate) AND it holds a lease (which the arbiter grants only once the old primary's
  lease has expired or been released).
* A replica whose data diverged from the primary's timeline (``diverged``, see :func:`is_diverged`)
  never starts streaming: it is rewound (or re-cloned when rewind failed and
  ``rewind_fallback_to_clone``) first.

:func:`wants_lease` tells the runtime whether to keep renewing the lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from ram.ha.arbiter import switchover_accepted
from ram.ha.candidates import is_diverged
from ram.ha.settings import HASettings
from ram.ha.syncset import pg_target
from ram.projections.state import ClusterState

__all__ = [
    "KEEPER_RULES",
    "Action",
    "Clone",
    "ConfigureSync",
    "Demote",
    "DesiredRole",
    "Fence",
    "Follow",
    "InitDb",
    "KeeperInput",
    "LocalPostgres",
    "Nothing",
    "Promote",
    "RefuseMemberAction",
    "Reinit",
    "ReportCannotRejoin",
    "RestartCrashed",
    "RestartPostgres",
    "Rewind",
    "StartPostgres",
    "desired_role",
    "is_diverged",
    "next_action",
    "rewind_verdict",
    "wants_lease",
]


# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """``rule``: the name of the :data:`KEEPER_RULES` row that chose it (logged with the action and
    carried into any fact it reports), so a table whose order encodes priority still says which row
    won."""

    reason: str
    rule: str = field(default="", kw_only=True, compare=False)

    @property
    def why(self) -> str:
        """The reason with the rule's name, as logged and stored."""
        return f"{self.reason} [rule {self.rule}]" if self.rule else self.reason


@dataclass(frozen=True, slots=True)
class Nothing(Action):
    pass


@dataclass(frozen=True, slots=True)
class Fence(Action):
    """Stop accepting writes now (``ManagedInstance.fence``)."""


@dataclass(frozen=True, slots=True)
class InitDb(Action):
    """Create the data directory of the initial primary (it starts once the lease is held)."""


@dataclass(frozen=True, slots=True)
class StartPostgres(Action):
    """Start PostgreSQL as a primary (lease held) or as a standby (of ``upstream``; None: replay only)."""

    role: Literal["primary", "standby"] = "primary"
    upstream: str | None = None


@dataclass(frozen=True, slots=True)
class RestartCrashed(Action):
    """The primary's PostgreSQL died; restart it in place (crash recovery) within primary_start_timeout."""


@dataclass(frozen=True, slots=True)
class Promote(Action):
    pass


@dataclass(frozen=True, slots=True)
class Demote(Action):
    """Clean stop (shutdown checkpoint streamed to the standbys), then restart as a standby of ``follow``."""

    follow: str


@dataclass(frozen=True, slots=True)
class Follow(Action):
    """Re-point the running standby at ``primary``."""

    primary: str


@dataclass(frozen=True, slots=True)
class Rewind(Action):
    """pg_rewind onto ``primary``'s timeline. ``stuck``: the standby was not known to be diverged but
    could not stream (see :data:`STUCK_REPLICA_S`); a second such case re-clones instead."""

    primary: str
    stuck: bool = False


@dataclass(frozen=True, slots=True)
class Clone(Action):
    primary: str


@dataclass(frozen=True, slots=True)
class ConfigureSync(Action):
    """Set ``synchronous_standby_names`` on this primary (reload)."""

    standby_names: str


@dataclass(frozen=True, slots=True)
class ReportCannotRejoin(Action):
    pass


@dataclass(frozen=True, slots=True)
class RestartPostgres(Action):
    """An operator asked for a restart (e.g. for a pending-restart parameter): stop fast, start, same role."""

    position: int


@dataclass(frozen=True, slots=True)
class Reinit(Action):
    """An operator asked to throw this replica's data away and clone it from ``primary`` again."""

    primary: str
    position: int


@dataclass(frozen=True, slots=True)
class RefuseMemberAction(Action):
    """The requested restart / reinit can not be done here; report it as failed with ``reason``."""

    action: Literal["restart", "reinit"]
    position: int


# -- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalPostgres:
    """This node's PostgreSQL, reduced to what the keeper needs (built from ``InstanceStatus``).

    ``upstream``: the member its walreceiver / primary_conninfo points at (None: none or unknown).
    ``sync_standby_names``: its current setting (primary only).
    """

    has_data: bool
    running: bool
    #: The postmaster runs but the server does not accept connections yet (recovery not consistent).
    starting: bool = False
    in_recovery: bool | None = None
    timeline: int | None = None
    wal_position: int | None = None
    upstream: str | None = None
    sync_standby_names: str | None = None

    @property
    def writable(self) -> bool:
        return self.running and self.in_recovery is False


@dataclass(frozen=True)
class KeeperInput:
    """``lease_valid``: ``HolderLease.holds(now)``. ``diverged``: this node's WAL is not a prefix of
    the primary's timeline (None: unknown; :func:`is_diverged` computes it from the history).
    ``pg_down_since``: own-clock instant PostgreSQL was found not running while it should run.
    ``rewind_failed``: the last Rewind attempt failed. ``completed_action_position``: the position
    of the last operator action (restart / reinit) this node carried out, so it is not repeated while
    its completion is being committed."""

    me: str
    now: float
    state: ClusterState
    pg: LocalPostgres
    lease_valid: bool
    settings: HASettings
    diverged: bool | None = None
    pg_down_since: float | None = None
    rewind_failed: bool = False
    completed_action_position: int | None = None
    #: Seconds this standby has run without streaming while the committed primary is healthy and no
    #: operation moves it (None: streaming, or not expected to).
    not_streaming_for: float | None = None
    #: A rewind for being stuck already ran and it is still not streaming.
    stuck_rewound: bool = False


Kind = Literal["primary", "promote", "demote", "replica", "none"]


@dataclass(frozen=True, slots=True)
class DesiredRole:
    kind: Kind
    upstream: str | None
    reason: str


def desired_role(state: ClusterState, me: str) -> DesiredRole:
    if me not in state.members:
        return DesiredRole("none", None, f"{me} is not a member")
    op = state.current_operation
    if op is not None and op.kind == "failover":
        if op.candidate == me:
            return DesiredRole("promote", None, f"failover candidate (from {op.old_primary})")
        if op.old_primary == me:
            return DesiredRole("none", None, f"failover from {me} to {op.candidate} in progress")
        return DesiredRole("none", None, f"failover to {op.candidate} in progress")
    if switchover_accepted(op):
        assert op is not None
        if op.candidate == me:
            return DesiredRole("promote", None, f"switchover candidate (from {op.old_primary})")
        if op.old_primary == me:
            assert op.candidate is not None
            return DesiredRole("demote", op.candidate, f"switchover to {op.candidate}")
    if state.primary == me:
        return DesiredRole("primary", None, "committed primary")
    if state.primary is not None:
        return DesiredRole("replica", state.primary, f"replica of {state.primary}")
    return DesiredRole("none", None, "no primary yet")


# -- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    inp: KeeperInput
    want: DesiredRole

    @property
    def pg(self) -> LocalPostgres:
        return self.inp.pg


@dataclass(frozen=True)
class KeeperRule:
    name: str
    when: Callable[[Ctx], bool]
    act: Callable[[Ctx, str], Action]
    reason: str


def _up(c: Ctx) -> str:
    assert c.want.upstream is not None
    return c.want.upstream


def _down_for(c: Ctx) -> float | None:
    since = c.inp.pg_down_since
    return None if since is None else c.inp.now - since


def _crash_window(c: Ctx) -> bool:
    d = _down_for(c)
    return d is None or d <= c.inp.settings.primary_start_timeout_s


def _sync_names(c: Ctx) -> str:
    return pg_target(c.inp.state, c.inp.settings)[1]


def _pending(c: Ctx, action: str) -> bool:
    """Is ``action`` requested of this node by an operator and not yet carried out?"""
    m = c.inp.state.members.get(c.inp.me)
    return (
        m is not None
        and m.pending_action == action
        and m.pending_action_position is not None
        and m.pending_action_position != c.inp.completed_action_position
    )


def _action_position(c: Ctx) -> int:
    pos = c.inp.state.members[c.inp.me].pending_action_position
    assert pos is not None
    return pos


#: A standby that runs but has not streamed from a healthy primary for this long is treated as
#: diverged (whatever the reason its walreceiver can not follow: a fork the facts did not show, a
#: timeline the primary's history does not contain): rewound, then re-cloned if that did not help.
STUCK_REPLICA_S = 10.0


#: A standby whose recovery has not moved to another WAL file for this long while it does not
#: accept connections is stuck the same way (e.g. its local WAL runs past the primary's fork and
#: every streamed record fails to continue it). Longer than STUCK_REPLICA_S: replaying one WAL file
#: on a slow disk can take several seconds.
STUCK_STARTING_S = 20.0


def _stuck(c: Ctx) -> bool:
    if c.want.kind != "replica":
        return False
    if c.pg.starting:
        return (c.inp.not_streaming_for or 0.0) > STUCK_STARTING_S
    return c.pg.running and c.pg.in_recovery is True and (c.inp.not_streaming_for or 0.0) > STUCK_REPLICA_S


def _r(cls: Callable[[str], Action]) -> Callable[[Ctx, str], Action]:
    return lambda c, reason: cls(f"{reason} ({c.want.reason})")


KEEPER_RULES: list[KeeperRule] = [
    # Safety first, in every mode.
    KeeperRule(
        "fence-not-primary",
        lambda c: c.pg.writable and c.want.kind not in ("primary", "promote", "demote"),
        _r(Fence),
        "fence: PostgreSQL accepts writes but the committed role is not primary",
    ),
    KeeperRule(
        "fence-no-lease",
        lambda c: c.pg.writable and not c.inp.lease_valid,
        _r(Fence),
        "fence: PostgreSQL accepts writes without a valid lease",
    ),
    # Promotion (failover / accepted switchover).
    KeeperRule(
        "promote-no-data",
        lambda c: c.want.kind == "promote" and not c.pg.has_data,
        _r(ReportCannotRejoin),
        "cannot promote: no data directory",
    ),
    KeeperRule(
        "promote-start",
        lambda c: c.want.kind == "promote" and not c.pg.running,
        lambda c, r: StartPostgres(f"{r} ({c.want.reason})", role="standby"),
        "start as a standby before promoting",
    ),
    KeeperRule(
        "promote",
        lambda c: c.want.kind == "promote" and c.pg.in_recovery is True and c.inp.lease_valid,
        _r(Promote),
        "promote: designated and holding the lease",
    ),
    KeeperRule(
        "promote-wait-lease",
        lambda c: c.want.kind == "promote" and c.pg.in_recovery is True,
        _r(Nothing),
        "waiting for the lease before promoting",
    ),
    KeeperRule(
        "promoted",
        lambda c: c.want.kind == "promote",
        _r(Nothing),
        "promoted: waiting for the arbiter to record it",
    ),
    # Switchover: the old primary demotes cleanly.
    KeeperRule(
        "demote",
        lambda c: c.want.kind == "demote" and c.pg.writable,
        lambda c, r: Demote(f"{r} ({c.want.reason})", follow=_up(c)),
        "demote: clean stop, then standby",
    ),
    KeeperRule(
        "demoted", lambda c: c.want.kind == "demote", _r(Nothing), "demoted: waiting for the candidate to promote"
    ),
    # Operator requests (also in maintenance mode: the operator asked for exactly this).
    KeeperRule(
        "restart-no-data",
        lambda c: _pending(c, "restart") and not c.pg.has_data,
        lambda c, r: RefuseMemberAction(r, action="restart", position=_action_position(c)),
        "restart refused: no data directory",
    ),
    KeeperRule(
        "restart-not-running",
        lambda c: _pending(c, "restart") and not c.pg.running,
        lambda c, r: RefuseMemberAction(r, action="restart", position=_action_position(c)),
        "restart refused: PostgreSQL is not running (RAM starts it itself once the member's role allows)",
    ),
    KeeperRule(
        "restart-requested",
        lambda c: _pending(c, "restart") and (c.want.kind != "primary" or c.inp.lease_valid),
        lambda c, r: RestartPostgres(f"{r} ({c.want.reason})", position=_action_position(c)),
        "restart requested by an operator",
    ),
    KeeperRule(
        "reinit-refused",
        lambda c: _pending(c, "reinit") and c.want.kind != "replica",
        lambda c, r: RefuseMemberAction(f"{r}: {c.want.reason}", action="reinit", position=_action_position(c)),
        "reinit refused: only a replica can be re-cloned",
    ),
    KeeperRule(
        "reinit-requested",
        lambda c: _pending(c, "reinit"),
        lambda c, r: Reinit(f"{r} ({c.want.reason})", primary=_up(c), position=_action_position(c)),
        "reinit requested by an operator: re-clone from the primary",
    ),
    # Maintenance: no other action on PostgreSQL.
    KeeperRule("maintenance", lambda c: c.inp.state.maintenance, _r(Nothing), "maintenance mode: hands off"),
    # Primary.
    KeeperRule(
        "initdb",
        lambda c: c.want.kind == "primary" and not c.pg.has_data and len(c.inp.state.timeline_history) <= 1,
        _r(InitDb),
        "initialize the initial primary",
    ),
    KeeperRule(
        "primary-lost-data",
        lambda c: c.want.kind == "primary" and not c.pg.has_data,
        _r(ReportCannotRejoin),
        "committed primary has no data directory",
    ),
    KeeperRule(
        "primary-in-recovery",
        lambda c: c.want.kind == "primary" and c.pg.running and c.pg.in_recovery is True and c.inp.lease_valid,
        _r(Promote),
        "promote: committed primary runs as a standby",
    ),
    KeeperRule(
        "primary-start-wait-lease",
        lambda c: c.want.kind == "primary" and not c.pg.writable and not c.inp.lease_valid,
        _r(Nothing),
        "waiting for the lease before running as primary",
    ),
    KeeperRule(
        "primary-start",
        lambda c: c.want.kind == "primary" and not c.pg.running and c.inp.pg_down_since is None,
        _r(StartPostgres),
        "start the primary (lease held)",
    ),
    KeeperRule(
        "primary-restart",
        lambda c: c.want.kind == "primary" and not c.pg.running and _crash_window(c),
        lambda c, r: RestartCrashed(
            f"{r}: down for {_down_for(c) or 0:.1f} s of primary_start_timeout_s "
            f"{c.inp.settings.primary_start_timeout_s} ({c.want.reason})"
        ),
        "restart the crashed primary in place",
    ),
    KeeperRule(
        "primary-give-up",
        lambda c: c.want.kind == "primary" and not c.pg.running,
        _r(Nothing),
        "primary down longer than primary_start_timeout_s: lease no longer renewed, failover expected",
    ),
    KeeperRule(
        "primary-sync",
        lambda c: c.want.kind == "primary"
        and c.pg.writable
        and c.pg.sync_standby_names is not None  # unknown (not read yet, or the read failed): leave it
        and c.pg.sync_standby_names != _sync_names(c),
        lambda c, r: ConfigureSync(f"{r}: {_sync_names(c)!r} ({c.want.reason})", standby_names=_sync_names(c)),
        "set synchronous_standby_names",
    ),
    KeeperRule("primary-ok", lambda c: c.want.kind == "primary", _r(Nothing), "primary running"),
    # Replica.
    KeeperRule(
        "replica-clone",
        lambda c: c.want.kind == "replica" and not c.pg.has_data,
        lambda c, r: Clone(f"{r} ({c.want.reason})", primary=_up(c)),
        "no data: clone from the primary",
    ),
    KeeperRule(
        "replica-rewind",
        lambda c: c.want.kind == "replica" and c.inp.diverged is True and not c.inp.rewind_failed,
        lambda c, r: Rewind(f"{r} ({c.want.reason})", primary=_up(c)),
        "diverged from the primary's timeline: pg_rewind before following",
    ),
    KeeperRule(
        "replica-reclone",
        lambda c: c.want.kind == "replica" and c.inp.diverged is True and c.inp.settings.rewind_fallback_to_clone,
        lambda c, r: Clone(f"{r} ({c.want.reason})", primary=_up(c)),
        "diverged and pg_rewind failed: re-clone (rewind_fallback_to_clone)",
    ),
    KeeperRule(
        "replica-cannot-rejoin",
        lambda c: c.want.kind == "replica" and c.inp.diverged is True,
        _r(ReportCannotRejoin),
        "diverged, pg_rewind failed and rewind_fallback_to_clone is off",
    ),
    KeeperRule(
        "replica-stuck-rewind",
        lambda c: _stuck(c) and not c.inp.stuck_rewound,
        lambda c, r: Rewind(
            f"{r}: {c.inp.not_streaming_for or 0:.0f} s ({c.want.reason})", primary=_up(c), stuck=True
        ),
        "running but not streaming from the healthy primary: rewind (treated as diverged)",
    ),
    KeeperRule(
        "replica-stuck-reclone",
        lambda c: _stuck(c) and c.inp.settings.rewind_fallback_to_clone,
        lambda c, r: Clone(f"{r}: {c.inp.not_streaming_for or 0:.0f} s ({c.want.reason})", primary=_up(c)),
        "still not streaming after a rewind: re-clone (rewind_fallback_to_clone)",
    ),
    KeeperRule(
        "replica-divergence-unknown",
        lambda c: c.want.kind == "replica" and c.inp.diverged is None,
        _r(Nothing),
        "cannot tell whether the data diverged: not starting replication",
    ),
    KeeperRule(
        "replica-start",
        lambda c: c.want.kind == "replica" and not c.pg.running,
        lambda c, r: StartPostgres(f"{r} ({c.want.reason})", role="standby", upstream=_up(c)),
        "start as a standby",
    ),
    KeeperRule(
        "replica-follow",
        lambda c: c.want.kind == "replica" and c.pg.in_recovery is True and c.pg.upstream != c.want.upstream,
        lambda c, r: Follow(f"{r} ({c.want.reason})", primary=_up(c)),
        "re-point the standby at the primary",
    ),
    KeeperRule("replica-ok", lambda c: c.want.kind == "replica", _r(Nothing), "streaming from the primary"),
    KeeperRule("idle", lambda c: True, _r(Nothing), "nothing to do"),
]


def next_action(inp: KeeperInput) -> Action:
    c = Ctx(inp, desired_role(inp.state, inp.me))
    for rule in KEEPER_RULES:
        if rule.when(c):
            return replace(rule.act(c, rule.reason), rule=rule.name)
    raise AssertionError("the last rule always matches")  # pragma: no cover


RewindVerdict = Literal["rejoined", "source-unreachable", "failed"]


def rewind_verdict(*, rejoined: bool, source_unreachable: bool) -> RewindVerdict:
    """How a rejoin by pg_rewind ended, for :attr:`KeeperInput.rewind_failed`: only a rewind that
    ran and failed counts as failed (it unlocks the re-clone fallback); one that could not reach
    its source says nothing about this data directory and is simply tried again."""
    if rejoined:
        return "rejoined"
    return "source-unreachable" if source_unreachable else "failed"


def wants_lease(inp: KeeperInput) -> bool:
    """Keep renewing? Designated primary (up, or restarting within primary_start_timeout_s) or
    candidate, or an old primary still demoting."""
    want = desired_role(inp.state, inp.me)
    if want.kind == "promote":
        return True
    if want.kind == "demote":
        return inp.pg.writable
    if want.kind == "primary":
        if inp.pg.running:
            return True
        c = Ctx(inp, want)
        return inp.pg_down_since is None or _crash_window(c)
    return False
