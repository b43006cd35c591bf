"""The HA controller of one node: wiring. It builds the parts, hands them the Raft node's hooks and
runs their loops side by side, so that a slow PostgreSQL command (a clone, a rewind) never delays
lease renewal or fencing:

* :class:`~ram.ha.observer.Observer` — every ``report_interval_s``, reads the local PostgreSQL,
  keeps :class:`~ram.ha.local.LocalFacts` and reports to the arbiter;
* :class:`~ram.ha.lease_runner.LeaseRunner` — renews the primary lease while the keeper wants it,
  and fences PostgreSQL the moment it runs out (with the fence guard process as a second line);
* :class:`~ram.ha.arbiter_runner.ArbiterRunner` — on the Raft leader, decisions become one Raft
  proposal; it also grants leases;
* the keeper loop here — the next :func:`ram.ha.keeper.next_action` toward the committed state,
  one at a time, carried out by :class:`~ram.ha.executor.Executor`.

All decisions are pure functions (:mod:`ram.ha.arbiter`, :mod:`ram.ha.keeper`, :mod:`ram.ha.lease`,
:mod:`ram.ha.leadership`, :mod:`ram.ha.timers`); every action and decision is logged with its rule
and reason. The controller also answers the API's live view (:class:`ram.ha.live.HAView`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ram.cluster.node import ClusterNode
from ram.config import NodeConfig
from ram.eventstore.commands import FactEvent
from ram.eventstore.events import (
    MemberActionCompleted,
    MemberLeaseAnnounced,
    NodeFenced,
    ReplicaFollowing,
    ReplicaRejoined,
)
from ram.ha import keeper as k
from ram.ha.arbiter_runner import ArbiterRunner
from ram.ha.callbacks import HOOKS, CallbackRunner, Hook
from ram.ha.candidates import is_fresh
from ram.ha.dynconfig import DYNAMIC_HA_KEYS, effective_settings
from ram.ha.executor import Executor
from ram.ha.facts import FactReporter
from ram.ha.lease_runner import LeaseRunner
from ram.ha.live import LocalLive, MemberLive
from ram.ha.local import LocalFacts
from ram.ha.observer import Observer
from ram.ha.pgspec import instance_spec
from ram.ha.settings import HASettings
from ram.ha.wire import LeaseRequest, MemberReport
from ram.postgres.instance import ManagedInstance


def _stopping() -> bool:
    """Is the current task being cancelled from outside (a stop), rather than hit by a stray
    CancelledError raised inside a step?"""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


log = logging.getLogger("ram.ha")

#: How long PostgreSQL's clean (fast) shutdown may take when the node itself stops, before it becomes
#: an immediate one. A fast shutdown waits for its shutdown checkpoint (a restartpoint on a replica),
#: which a stalled disk can hold for as long as it stalls; with the general 60 s bound the node would
#: outlast those stopping it (`ram cluster down` 30 s, the systemd unit 60 s), which SIGKILL it
#: mid-shutdown and leave PostgreSQL to itself. A primary's PostgreSQL goes sooner anyway: once the
#: node stops renewing its lease, the fence guard kills it. Planned operations (switchover,
#: restart) keep the longer bound.
SHUTDOWN_FAST_STOP_S = 15.0

#: How long a fact (health, following, fenced, ...) is retried while it can not be committed.
_FACT_RETRY_S = 30.0


class HAController:
    """Drives this node's PostgreSQL toward the committed cluster state."""

    def __init__(self, node: ClusterNode, config: NodeConfig) -> None:
        self.node = node
        self.config = config
        self.me = config.name
        #: What runs: the node file's [ha] overridden by the committed dynamic keys (ram.ha.dynconfig).
        self.settings = effective_settings(config.ha, node.state.dynamic_config)
        self._dynamic_seen: dict[str, Any] = dict(node.state.dynamic_config)
        self.instance = ManagedInstance(instance_spec(config, node.state))
        #: What this node knows of its own PostgreSQL (shared by observer, executor and lease runner).
        self.pg = LocalFacts()
        self._wake_keeper = asyncio.Event()
        self._last_action = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.facts = FactReporter(
            node,
            self._fact_still_true,
            proposal_timeout_s=self.settings.lease_s * 3,
            retry_every_s=self.settings.report_interval_s,
            retry_s=_FACT_RETRY_S,
        )
        cb = config.callbacks
        scripts: dict[Hook, list[str]] = {
            hook: argv for hook in HOOKS if (argv := getattr(cb, hook)) is not None
        }
        self.callbacks = CallbackRunner(
            self.me, config.cluster_name, scripts, timeout_s=cb.timeout_s, record=self.facts.report
        )
        self.lease = LeaseRunner(
            node, self.me, self.instance, self.pg, self.facts, self._current_settings,
            self._keeper_input, self._wake_keeper.set,
        )
        self.observer = Observer(
            node, config, self.instance, self.pg, self.facts, self._current_settings,
            self.lease.holds, self._wake_keeper.set, self.callbacks,
        )
        self.executor = Executor(
            node, self.me, self.instance, self.pg, self.observer, self.lease, self.facts, self._current_settings,
            self.callbacks,
        )
        self.arbiter = ArbiterRunner(node, self.me, config.node_id, self._current_settings)
        node.raft.serve(LeaseRequest, self.arbiter.serve_lease)
        node.raft.listen(MemberReport, self.arbiter.on_member_report)
        node.on_applied = self._on_applied

    def _current_settings(self) -> HASettings:
        return self.settings

    def _keeper_input(self, now: float) -> k.KeeperInput:
        return self.observer.keeper_input(now)

    # ----------------------------------------------------------------------------------- life

    async def start(self) -> None:
        await self.lease.guard.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._finish_crash_recovery(), name="ram.ha.crash-recovery"),
            loop.create_task(
                self._every(lambda: self.settings.report_interval_s, self.observer.observe), name="ram.ha.observe"
            ),
            loop.create_task(self.lease.renew_loop(), name="ram.ha.lease"),
            loop.create_task(self.lease.fence_watch(), name="ram.ha.fence"),
            loop.create_task(self.arbiter.loop(), name="ram.ha.arbiter"),
            loop.create_task(self._keeper_loop(), name="ram.ha.keeper"),
        ]
        for task in self._tasks[1:]:
            task.add_done_callback(self._on_task_done)
        log.info("ha controller started member=%s pgdata=%s", self.me, self.instance.spec.data_dir)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """An HA loop must never end while the node runs: say so loudly (it can not be awaited)."""
        if task.cancelled():
            return
        log.critical("ha loop ended task=%s error=%r", task.get_name(), task.exception(), exc_info=task.exception())

    async def _finish_crash_recovery(self) -> None:
        """Overlap a crashed former primary's crash recovery with the Raft catch-up at start."""
        started = time.monotonic()
        try:
            if await self.instance.finish_crash_recovery():
                log.info("crash recovery finished at start seconds=%.2f", time.monotonic() - started)
        except Exception as exc:  # the keeper's own path (rewind or start) deals with it again
            log.warning("crash recovery at start failed error=%s", exc)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.node.raft.serve(LeaseRequest, None)
        self.node.raft.listen(MemberReport, None)
        self.node.on_applied = None
        was_running = self.pg.status is not None and self.pg.status.running
        started = time.monotonic()
        with contextlib.suppress(Exception):
            stopped = await self.instance.stop("fast", timeout=SHUTDOWN_FAST_STOP_S)
            log.info("postgres stopped with the node member=%s was_running=%s mode=%s took_s=%.2f",
                     self.me, stopped.was_running, stopped.mode, time.monotonic() - started)
        if was_running:
            # PostgreSQL stops with RAM: on_stop runs (and is waited for, within its timeout) before
            # the facts reporter that records it goes away.
            self.callbacks.fire("on_stop", self.callbacks.role)
        await self.callbacks.drain(self.config.callbacks.timeout_s + 5)
        await self.callbacks.close()
        await self.facts.close()
        await self.lease.guard.close()
        log.info("ha controller stopped member=%s", self.me)

    async def _every(self, interval: Callable[[], float], step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ha step failed step=%s", getattr(step, "__name__", step))
            await asyncio.sleep(interval())

    def _on_applied(self, _state: Any) -> None:
        """A committed change: act on it now rather than at the next tick (a switchover or a
        failover decision reaches the keepers and the arbiter within one apply). A change of the
        dynamic configuration takes effect here, on every node, without a restart."""
        dynamic = self.node.state.dynamic_config
        if dynamic != self._dynamic_seen:
            self._dynamic_seen = dict(dynamic)
            settings = effective_settings(self.config.ha, dynamic)
            if settings != self.settings:
                log.info("dynamic configuration applied settings=%s", settings.model_dump(include=set(DYNAMIC_HA_KEYS)))
            self.settings = settings
        self._wake_keeper.set()
        self.arbiter.wake.set()
        self.lease.wake.set()

    def _fact_still_true(self, event: FactEvent) -> bool:
        """Is a fact that could not be committed yet still worth committing (not superseded)?"""
        state = self.node.state
        status = self.pg.status
        if isinstance(event, (ReplicaFollowing, ReplicaRejoined)):
            return state.primary == event.primary
        if isinstance(event, NodeFenced):
            return status is None or not status.running
        if isinstance(event, MemberActionCompleted):
            member = state.members.get(self.me)
            return member is not None and member.pending_action == event.action
        if isinstance(event, MemberLeaseAnnounced):
            member = state.members.get(self.me)
            return member is not None and member.lease_s != event.lease_s
        return True

    # ------------------------------------------------------------------------------- keeper

    async def _keeper_loop(self) -> None:
        """The keeper must outlive any one failed step: a step that raised used to end this task
        silently (nobody awaits it), and the node then never acted on its PostgreSQL again - an
        initial primary stayed stopped for good (found by CI)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_keeper.wait(), self.settings.report_interval_s)
            self._wake_keeper.clear()
            try:
                await self._keeper_step()
            except asyncio.CancelledError:
                if _stopping():
                    raise
                log.error("keeper step cancelled from inside; going on", exc_info=True)
                await asyncio.sleep(self.settings.report_interval_s)
            except Exception:
                log.exception("keeper step failed; going on")
                await asyncio.sleep(self.settings.report_interval_s)

    async def _keeper_step(self) -> None:
        if self.pg.status is None:
            return
        action = k.next_action(self._keeper_input(time.monotonic()))
        if isinstance(action, k.Nothing):
            return
        line = f"{type(action).__name__}: {action.why}"
        if line != self._last_action:
            log.info("keeper action=%s rule=%s reason=%s", type(action).__name__, action.rule, action.reason)
            self._last_action = line
        try:
            await self.executor.execute(action)
        except asyncio.CancelledError:
            if _stopping():
                raise
            log.error("keeper action cancelled from inside action=%s; going on", type(action).__name__,
                      exc_info=True)
            await asyncio.sleep(self.settings.report_interval_s)
        except Exception as exc:
            log.warning("keeper action failed action=%s error=%s", type(action).__name__, exc)
            await asyncio.sleep(self.settings.report_interval_s)
        await self.observer.observe()

    # ---------------------------------------------------------------------- live view (API)

    def local(self) -> LocalLive | None:
        status = self.pg.status
        if status is None:
            return None
        running = status.running and status.accepting
        rep = self.pg.replication
        return LocalLive(
            pg_running=running,
            in_recovery=status.in_recovery if running else None,
            streaming=bool(rep is not None and rep.streaming),
            reason=rep.reason if rep is not None else ("PostgreSQL is not running" if not running else "primary"),
            receive_lag_bytes=rep.receive_lag_bytes if rep is not None else None,
            replay_lag_bytes=rep.replay_lag_bytes if rep is not None else None,
            pending_restart=self.pg.pending_restart_names,
        )

    def members_live(self) -> dict[str, MemberLive]:
        """Every member as this arbiter last heard of it (only while this node leads Raft)."""
        arbiter = self.arbiter
        if not arbiter.leader_term:
            return {}
        now = time.monotonic()
        state = self.node.state
        observations = arbiter.observations
        primary = observations.get(state.primary or "")
        primary_pos = primary.wal_position if primary is not None and primary.role == "primary" else None
        rows = arbiter.streaming.rows if arbiter.streaming.primary == state.primary else {}
        out: dict[str, MemberLive] = {}
        for name in state.members:
            o = observations.get(name)
            fresh = is_fresh(o, now, self.settings)
            streaming: bool | None = None
            why = ""
            if name != state.primary:
                streaming, why = arbiter.streaming.verdict(name, now, self.settings.report_timeout_s)
            row = rows.get(name)
            replica = o is not None and o.role == "replica"
            out[name] = MemberLive(
                name=name,
                report_age_s=None if o is None else round(now - o.observed_at, 3),
                reporting=fresh,
                pg_running=o.pg_running if o is not None and fresh else None,
                role=o.role if o is not None and fresh else "unknown",
                timeline=o.timeline if o is not None else None,
                wal_position=o.wal_position if o is not None else None,
                receive_lag_bytes=max(0, primary_pos - o.received_lsn)
                if replica and o is not None and o.received_lsn is not None and primary_pos is not None
                else None,
                replay_lag_bytes=max(0, primary_pos - o.replayed_lsn)
                if replica and o is not None and o.replayed_lsn is not None and primary_pos is not None
                else None,
                streaming=streaming,
                streaming_reason=why,
                seen_by_primary=row.state if row is not None else None,
                pending_restart=o.pending_restart if o is not None else (),
            )
        return out

    def pending_restart(self) -> dict[str, tuple[str, ...]]:
        """Member -> parameters waiting for a restart, as each member's PostgreSQL reports it (the
        leader knows every member's; any other node only its own)."""
        if self.arbiter.leader_term:
            now = time.monotonic()
            return {
                name: o.pending_restart
                for name, o in self.arbiter.observations.items()
                if name in self.node.state.members and is_fresh(o, now, self.settings)
            }
        return {self.me: self.pg.pending_restart_names}

    def lease_seconds_left(self) -> float | None:
        """Seconds until this node must fence (None: it holds no lease)."""
        return self.lease.seconds_left()
