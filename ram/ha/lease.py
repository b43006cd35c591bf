"""The primary lease: when the primary must fence itself and when the arbiter may promote another node.

Model
=====

Real time is ``t``. Every node ``X`` has a monotonic clock ``C_X`` whose rate against real time stays
within ``[1 - rho, 1 + rho]`` (``rho = HASettings.clock_drift``), so for ``a <= b``::

    (1 - rho)(b - a)  <=  C_X(b) - C_X(a)  <=  (1 + rho)(b - a)                                  (D)

Clocks of different nodes are never compared; only durations measured on one clock are used.
``lease = lease_s``, ``m = safety_margin_s``, ``d = fence_duration_s`` (an upper bound, on the
holder's clock, from "start fencing" to "PostgreSQL accepts no more writes").

Protocol
========

1. The holder P reads ``t_sent = C_P(s)`` BEFORE sending a renewal at real time ``s``
   (:meth:`HolderLease.on_renew_sent`).
2. The Raft leader L, on RECEIVING the request, starts a ReadIndex round (a heartbeat to a quorum in
   its current term, begun after the request arrived), waits until it has applied its commit index,
   evaluates the grant policy on that state (``ram.ha.arbiter.lease_designee``) and, if it grants,
   records ``t_granted = C_L(g)`` at real time ``g`` after the quorum confirmed
   (:meth:`ArbiterLeaseView.try_grant`), then answers.
3. On the answer P extends its lease to ``t_sent + lease`` (:meth:`HolderLease.on_renew_ok`) and
   starts fencing at ``C_P = t_sent + lease - fence_early`` with ``fence_early = rho * lease + d``
   (:meth:`HolderLease.must_fence`; the runtime arms a timer at :meth:`HolderLease.fence_at`, and
   also fences when that timer fires late).
4. L treats P's lease as expired when ``C_L(now) >= t_granted + lease * (1 + rho) + m``
   (:meth:`ArbiterLeaseView.expired`); a new leader that recorded no grant uses the instant it
   learned it was elected, ``leader_since``, in place of ``t_granted``.

``lease`` on the arbiter's side is the longer of its own ``lease_s`` and the holder's: every renewal
request announces the holder's ``lease_s`` (:func:`announced_lease`), and a holder that announced
none (a node of an older release) counts as :data:`UNANNOUNCED_LEASE_S`. Lease settings are meant to
be equal on every node, but they are not dynamic: nodes are restarted one by one to change them, and
a rolling upgrade mixes releases with different defaults; in between, the argument below still
holds for every pair. ``clock_drift`` and ``fence_duration_s`` are each node's own bounds (on its
own clock, on its own fencing) and ``safety_margin_s`` is slack the arbiter adds, so they need not
agree across nodes.

*Committed lease lengths.* The one number another node must know is the length of a lease it never
granted (the new-leader case below). So a holder uses a lease longer than
:data:`UNANNOUNCED_LEASE_S` only once its length is committed (``member_lease_announced``, the
member's ``lease_s`` in the cluster state): its lease is :func:`effective_lease` of its own setting
and what its applied state says, taken when it sends the request (so every entry it relied on was
committed before that send). A node announces a longer lease at once and a shorter one only
:func:`lowering_delay` after it started, when every lease of its previous process has run out
(:func:`lease_to_announce`).

Claim: no real instant exists at which P may still accept writes and L considers P's lease expired.
========================================================================================

*Holder side.* Let ``w`` be the real instant after which P accepts no write. P starts fencing when
``C_P`` reaches ``t_sent + lease - rho*lease - d`` and is done ``d`` later on its own clock, so
``C_P(w) - C_P(s) <= lease - rho*lease = (1 - rho) lease``. By (D), ``w - s <= lease``.

*Arbiter side.* Let ``e`` be the first real instant at which L says "expired":
``C_L(e) - C_L(g) = lease (1 + rho) + m``. By (D), ``e - g >= lease + m / (1 + rho)``.

*Ordering.* ``g >= s``: L answers a request after receiving it, and P read its clock before sending.
Hence ``e >= g + lease + m/(1+rho) >= s + lease + m/(1+rho) >= w + m/(1+rho) > w`` (for ``m > 0``;
``m = 0`` still gives ``e >= w``). The margin ``m`` is slack for a fence timer that fires late
(scheduling, GC): up to ``m / (1 + rho)`` real seconds of lateness are tolerated. Several renewals
only help: P uses the latest acknowledged ``t_sent``, and every acknowledged ``t_sent`` was granted
at some ``g >= s``; L uses its latest ``t_granted``.

*A new leader (no grant record).* Let L' learn of its election at real ``u`` (``leader_since =
C_L'(u)``); it does not know the lease length of its predecessors' grants, so it presumes the
longest a holder may use (:func:`presumed_lease`: the longest committed ``lease_s`` of any member,
:data:`UNANNOUNCED_LEASE_S`, and its own ``lease_s``). That covers every such grant: a holder's
lease is at most :data:`UNANNOUNCED_LEASE_S` or a length committed before it sent the request
(``s < u``, below), and L' builds its view after applying every entry committed before its term. Any grant by a leader
of an older term T was preceded by a quorum of acks to a heartbeat
round that L started after receiving the request, so the request was sent at ``s < a_v`` where
``a_v`` is the ack of some voter ``v`` that also voted for L' (two quorums intersect). A voter that
has voted in a higher term rejects term-T heartbeats, so ``a_v`` precedes v's vote, which precedes
``u``. Thus ``s < u``, and the bound above holds with ``u`` in place of ``g``: L' may assume a grant
at ``leader_since``. (The grant's answer itself may reach P after ``u``; the proof never needed it
earlier, only ``s``.) Grants from leaders of NEWER terms than L' cannot be known to L'; but L' is
then deposed: its proposals do not commit and its own grants fail their ReadIndex round.

Choosing the numbers
====================

The defaults (``lease_s`` 1.0, ``renew_interval_s`` 0.1, ``clock_drift`` 0.01, ``safety_margin_s``
0.1, ``fence_duration_s`` 0.2) give: the primary fences itself 0.79 s (own clock) after sending its
last acknowledged renewal; the arbiter may promote 1.11 s after its last grant. What they assume:

* *Clock rate.* Monotonic clocks of real machines drift by parts per million; NTP slews by at most
  500 ppm. ``clock_drift`` 0.01 (10,000 ppm) is far above both, and costs only 10 ms per second of
  lease. Wall-clock jumps do not matter: only monotonic time is used.
* *Fence time.* Fencing sends SIGQUIT to the postmaster and each of its children directly
  (:func:`ram.postgres.proctree.quit_tree`, no subprocess): from the fence timer to the last
  backend's exit it takes milliseconds. ``fence_duration_s`` 0.2 is kept far above that, so it also
  absorbs a fence timer that fires late.
* *Scheduling delay.* A fence timer that fires up to ``safety_margin_s / (1 + rho)`` + the unused
  part of ``fence_duration_s`` (together ~0.3 s) late is still safe. The fence guard process
  (:mod:`ram.ha.fence_guard`) fires at the same instant if `ram` itself is frozen.
* *Renewal round trip.* A renewal (request, quorum heartbeat round, answer) must succeed at least
  once per 0.79 s, or the primary fences itself: with renewals every 0.1 s, seven attempts in a row
  must fail. That is what a saturated machine must not cause (tested with both cores saturated for
  10 minutes: ``bench/failover.py --scenario steady --stress``).

Which knobs trade speed for tolerance: ``lease_s`` (every second of it is a second of a node-loss
failover, and a second more of renewal gap tolerated), ``safety_margin_s`` and ``fence_duration_s``
(added to the failover time, tolerate a late fence timer), ``renew_interval_s`` (shorter: more
attempts within a lease, more messages). ``report_timeout_s`` does not gate a failover: an expired
lease does (the arbiter's rule ``primary-healthy`` requires an unexpired lease). A new Raft leader
does not know how long its predecessor's grants were, so for ``UNANNOUNCED_LEASE_S`` (2 s) plus
drift and margin after its election it presumes them valid: a primary lost together with the Raft
leader (one machine hosting both, which RAM avoids by moving leadership off the primary's node)
costs about 2.2 s plus the election.

Who may hold the lease
======================

The view grants to one holder at a time: a grant to H is refused while any other possible holder's
lease is not expired. A new leader presumes a grant at ``leader_since`` either to the committed
primary (only when the committed state is *steady*: a primary and no failover/switchover in
progress, see ``ram.ha.arbiter.steady_holder``) or, otherwise, to an unknown holder, which delays
every grant by ``arbiter_wait_s`` after the election. The steady presumption is sound because a
designee change away from H is proposed only when H's lease is expired in the proposer's view, and
from the proposal on the proposer refuses H (:meth:`ArbiterLeaseView.revoke`), so no leader holds an
unexpired grant for a former designee once the change is committed and a later steady state is
reached. A holder that stopped writing on its own (clean demotion) calls :meth:`HolderLease.release`
and the leader :meth:`ArbiterLeaseView.on_released`, which ends the wait early.

Requirements on the runtime: the ReadIndex round of a grant starts after the request arrives (do not
reuse an older confirmation); grants are evaluated on state applied up to the read index; a leader
builds its view (``on_became_leader``) only after applying the first entry of its term; the fence
timer acts even while other HA work is in progress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ram.ha.settings import HASettings

__all__ = [
    "UNANNOUNCED_LEASE_S",
    "WILDCARD",
    "ArbiterLeaseView",
    "GrantVerdict",
    "HolderLease",
    "RenewToken",
    "announced_lease",
    "effective_lease",
    "lease_to_announce",
    "lowering_delay",
    "presumed_lease",
]

#: Key of a presumed grant to an unknown holder (new leader, non-steady state).
WILDCARD = "*"

#: The lease of a holder that announced none: a node of a release before the announcement (whose
#: default was 2 s), or a grant of a previous leader (whose holder's lease this leader never heard).
UNANNOUNCED_LEASE_S = 2.0


def effective_lease(own_lease_s: float, committed_lease_s: float | None) -> float:
    """The lease a holder may use: its own ``lease_s``, but longer than :data:`UNANNOUNCED_LEASE_S`
    only as far as its committed length (``Member.lease_s``) allows, which every later leader knows."""
    return min(own_lease_s, max(UNANNOUNCED_LEASE_S, committed_lease_s or 0.0))


def presumed_lease(committed_leases: Iterable[float | None], own_lease_s: float) -> float:
    """How long a grant a new leader never saw may last: the longest lease any holder may use."""
    return max([UNANNOUNCED_LEASE_S, own_lease_s, *(c for c in committed_leases if c is not None)])


def lowering_delay(committed_lease_s: float, settings: HASettings) -> float:
    """Own-clock seconds after a node's start before it may commit a shorter lease than
    ``committed_lease_s``: every lease its previous process held (at most that long, sent before
    this start) has run out by then, by the arbiter's own rule."""
    return committed_lease_s * (1 + settings.clock_drift) + settings.safety_margin_s


def lease_to_announce(
    own_lease_s: float, committed_lease_s: float | None, seconds_since_start: float, settings: HASettings
) -> float | None:
    """The lease length this node should commit now, or None.

    Longer than committed (or nothing committed and longer than :data:`UNANNOUNCED_LEASE_S`): at
    once; the holder keeps to the committed length until the announcement is applied. Shorter:
    only after :func:`lowering_delay`, since a new leader must keep presuming the longer lease
    while a lease of this member's previous process may last."""
    if committed_lease_s is None:
        return own_lease_s if own_lease_s > UNANNOUNCED_LEASE_S else None
    if own_lease_s == committed_lease_s:
        return None
    if own_lease_s > committed_lease_s:
        return own_lease_s
    if seconds_since_start >= lowering_delay(committed_lease_s, settings):
        return own_lease_s
    return None


def announced_lease(value: float) -> float:
    """The lease a renewal request announces, as the arbiter may use it: a missing (0), negative or
    non-finite value is :data:`UNANNOUNCED_LEASE_S`; at most an hour (as ``HASettings.lease_s``)."""
    if not math.isfinite(value) or value <= 0:
        return UNANNOUNCED_LEASE_S
    return min(value, 3600.0)


@dataclass(frozen=True, slots=True)
class RenewToken:
    """One renewal request: ``seq`` orders them, ``t_sent`` is the holder's clock before sending,
    ``lease_s`` the lease it may use (:func:`effective_lease` as of the send)."""

    seq: int
    t_sent: float
    epoch: int
    lease_s: float


class HolderLease:
    """The holder's side (the primary, or the candidate about to promote)."""

    def __init__(self, settings: HASettings) -> None:
        self._settings = settings
        self._seq = 0
        self._epoch = 0
        self._valid_until: float | None = None
        self._last_sent: float | None = None

    def on_renew_sent(self, now: float, committed_lease_s: float | None = None) -> RenewToken:
        """A request is about to be sent; ``committed_lease_s``: this member's committed lease
        length as applied now (None: none committed)."""
        if self._last_sent is not None and now < self._last_sent:
            raise ValueError(f"monotonic clock went backwards: {now} < {self._last_sent}")
        self._seq += 1
        self._last_sent = now
        return RenewToken(self._seq, now, self._epoch, effective_lease(self._settings.lease_s, committed_lease_s))

    def on_renew_ok(self, token: RenewToken) -> None:
        """The leader granted ``token``; a late or duplicated answer never shortens the lease."""
        if token.epoch != self._epoch or token.seq > self._seq:
            return  # issued before a release, or not ours
        until = token.t_sent + token.lease_s
        if self._valid_until is None or until > self._valid_until:
            self._valid_until = until

    def release(self) -> None:
        """Give the lease up (clean demotion); answers to requests sent before are ignored."""
        self._epoch += 1
        self._valid_until = None

    @property
    def valid_until(self) -> float | None:
        return self._valid_until

    @property
    def lease_s(self) -> float:
        """This holder's own lease setting, announced with every renewal request (at least what it
        uses, :func:`effective_lease`)."""
        return self._settings.lease_s

    def fence_at(self) -> float | None:
        """Own-clock instant at which fencing must start (None: holds no lease, fence now)."""
        if self._valid_until is None:
            return None
        return self._valid_until - self._settings.fence_early_s

    def must_fence(self, now: float) -> bool:
        at = self.fence_at()
        return at is None or now >= at

    def holds(self, now: float) -> bool:
        return not self.must_fence(now)

    def time_left(self, now: float) -> float:
        """Seconds (own clock) until fencing must start; 0 when it must fence now."""
        at = self.fence_at()
        return 0.0 if at is None else max(0.0, at - now)


@dataclass(frozen=True, slots=True)
class GrantVerdict:
    granted: bool
    reason: str


class ArbiterLeaseView:
    """The Raft leader's record of grants. Not leader (``on_became_leader`` not called): nothing expires."""

    def __init__(self, settings: HASettings) -> None:
        self._settings = settings
        self._leader_since: float | None = None
        self._presumed_lease = max(UNANNOUNCED_LEASE_S, settings.lease_s)
        #: Holder (or WILDCARD) -> leader-clock instant its latest grant expires.
        self._expiry: dict[str, float] = {}
        self._revoked: dict[str, int | None] = {}

    @property
    def leader_since(self) -> float | None:
        return self._leader_since

    @property
    def presumed_wait(self) -> float:
        """How long a grant presumed at the election lasts: its holder's lease is not known here."""
        return self._settings.arbiter_wait_for(self._presumed_lease)

    def on_became_leader(
        self, now: float, steady_holder: str | None = None, committed_leases: Iterable[float | None] = ()
    ) -> None:
        """Start a fresh view, presuming a grant at ``now`` to ``steady_holder`` or to anyone (None)
        of the longest lease a holder may use (``committed_leases``: every member's committed
        ``lease_s``, from the state applied through the first entry of this term)."""
        self._presumed_lease = presumed_lease(committed_leases, self._settings.lease_s)
        self._leader_since = now
        self._expiry = {steady_holder if steady_holder is not None else WILDCARD: now + self.presumed_wait}
        self._revoked = {}

    def on_lost_leadership(self) -> None:
        self._leader_since = None
        self._expiry = {}
        self._revoked = {}

    def on_grant(self, holder: str, now: float, lease_s: float | None = None) -> None:
        """Record a grant (``now``: after the quorum confirmed) to a holder whose lease is ``lease_s``
        (None: this view's own ``lease_s``). Prefer :meth:`try_grant`."""
        if self._leader_since is None:
            raise RuntimeError("on_grant while not leader")
        until = now + self._settings.arbiter_wait_for(self._settings.lease_s if lease_s is None else lease_s)
        prev = self._expiry.get(holder)
        self._expiry[holder] = until if prev is None else max(prev, until)

    def on_released(self, holder: str) -> None:
        """``holder`` stopped accepting writes by itself and gave the lease up."""
        self._expiry.pop(holder, None)

    def revoke(self, holder: str, until_position: int | None = None) -> None:
        """Refuse ``holder`` from now on (a decision moving the lease away from it is being proposed).

        With ``until_position`` (the proposal's log index) the refusal ends once the state passed to
        :meth:`try_grant` has applied that position; otherwise it lasts until :meth:`restore`.
        """
        self._revoked[holder] = until_position

    def restore(self, holder: str) -> None:
        self._revoked.pop(holder, None)

    def revoked(self, holder: str) -> bool:
        return holder in self._revoked

    def deadline(self, holder: str) -> float:
        """Leader-clock instant from which ``holder``'s lease is expired (inf when not leader)."""
        if self._leader_since is None:
            return math.inf
        # Any holder may still hold a grant of a previous leader, of a length this one never heard.
        return max(
            self._leader_since + self.presumed_wait,
            self._expiry.get(holder, -math.inf),
            self._expiry.get(WILDCARD, -math.inf),
        )

    def expired(self, holder: str, now: float) -> bool:
        return now >= self.deadline(holder)

    def seconds_until_expired(self, holder: str, now: float) -> float:
        return max(0.0, self.deadline(holder) - now)

    def all_expired(self, now: float) -> bool:
        """No node may hold a lease from this leader or an older one."""
        return all(self.expired(h, now) for h in self._expiry) and self.expired(WILDCARD, now)

    def holders(self, now: float) -> list[str]:
        """Holders (possibly ``WILDCARD``) whose lease is not expired."""
        return sorted(h for h in self._expiry if not self.expired(h, now))

    def try_grant(
        self, holder: str, now: float, *, applied_position: int = 0, lease_s: float | None = None
    ) -> GrantVerdict:
        """Grant ``holder`` (already checked against the grant policy) if no other lease may be valid.
        ``lease_s``: the holder's own lease as it announced it (None: the same as this view's)."""
        if self._leader_since is None:
            return GrantVerdict(False, "not the Raft leader")
        if holder in self._revoked:
            until = self._revoked[holder]
            if until is not None and applied_position >= until:
                del self._revoked[holder]
            else:
                return GrantVerdict(False, f"lease of {holder} is being revoked")
        others = [h for h in self._expiry if h != holder and not self.expired(h, now)]
        if others:
            h = others[0]
            who = "an unknown holder (presumed at election)" if h == WILDCARD else h
            return GrantVerdict(
                False, f"lease of {who} may be valid for {self.seconds_until_expired(h, now):.2f} s more"
            )
        for h in [h for h in self._expiry if h != holder]:
            del self._expiry[h]
        self.on_grant(holder, now, lease_s)
        return GrantVerdict(True, f"granted to {holder}")
