"""The lease runner: renews this node's primary lease while the keeper wants it, keeps the fence
guard's deadline equal to the lease's fence time, and fences PostgreSQL the moment the lease runs
out (see :mod:`ram.ha.lease` for the timing argument). Its own loops, so that a slow PostgreSQL
command (a clone, a rewind) never delays renewal or fencing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ram.cluster.node import ClusterNode
from ram.eventstore.commands import ReportFact, required_level
from ram.eventstore.events import MemberLeaseAnnounced, NodeFenced
from ram.ha import keeper as k
from ram.ha.facts import FactReporter
from ram.ha.fence_guard_client import FenceGuardProcess
from ram.ha.lease import HolderLease, lease_to_announce
from ram.ha.local import LocalFacts
from ram.ha.settings import HASettings
from ram.ha.wire import LeaseRequest
from ram.postgres.instance import ManagedInstance
from ram.postgres.status import InstanceStatus

__all__ = ["LeaseRunner"]

log = logging.getLogger("ram.ha")

_FENCE_WATCH_S = 0.02
#: While a promotion waits for its lease, ask again this often (not at the renewal interval).
_PROMOTE_RETRY_S = 0.05
#: An announcement of this node's lease length not applied after this long is proposed again.
_ANNOUNCE_RETRY_S = 5.0


class LeaseRunner:
    def __init__(
        self,
        node: ClusterNode,
        me: str,
        instance: ManagedInstance,
        local: LocalFacts,
        facts: FactReporter,
        settings: Callable[[], HASettings],
        keeper_input: Callable[[float], k.KeeperInput],
        wake_keeper: Callable[[], None],
    ) -> None:
        self.node = node
        self.me = me
        self.instance = instance
        self.local = local
        self.facts = facts
        self._settings = settings
        self._keeper_input = keeper_input
        self._wake_keeper = wake_keeper
        self.holder = HolderLease(settings())
        #: Fences PostgreSQL if this process dies or freezes while holding the lease.
        self.guard = FenceGuardProcess(instance.spec.data_dir)
        self._guard_fence_at: float | None = None
        #: Set on every committed change: a candidate asks for its lease at once.
        self.wake = asyncio.Event()
        #: Leases of this member's previous process were all sent before this instant.
        self._started_at = time.monotonic()
        self._announcing: tuple[float, float] | None = None  # (lease_s, when proposed)

    def holds(self, now: float) -> bool:
        return self.holder.holds(now)

    def announce_lease(self, now: float) -> None:
        """Commit this node's lease length when the committed one differs (``ram.ha.lease``: a
        longer lease is used only once committed; a shorter one is committed only once the previous
        process's leases have run out)."""
        if self.me not in self.node.state.members:
            return
        value = lease_to_announce(
            self.holder.lease_s, self.committed_lease(), now - self._started_at, self._settings()
        )
        if value is None:
            self._announcing = None
            return
        if self._announcing is not None:
            asked, at = self._announcing
            if asked == value and now - at < _ANNOUNCE_RETRY_S:
                return
        self._announcing = (value, now)
        fact = MemberLeaseAnnounced(name=self.me, lease_s=value)
        behind = self.node.members_behind(required_level(ReportFact(event=fact)))
        if behind:
            # Until they are upgraded this holder keeps to what is committed (at most 2 s if nothing).
            log.info("lease length not announced: %s run(s) an older release member=%s lease_s=%g",
                     ", ".join(behind), self.me, value)
            return
        log.info("announcing lease member=%s lease_s=%g committed_lease_s=%s", self.me, value, self.committed_lease())
        self.facts.report(fact)

    def committed_lease(self) -> float | None:
        """This member's committed lease length as applied here (None: none committed)."""
        member = self.node.state.members.get(self.me)
        return None if member is None else member.lease_s

    async def renew_loop(self) -> None:
        """Renew every ``renew_interval_s`` while the keeper wants the lease. A node that wants it
        without holding it (a candidate about to promote) asks again every ``_PROMOTE_RETRY_S`` and
        on every committed change, and wakes the keeper the moment it is granted."""
        interval = self._settings().renew_interval_s
        while True:
            started = time.monotonic()
            wait = interval
            try:
                self.announce_lease(started)
                if k.wants_lease(self._keeper_input(started)):
                    held = self.holder.holds(started)
                    token = self.holder.on_renew_sent(started, self.committed_lease())
                    answer = await self.node.raft.ask_leader(
                        LeaseRequest(request_id=0, lease_s=self.holder.lease_s), timeout=interval * 2
                    )
                    granted, reason = answer.ok, answer.error
                    if granted:
                        self.holder.on_renew_ok(token)
                        self._tell_guard()
                        self.local.lease_released = False
                        if not held:
                            self._wake_keeper()
                    else:
                        log.debug("lease not renewed reason=%s", reason)
                        if not held:
                            wait = _PROMOTE_RETRY_S
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewal failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.0, wait - (time.monotonic() - started)))

    def _tell_guard(self) -> None:
        """Keep the fence guard's deadline equal to the lease's fence time (or disarmed without one)."""
        at = self.holder.fence_at()
        if at == self._guard_fence_at:
            return
        self._guard_fence_at = at
        if at is None:
            self.guard.disarm()
        else:
            self.guard.arm(at)

    def release(self) -> None:
        """Give the lease up (a clean stop, a fence): the guard is disarmed with it."""
        self.holder.release()
        self._tell_guard()

    async def fence_watch(self) -> None:
        """Fence the moment the lease runs out while PostgreSQL may accept writes (not on the keeper's
        schedule: a clone or rewind in progress must not delay it)."""
        while True:
            await asyncio.sleep(_FENCE_WATCH_S)
            await self.guard.ensure_running()
            status = self.local.status
            writable = status is not None and status.running and status.in_recovery is False
            if self.local.initializing or self.local.demoting:
                # initdb runs a private, socket-only server; a demotion is already stopping cleanly.
                continue
            if writable and self.holder.must_fence(time.monotonic()):
                await self.fence("lease expired (not renewed in time)")

    async def fence(self, reason: str) -> None:
        log.warning("fencing postgres member=%s reason=%s", self.me, reason)
        await self.instance.fence()
        self.local.status = InstanceStatus(running=False)
        self.release()
        self.facts.report(NodeFenced(name=self.me, reason=reason[:1000], lease_expired_at_ms=int(time.time() * 1000)))

    def seconds_left(self) -> float | None:
        """Seconds until this node must fence (None: it holds no lease)."""
        now = time.monotonic()
        if not self.holder.holds(now):
            return None
        return self.holder.time_left(now)
