"""The synchronous standby set: what to commit, what to tell PostgreSQL, and in which order.

Promise and enforcement
=======================

A sync configuration ``(k, S)`` read two ways:

* *enforced* by PostgreSQL (``synchronous_standby_names = 'FIRST k (S)'`` or ``'ANY k (S)'``): a
  commit is acknowledged to the client only once ``k`` members of ``S`` have flushed it. Both
  spellings give this (FIRST picks the k highest-priority connected ones, ANY any k).
* *promised* by the committed state (``SynchronousStandbysChanged``): "every acknowledged commit is
  on at least ``k`` members of ``S``". ``k = 0`` promises nothing (asynchronous, or degraded).

Failover relies only on the promise (:mod:`ram.ha.candidates`), so the promise must never exceed
what PostgreSQL enforces, at any instant. ``X`` implies ``Y`` (:func:`implies`) when
``Y.k == 0`` or ``X.k - |X.S minus Y.S| >= Y.k``: at least ``X.k - |X.S minus Y.S|`` of the ``X.k``
confirming standbys are in ``Y.S``. Adding a standby or lowering ``k`` weakens; removing one or
raising ``k`` strengthens.

Two-step protocol (Patroni's order: "grow the set before telling PostgreSQL, shrink after")
=========================================================================================

``C`` = committed, ``D`` = desired (:func:`desired_sync`, a pure function of committed state and
settings, so the primary and the arbiter compute the same ``D``).

1. *Weaken first* (arbiter): if ``C`` implies ``D``, commit ``D`` (PostgreSQL still enforcing ``C``
   keeps the new promise). Otherwise commit ``W = (min k, C.S | D.S)`` (:func:`weakest_common`),
   implied by both, unless ``C`` already is ``W``.
2. *Tell PostgreSQL* (primary's keeper): the primary applies :func:`pg_target` = ``D`` if ``D``
   implies the committed ``C``, else ``C``; it never weakens PostgreSQL below the committed promise.
3. *Strengthen after* (arbiter): commit ``D`` only when the primary's report shows PostgreSQL
   enforcing something that implies ``D``, reported after applying the very state the arbiter
   decides on (``state_position == state.last_position``), and with a guard: the command carries
   ``guard_position`` and the apply loop must reject it if anything was applied after that
   position (the primary could otherwise have moved PostgreSQL to a target computed from a newer
   state that does not imply ``D``).

Strict mode never degrades: with no healthy standby the committed set is kept (writes wait), and
when there never was one PostgreSQL is told ``'*'`` (any standby must confirm). Non-strict mode
drops to asynchronous (``k = 0``), committed first (a weakening) with the reason
"degraded to async", so the runtime records the event.

Who may be a synchronous standby: a voter (not a learner), not tagged ``nosync``/``nofailover``, a
positive ``failover_priority`` (a sync standby that can never be promoted would hold the only copy
of acknowledged commits), committed healthy, reporting ``replica`` on the committed timeline.
PostgreSQL matches ``application_name``, so standbys must connect with their member name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ram.ha.settings import HASettings
from ram.projections.state import ClusterState, Member

__all__ = [
    "SyncConfig",
    "SyncStep",
    "committed_sync",
    "desired_sync",
    "implies",
    "parse_standby_names",
    "pg_target",
    "plan_sync_change",
    "render_standby_names",
    "sync_eligible",
    "weakest_common",
]

SyncMode = Literal["off", "on", "quorum"]


@dataclass(frozen=True, slots=True)
class SyncConfig:
    mode: SyncMode
    num_sync: int
    standbys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "standbys", tuple(sorted(set(self.standbys))))
        if self.num_sync < 0 or self.num_sync > len(self.standbys):
            raise ValueError(f"num_sync={self.num_sync} with standbys {list(self.standbys)}")
        if self.mode == "off" and (self.num_sync or self.standbys):
            raise ValueError("mode 'off' requires num_sync=0 and no standbys")

    @property
    def promises(self) -> bool:
        return self.num_sync > 0

    def describe(self) -> str:
        if not self.promises:
            return "asynchronous" if self.mode == "off" else f"{self.mode}, degraded to async"
        word = "FIRST" if self.mode == "on" else "ANY"
        return f"{word} {self.num_sync} ({', '.join(self.standbys)})"


OFF = SyncConfig("off", 0)


def committed_sync(state: ClusterState) -> SyncConfig:
    return SyncConfig(state.sync_mode, state.num_sync, tuple(state.sync_standbys))


def implies(strong: SyncConfig, weak: SyncConfig) -> bool:
    """Does enforcing ``strong`` guarantee the promise of ``weak``?"""
    if weak.num_sync == 0:
        return True
    if strong.num_sync == 0:
        return False
    outside = len(set(strong.standbys) - set(weak.standbys))
    return strong.num_sync - outside >= weak.num_sync


def weakest_common(a: SyncConfig, b: SyncConfig) -> SyncConfig:
    """A configuration implied by both ``a`` and ``b`` (in ``b``'s mode)."""
    if b.mode == "off":
        return OFF
    if a.num_sync == 0 or b.num_sync == 0:
        return SyncConfig(b.mode, 0)
    return SyncConfig(b.mode, min(a.num_sync, b.num_sync), tuple(set(a.standbys) | set(b.standbys)))


def sync_eligible(state: ClusterState, m: Member) -> tuple[bool, str]:
    if m.name == state.primary:
        return False, "is the primary"
    if m.is_learner:
        return False, "is a Raft learner"
    if m.tags.nosync:
        return False, "tagged nosync"
    if m.tags.nofailover or m.tags.failover_priority == 0:
        return False, "can not be promoted (nofailover or failover_priority 0)"
    if m.healthy is not True:
        return False, "not healthy"
    if m.reported_role != "replica":
        return False, f"reports role {m.reported_role}"
    if state.timeline is not None and m.timeline != state.timeline:
        return False, f"on timeline {m.timeline}, cluster on {state.timeline}"
    return True, "healthy streaming replica"


@dataclass(frozen=True, slots=True)
class DesiredSync:
    config: SyncConfig
    strict_block: bool
    reason: str


def desired_sync(state: ClusterState, settings: HASettings) -> DesiredSync:
    """The set the cluster should have now (pure function of committed state and settings)."""
    mode = settings.synchronous_mode
    if mode == "off":
        return DesiredSync(OFF, False, "synchronous_mode is off")
    current = committed_sync(state)
    ok = [m for m in state.members.values() if sync_eligible(state, m)[0]]
    if not ok:
        if settings.synchronous_strict:
            if current.promises and current.mode == mode:
                return DesiredSync(current, False, "strict: no healthy standby; keeping the set, writes wait")
            return DesiredSync(SyncConfig(mode, 0), True, "strict: no standby yet; writes wait for any standby")
        return DesiredSync(SyncConfig(mode, 0), False, "degraded to async: no healthy synchronous standby")
    count = settings.synchronous_node_count
    if mode == "quorum":
        chosen = [m.name for m in ok]
        k = min(count, len(chosen))
        return DesiredSync(SyncConfig(mode, k, tuple(chosen)), False, f"ANY {k} of {len(chosen)} healthy standbys")
    # 'on': exactly k names (FIRST k of k: every listed standby confirms every commit); keep the
    # current members while they qualify (no churn), then the most advanced.
    keep = sorted((m for m in ok if m.name in current.standbys), key=lambda m: m.name)
    rest = sorted(
        (m for m in ok if m.name not in current.standbys),
        key=lambda m: (-(m.lsn or 0), -m.tags.failover_priority, m.name),
    )
    chosen = [m.name for m in (keep + rest)[:count]]
    k = len(chosen)
    note = "" if k == count else f" (only {k} healthy, {count} wanted)"
    return DesiredSync(SyncConfig(mode, k, tuple(chosen)), False, f"FIRST {k}: {', '.join(chosen)}{note}")


def pg_target(state: ClusterState, settings: HASettings) -> tuple[SyncConfig, str]:
    """What the primary tells PostgreSQL now: ``(config, synchronous_standby_names)``."""
    d = desired_sync(state, settings)
    c = committed_sync(state)
    target = d.config if implies(d.config, c) else c
    strict_block = d.strict_block and target == d.config
    if state.primary is not None and state.primary in target.standbys:
        # Right after a failover the committed set still names the new primary (it was the synchronous
        # standby). A primary can not wait for itself: every commit would hang. Ask PostgreSQL only for
        # the other standbys (none: asynchronous, or blocked in strict mode) until the arbiter commits
        # the new set.
        others = tuple(s for s in target.standbys if s != state.primary)
        target = SyncConfig(target.mode, min(target.num_sync, len(others)), others)
        strict_block = strict_block or (settings.synchronous_strict and not target.promises)
    return target, render_standby_names(target, strict_block=strict_block)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def render_standby_names(cfg: SyncConfig, *, strict_block: bool = False) -> str:
    if not cfg.promises:
        return "*" if strict_block else ""
    word = "FIRST" if cfg.mode == "on" else "ANY"
    # FIRST lists in priority order; our 'on' sets have k == n, so the order does not matter.
    return f"{word} {cfg.num_sync} ({', '.join(_quote(s) for s in cfg.standbys)})"


_NAMES_RE = re.compile(r"^\s*(FIRST|ANY)\s+(\d+)\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)


def parse_standby_names(text: str) -> SyncConfig:
    """PostgreSQL's ``synchronous_standby_names`` as the configuration it enforces.

    ``''`` enforces nothing; ``'*'`` or a list without a count (``'a, b'``, i.e. FIRST 1) give
    ``k = 1`` over the names; ``'*'`` enforces a confirmation by an unknown standby, which promises
    nothing about a named set, so it parses as ``k = 0``.
    """
    t = text.strip()
    if not t or t == "*":
        return OFF if not t else SyncConfig("on", 0)
    m = _NAMES_RE.match(t)
    if m:
        word, k, body = m.group(1).upper(), int(m.group(2)), m.group(3)
    else:
        word, k, body = "FIRST", 1, t
    names = [_unquote(n) for n in _split(body)]
    if "*" in names:
        return SyncConfig("on" if word == "FIRST" else "quorum", 0)
    return SyncConfig("on" if word == "FIRST" else "quorum", min(k, len(set(names))), tuple(names))


def _split(body: str) -> list[str]:
    out, cur, quoted = [], "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == "," and not quoted:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


@dataclass(frozen=True, slots=True)
class SyncStep:
    """What the arbiter should do about the committed set.

    ``kind``: ``commit`` (propose ``config``; ``guard_position`` set for a strengthening, see the
    module doc), ``wait`` (the primary has not applied the target yet) or ``none`` (nothing to do).
    """

    kind: Literal["commit", "wait", "none"]
    config: SyncConfig | None
    reason: str
    guard_position: int | None = None
    degraded: bool = False


def plan_sync_change(
    state: ClusterState,
    settings: HASettings,
    primary_enforces: SyncConfig | None,
    primary_state_position: int | None,
) -> SyncStep:
    """``primary_enforces``: parsed ``synchronous_standby_names`` from the primary's latest report
    (None: unknown); ``primary_state_position``: the committed position the primary had applied."""
    c = committed_sync(state)
    d = desired_sync(state, settings)
    if c == d.config:
        return SyncStep("none", None, f"committed set is current: {c.describe()}")
    degraded = d.config.mode != "off" and not d.config.promises and c.promises and not d.strict_block
    if implies(c, d.config):
        return SyncStep("commit", d.config, f"{d.reason}: {c.describe()} -> {d.config.describe()}", degraded=degraded)
    w = weakest_common(c, d.config)
    if w != c:
        return SyncStep(
            "commit",
            w,
            f"step 1/2 toward {d.config.describe()} ({d.reason}): widen the committed set to {w.describe()} "
            "before PostgreSQL is told",
        )
    if primary_enforces is None or primary_state_position != state.last_position:
        return SyncStep(
            "wait",
            None,
            f"waiting for the primary to apply {d.config.describe()} and report it at position {state.last_position}",
        )
    if not implies(primary_enforces, d.config):
        return SyncStep(
            "wait",
            None,
            f"PostgreSQL on the primary enforces {primary_enforces.describe()}, not yet {d.config.describe()}",
        )
    return SyncStep(
        "commit",
        d.config,
        f"step 2/2: PostgreSQL enforces {primary_enforces.describe()}; narrowing the committed set to "
        f"{d.config.describe()} ({d.reason})",
        guard_position=state.last_position,
    )
