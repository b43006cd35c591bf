"""The executor: carries out one keeper action (:mod:`ram.ha.keeper`) on this node's PostgreSQL.

One handler per action type, found in a dispatch table (:data:`Executor.handlers`): the keeper
decided what to do and why; a handler only does it and records what happened (a fact for the
cluster, or a note in :class:`~ram.ha.local.LocalFacts` for the keeper's next decision). Every
action type has a handler; a test keeps the table complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ram.cluster.node import ClusterNode
from ram.eventstore.events import MemberActionCompleted, MemberHealthChanged, ReplicaRejoined
from ram.ha import keeper as k
from ram.ha.callbacks import CallbackRunner
from ram.ha.facts import FactReporter
from ram.ha.lease_runner import LeaseRunner
from ram.ha.local import LocalFacts
from ram.ha.observer import Observer
from ram.ha.pgspec import endpoint_of
from ram.ha.settings import HASettings
from ram.postgres import sql
from ram.postgres.instance import ManagedInstance
from ram.postgres.reachability import reachable
from ram.postgres.spec import PrimaryEndpoint

__all__ = ["Executor"]

log = logging.getLogger("ram.ha")


Handler = Callable[[Any], Awaitable[None]]


class Executor:
    def __init__(
        self,
        node: ClusterNode,
        me: str,
        instance: ManagedInstance,
        local: LocalFacts,
        observer: Observer,
        lease: LeaseRunner,
        facts: FactReporter,
        settings: Callable[[], HASettings],
        callbacks: CallbackRunner | None = None,
    ) -> None:
        self.node = node
        self.callbacks = callbacks
        self.me = me
        self.instance = instance
        self.local = local
        self.observer = observer
        self.lease = lease
        self.facts = facts
        self._settings = settings
        self.handlers: dict[type[k.Action], Handler] = {
            k.Nothing: self._nothing,
            k.Fence: self._fence,
            k.InitDb: self._initdb,
            k.StartPostgres: self._start,
            k.RestartCrashed: self._restart_crashed,
            k.Promote: self._promote,
            k.Demote: self._demote,
            k.Follow: self._follow,
            k.Rewind: self._rewind,
            k.Clone: self._clone,
            k.ConfigureSync: self._configure_sync,
            k.RestartPostgres: self._member_action,
            k.Reinit: self._member_action,
            k.RefuseMemberAction: self._member_action,
            k.ReportCannotRejoin: self._report_cannot_rejoin,
        }

    async def execute(self, action: k.Action) -> None:
        await self.handlers[type(action)](action)

    async def _pause(self) -> None:
        """After a step that could not be taken (source unreachable, rewind failed): wait a few
        report intervals before the keeper tries again."""
        await asyncio.sleep(self._settings().report_interval_s * 4)

    # ------------------------------------------------------------------------ handlers

    async def _nothing(self, action: k.Nothing) -> None:
        return None

    async def _fence(self, action: k.Fence) -> None:
        await self.lease.fence(action.why)

    async def _initdb(self, action: k.InitDb) -> None:
        self.local.initializing = True
        try:
            await self.instance.initdb_primary(start=False)
        finally:
            self.local.initializing = False
            # A new data directory never ran as this cluster's primary: the time before it existed is
            # not time "down" (primary_start_timeout_s must not run out before its first start) - also
            # when the last step (the temporary server's stop) failed after the directory was made.
            self.local.pg_down_since = None

    async def _start(self, action: k.StartPostgres) -> None:
        if action.role == "standby" and action.upstream:
            endpoint = endpoint_of(self.node.state, action.upstream)
            if endpoint is not None:
                await self.instance.follow(endpoint, wait=False)
                return
        await self.instance.start()

    async def _restart_crashed(self, action: k.RestartCrashed) -> None:
        await self.instance.start()

    async def _promote(self, action: k.Promote) -> None:
        if not self.lease.holds(time.monotonic()):
            return
        timeline = await self.instance.promote()
        log.info("promoted member=%s timeline=%s", self.me, timeline)

    async def _demote(self, action: k.Demote) -> None:
        endpoint = endpoint_of(self.node.state, action.follow)
        if endpoint is None:
            return
        # The demotion starts with a clean stop (no new writes from then on); the watchdog must not
        # turn it into an immediate stop, which would lose the WAL the candidate is waiting for.
        self.local.demoting = True
        try:
            await self.instance.demote(endpoint, on_stopped=self._on_demote_stopped)
            await self.observer.observe()
        finally:
            self.local.demoting = False
        self.lease.release()
        self.local.lease_released = True
        self.observer.report_following(action.follow)

    async def _on_demote_stopped(self) -> None:
        """PostgreSQL stopped cleanly and accepts no writes: give the lease up and report the final
        WAL position now, so the candidate can promote while we restart as a standby."""
        self.lease.release()
        self.local.lease_released = True
        await self.observer.report_stopped()

    async def _follow(self, action: k.Follow) -> None:
        endpoint = endpoint_of(self.node.state, action.primary)
        if endpoint is not None:
            # Do not wait for the walreceiver: the upstream may be down right now, and the keeper
            # must stay free to promote this node if it is chosen.
            await self.instance.follow(endpoint, wait=False)
            self.observer.report_following(action.primary)

    async def _clone(self, action: k.Clone) -> None:
        endpoint = endpoint_of(self.node.state, action.primary)
        if endpoint is None:
            return
        # Never wipe what we have unless the source is there to clone from right now.
        if self.instance.initialized and not await reachable(endpoint.host, endpoint.port):
            log.warning("not re-cloning: %s is unreachable; keeping the data directory", action.primary)
            await self._pause()
            return
        await self._clone_afresh(endpoint)
        self.local.not_streaming_since = None
        self.observer.report_following(action.primary)

    async def _rewind(self, action: k.Rewind) -> None:
        endpoint = endpoint_of(self.node.state, action.primary)
        if endpoint is None:
            return
        if not await reachable(endpoint.host, endpoint.port):
            # pg_rewind needs its source; an unreachable primary is not a failed rewind.
            await self._pause()
            return
        result = await self.instance.rejoin(endpoint, allow_clone=False)
        verdict = k.rewind_verdict(
            rejoined=result.method != "none" or result.started,
            source_unreachable=result.rewind.source_unreachable,
        )
        if verdict != "rejoined":
            self.local.rewind_failed = verdict == "failed"
            log.warning("rewind failed member=%s verdict=%s message=%s", self.me, verdict, result.rewind.message)
            await self._pause()
            return
        self.local.rewind_failed = False
        self.local.stopped_history = None
        if action.stuck:
            self.local.stuck_rewound = True
        self.local.not_streaming_since = None
        self.facts.report(ReplicaRejoined(name=self.me, primary=action.primary, method="rewind"))

    async def _configure_sync(self, action: k.ConfigureSync) -> None:
        spec = self.instance.spec
        names = sql.quote_literal(action.standby_names)
        await sql.execute(spec, f"ALTER SYSTEM SET synchronous_standby_names = {names}")
        await sql.execute(spec, "SELECT pg_reload_conf()")

    async def _report_cannot_rejoin(self, action: k.ReportCannotRejoin) -> None:
        self.facts.report(MemberHealthChanged(name=self.me, healthy=False, pg_running=False, reason=action.why[:1000]))

    async def _member_action(self, action: k.RestartPostgres | k.Reinit | k.RefuseMemberAction) -> None:
        """Carry out an operator's restart / reinit once, and record how it ended (the request stays
        pending in the committed state until that record commits; a crash before it repeats the
        action, which is safe for both)."""
        kind: Literal["restart", "reinit"]
        started = time.monotonic()
        if isinstance(action, k.RefuseMemberAction):
            kind, ok, message = action.action, False, action.reason
        elif isinstance(action, k.RestartPostgres):
            kind = "restart"
            if self.callbacks is not None:
                self.callbacks.restarting = True
            try:
                await self.instance.restart("fast")
                ok, message = True, f"PostgreSQL restarted in {time.monotonic() - started:.1f} s"
            except Exception as exc:
                ok, message = False, f"restart failed: {exc}"
            finally:
                if self.callbacks is not None:
                    self.callbacks.restarting = False
            if ok and self.callbacks is not None:
                self.callbacks.fire("on_restart", self.callbacks.role)
        else:
            kind = "reinit"
            ok, message = await self._reinit(action.primary)
            if ok:
                message = f"{message} in {time.monotonic() - started:.1f} s"
        self.local.action_done_position = action.position
        log.info("member action done action=%s ok=%s message=%s", kind, ok, message)
        self.facts.report(MemberActionCompleted(name=self.me, action=kind, ok=ok, message=message[:1000]))

    # ------------------------------------------------------------------------ helpers

    async def _clone_afresh(self, endpoint: PrimaryEndpoint) -> None:
        """Replace the data directory with a fresh clone of ``endpoint`` and start it as its standby
        (callers check first that the source is reachable: nothing is wiped otherwise)."""
        inst = self.instance
        if inst.initialized:
            await inst.stop("fast")
        await inst.clone_from(endpoint, wipe=True)
        await inst.start()
        self.local.rewind_failed = False
        self.local.stopped_history = None

    async def _reinit(self, primary: str) -> tuple[bool, str]:
        endpoint = endpoint_of(self.node.state, primary)
        if endpoint is None:
            return False, f"reinit failed: {primary} has no PostgreSQL address"
        if not await reachable(endpoint.host, endpoint.port):
            return False, f"reinit not started: {primary} ({endpoint.host}:{endpoint.port}) is unreachable; data kept"
        try:
            await self._clone_afresh(endpoint)
        except Exception as exc:
            return False, f"reinit failed: {exc}"
        self.facts.report(ReplicaRejoined(name=self.me, primary=primary, method="clone"))
        return True, f"re-cloned from {primary}"
