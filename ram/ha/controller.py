"""The HA controller of one node: observes its PostgreSQL, reports to the arbiter, renews the
primary lease, runs the arbiter when this node leads Raft, and executes the keeper's actions.

All decisions are the pure functions of :mod:`ram.ha.arbiter`, :mod:`ram.ha.keeper` and
:mod:`ram.ha.lease`; this module only feeds them observations and clocks and carries out what they
return — every action and decision is logged with its reason. Four loops run side by side so that a
slow PostgreSQL command (a clone, a rewind) never delays lease renewal or fencing:

* observe: status of the local PostgreSQL every ``report_interval_s``, reported to the leader;
* lease: while the keeper wants the lease, renew it every ``renew_interval_s``; a watchdog fences
  PostgreSQL the moment the lease runs out (see :mod:`ram.ha.lease` for the timing argument);
* arbiter: on the Raft leader, every ``report_interval_s``, decisions become one Raft proposal;
* keeper: the next action toward the committed state, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from ram.config import NodeConfig
from ram.consensus.runtime.node import ProposalError, RaftNode
from ram.consensus.types import Role
from ram.eventstore.commands import Arbitrate, FactEvent
from ram.eventstore.events import (
    MemberActionCompleted,
    MemberHealthChanged,
    NodeFenced,
    ReplicaFollowing,
    ReplicaRejoined,
)
from ram.ha import keeper as k
from ram.ha.arbiter import ArbiterInput, Wait, arbitrate, decide_grant, steady_holder
from ram.ha.candidates import MemberObservation, is_fresh
from ram.ha.dynconfig import DYNAMIC_HA_KEYS, effective_settings, pg_parameters
from ram.ha.facts import FactReporter
from ram.ha.fence_guard_client import FenceGuardProcess
from ram.ha.lease import ArbiterLeaseView, HolderLease
from ram.ha.live import LocalLive, MemberLive
from ram.ha.pgspec import endpoint_of, instance_spec
from ram.ha.reports import build_report, parse_report
from ram.ha.streaming import (
    LocalReplication,
    StreamingTracker,
    local_replication,
    replay_timeline,
    segment_file_name,
)
from ram.lsn import parse_lsn
from ram.postgres import dynamic_conf, sql
from ram.postgres.bootstrap import scram_verifier
from ram.postgres.instance import ManagedInstance
from ram.postgres.replication import streams_from
from ram.postgres.spec import PrimaryEndpoint
from ram.postgres.status import InstanceStatus

log = logging.getLogger("ram.ha")

_FENCE_WATCH_S = 0.02
_ARBITER_MIN_GAP_S = 0.02
#: While a promotion waits for its lease, ask again this often (not at the renewal interval).
_PROMOTE_RETRY_S = 0.05
#: A leader that hosts the steady primary hands Raft leadership to a replica's node once it has led
#: this long (and at most this often).
_LEADER_MOVE_AFTER_S = 2.0
#: How long a fact (health, following, fenced, ...) is retried while it can not be committed.
_FACT_RETRY_S = 30.0
#: A replica that streams from the committed primary while the state says otherwise re-reports it
#: at most this often (a lost ``replica_following`` must not stay lost).
_FOLLOWING_REPORT_EVERY_S = 2.0


async def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


class HAController:
    """Drives this node's PostgreSQL toward the committed cluster state."""

    def __init__(self, node: RaftNode, config: NodeConfig) -> None:
        self.node = node
        self.config = config
        #: What runs: the node file's [ha] overridden by the committed dynamic keys (ram.ha.dynconfig).
        self.settings = effective_settings(config.ha, node.state.dynamic_config)
        self._dynamic_seen: dict[str, Any] = dict(node.state.dynamic_config)
        self._dynamic_written: dict[str, str] | None = None
        self._dynamic_reload = False
        #: PostgreSQL's own list of parameters waiting for a restart (this node's instance).
        self.pending_restart_names: tuple[str, ...] = ()
        self.me = config.name
        self.instance = ManagedInstance(instance_spec(config, node.state))
        self.holder = HolderLease(self.settings)
        self.view = ArbiterLeaseView(self.settings)
        self.observations: dict[str, MemberObservation] = {}
        self.status: InstanceStatus | None = None
        self.pg_down_since: float | None = None
        self.rewind_failed = False
        self.lease_released = False
        self._leader_term = 0
        self._primary_down_since: float | None = None
        self._primary_last_ok_at: float | None = None
        self._operation_key: int | None = None
        self._operation_since: float | None = None
        self._last_action = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._wake_keeper = asyncio.Event()
        self._wake_arbiter = asyncio.Event()
        self._wake_lease = asyncio.Event()
        self._observing = asyncio.Lock()
        self._upkeep = asyncio.Lock()
        self._initializing = False
        self._demoting = False
        self._sync_names: str | None = None
        self._slots_for: tuple[list[str], tuple[int | None, int | None]] | None = None
        self._password_set = False
        self._following: str | None = None
        self._stopped_history: tuple[int, bool, int | None] | None = None
        self._timeline_start: int | None = None
        self._timeline_start_for: int | None = None
        self._action_done_position: int | None = None
        #: Fences PostgreSQL if this process dies or freezes while holding the lease.
        self.guard = FenceGuardProcess(self.instance.spec.data_dir)
        self._guard_fence_at: float | None = None
        self._leadership_moved_at = 0.0
        self._steady_primary_since: float | None = None
        self._following_reported_at = 0.0
        #: The arbiter's evidence of who streams from the primary (primary-side, see ram.ha.streaming).
        self.streaming = StreamingTracker()
        self._arbiter_since: float | None = None
        #: This standby's own replication sample (None unless a running standby).
        self.replication: LocalReplication | None = None
        #: Since when this standby runs, pointed at a healthy committed primary, without streaming.
        self._not_streaming_since: float | None = None
        self._stuck_rewound = False
        self._wal_segment_size: int | None = None
        self.facts = FactReporter(
            node,
            self._fact_still_true,
            proposal_timeout_s=self.settings.lease_s * 3,
            retry_every_s=self.settings.report_interval_s,
            retry_s=_FACT_RETRY_S,
        )
        node.on_report = self._on_report
        node.lease_decider = self._decide_lease
        node.on_applied = self._on_applied

    # ----------------------------------------------------------------------------------- life

    async def start(self) -> None:
        await self.guard.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._finish_crash_recovery(), name="ram.ha.crash-recovery"),
            loop.create_task(
                self._every(lambda: self.settings.report_interval_s, self._observe), name="ram.ha.observe"
            ),
            loop.create_task(self._lease_loop(), name="ram.ha.lease"),
            loop.create_task(self._fence_watch(), name="ram.ha.fence"),
            loop.create_task(self._arbiter_loop(), name="ram.ha.arbiter"),
            loop.create_task(self._keeper_loop(), name="ram.ha.keeper"),
        ]
        log.info("ha controller started member=%s pgdata=%s", self.me, self.instance.spec.data_dir)

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
        await self.facts.close()
        self.node.on_report = None
        self.node.lease_decider = None
        self.node.on_applied = None
        with contextlib.suppress(Exception):
            await self.instance.stop("fast")
        await self.guard.close()
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

    # ---------------------------------------------------------------------------- observing

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
        self._wake_arbiter.set()
        self._wake_lease.set()

    async def _observe(self) -> None:
        """Read the local PostgreSQL's status and report it (serialised: the observe loop and the
        keeper both call this, and two interleaved observations could report an older one last)."""
        async with self._observing:
            await self._observe_unlocked()
        await self._primary_upkeep()
        await self._dynamic_upkeep()

    async def _dynamic_upkeep(self) -> None:
        """Render the committed ``postgresql.parameters.*`` into ram.dynamic.conf (also while
        stopped, so the next start has them), reload a running server after a change, and read back
        what PostgreSQL says still waits for a restart."""
        if self._initializing or not self.instance.initialized:
            return
        wanted = pg_parameters(self.node.state.dynamic_config)
        if wanted != self._dynamic_written:
            if await dynamic_conf.write(self.instance.spec, wanted):
                self._dynamic_reload = True
                log.info("dynamic PostgreSQL parameters written parameters=%s", ",".join(sorted(wanted)) or "none")
            self._dynamic_written = wanted
        status = self.status
        if status is None or not (status.running and status.accepting):
            return
        try:
            if self._dynamic_reload:
                await dynamic_conf.reload(self.instance.spec)
                self._dynamic_reload = False
            self.pending_restart_names = await dynamic_conf.pending_restart(self.instance.spec)
        except Exception as exc:
            log.debug("dynamic parameters: reload or pending-restart read failed error=%s", exc)

    async def _primary_upkeep(self) -> None:
        """Slots and the superuser password on the primary: outside the observation lock, so a
        statement that waits on the server can never hold up reporting, fencing or the keeper."""
        status = self.status
        if self._upkeep.locked() or status is None or not (status.running and status.accepting):
            return
        if status.in_recovery is not False or self.node.state.primary != self.me:
            return
        async with self._upkeep:
            await self._ensure_slots((status.timeline, status.pid))
            await self._ensure_superuser_password()

    async def _observe_unlocked(self) -> None:
        if self._initializing:
            return  # initdb's private server is not the instance: neither report nor touch it
        now = time.monotonic()
        try:
            status = await asyncio.wait_for(self.instance.status(), self.settings.report_timeout_s)
        except Exception as exc:  # a hung or broken instance is reported as down, never crashes us
            log.warning("postgres status failed error=%s", exc)
            status = InstanceStatus(running=False, error=str(exc))
        running = status.running and status.accepting
        if running and status.in_recovery:
            status = dataclasses.replace(status, timeline=await self._standby_timeline(status))
            self.replication = self._local_replication(status)
        else:
            self.replication = None
        self._track_streaming(status, now)
        self.status = status
        if not running and self.instance.initialized:
            await self._read_stopped_history()
        else:
            self._stopped_history = None
        if running:
            self.pg_down_since = None
        elif self.pg_down_since is None:
            self.pg_down_since = now
        self._wake_keeper.set()
        self._sync_names = None
        if running and status.in_recovery is False:
            self._sync_names = await self._sync_standby_names()
            # Before the report: the arbiter records a promotion with this fork point, and a fork
            # point from the previous timeline (or none) misjudges every replica's divergence.
            await self._read_timeline_start(status.timeline)
        self._send_report(status)
        if running and status.in_recovery:
            self._reconcile_following(status, now)

    async def _ensure_superuser_password(self) -> None:
        """Set the configured superuser password once per primary term (a SCRAM verifier, so the
        clear-text password never reaches the server or its log); replicas get it by replication."""
        password = self.config.postgres.superuser_password
        if not password or self._password_set:
            return
        verifier = scram_verifier(password)
        # synchronous_commit=local: a new primary may still wait for a synchronous standby that is
        # gone (until the keeper reconfigures it); this bookkeeping must not wait with it.
        await sql.execute(
            self.instance.spec,
            "BEGIN; SET LOCAL synchronous_commit = local; "
            f"ALTER ROLE postgres PASSWORD {sql.quote_literal(verifier)}; COMMIT",
        )
        self._password_set = True

    async def _standby_timeline(self, status: InstanceStatus) -> int | None:
        """The timeline a standby's replayed WAL is on, from facts that never run ahead of it
        (:func:`ram.ha.streaming.replay_timeline`): the live walreceiver's timeline, else the
        timelines of the WAL segment files holding the replay position, else the last checkpoint's.
        Never the newest timeline history file: a standby fetches that even when it can not follow
        the new timeline because it replayed past its fork point (a diverged standby looked healthy)."""
        receiver = status.wal_receiver
        receiver_tli = receiver.received_tli if receiver is not None else None
        segment_tlis: list[int] = []
        if not receiver_tli and status.replayed_lsn:
            try:
                if self._wal_segment_size is None:
                    rows = await sql.fetch(
                        self.instance.spec, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"
                    )
                    self._wal_segment_size = int(rows[0][0])
                suffix = segment_file_name(0, max(0, status.replayed_lsn - 1), self._wal_segment_size)[8:]
                rows = await sql.fetch(
                    self.instance.spec,
                    "SELECT ('x' || substr(name, 1, 8))::bit(32)::int FROM pg_ls_waldir() "
                    "WHERE length(name) = 24 AND substr(name, 9) = $1",
                    suffix,
                )
                segment_tlis = [int(r[0]) for r in rows]
            except Exception as exc:
                log.debug("could not list WAL segment files error=%s", exc)
        return replay_timeline(
            receiver_tli=receiver_tli, segment_timelines=segment_tlis, checkpoint_tli=status.checkpoint_timeline
        )

    async def _sync_standby_names(self) -> str | None:
        """What the primary enforces right now (the arbiter commits a sync set only once it is)."""
        try:
            rows = await sql.fetch(self.instance.spec, "SELECT current_setting('synchronous_standby_names')")
        except Exception as exc:
            log.warning("could not read synchronous_standby_names error=%s", exc)
            return None
        return str(rows[0][0])

    async def _read_timeline_start(self, timeline: int | None) -> None:
        """Where this primary's timeline forked from its parent (the switch point in the timeline
        history file): what replicas' divergence is judged against."""
        if timeline is None or timeline <= 1 or self._timeline_start_for == timeline:
            return
        try:
            text = await sql.fetch(
                self.instance.spec,
                "SELECT pg_read_file('pg_wal/' || lpad(upper(to_hex($1::int)), 8, '0') || '.history')",
                timeline,
            )
            last = [ln for ln in str(text[0][0]).splitlines() if ln.strip() and not ln.startswith("#")][-1]
            self._timeline_start = parse_lsn(last.split()[1])
            self._timeline_start_for = timeline
        except Exception as exc:
            log.warning("could not read the timeline history timeline=%s error=%s", timeline, exc)

    async def _read_stopped_history(self) -> None:
        """For a stopped data directory: its checkpoint timeline and whether it was a standby, so the
        keeper can tell if it may simply start streaming or must be rewound first."""
        if self._stopped_history is not None:
            return
        try:
            fields = await self.instance.controldata()
            timeline = int(fields.get("Latest checkpoint's TimeLineID", "0"))
        except Exception as exc:
            log.warning("pg_controldata failed error=%s", exc)
            return
        cluster_state = fields.get("Database cluster state", "")
        if cluster_state in ("in crash recovery", "starting up", "shutting down"):
            return  # a single-user recovery or a start/stop is under way: ask again next time
        was_standby = cluster_state in ("shut down in recovery", "in archive recovery")
        stopped_lsn = None
        if cluster_state == "shut down":  # a clean stop: the shutdown checkpoint is its last WAL record
            with contextlib.suppress(ValueError):
                stopped_lsn = parse_lsn(fields.get("Latest checkpoint location", ""))
        self._stopped_history = (timeline, was_standby, stopped_lsn)

    def _local_replication(self, status: InstanceStatus) -> LocalReplication:
        state = self.node.state
        receiver = status.wal_receiver
        endpoint = endpoint_of(state, state.primary) if state.primary and state.primary != self.me else None
        return local_replication(
            receiver_status=receiver.status if receiver is not None else None,
            receiver_tli=receiver.received_tli if receiver is not None else None,
            connected_to_primary=endpoint is not None
            and receiver is not None
            and (receiver.sender_host, receiver.sender_port) == (endpoint.host, endpoint.port),
            cluster_timeline=state.timeline,
            latest_end_lsn=receiver.latest_end_lsn if receiver is not None else None,
            flushed_lsn=receiver.flushed_lsn if receiver is not None else None,
            replayed_lsn=status.replayed_lsn,
        )

    def _track_streaming(self, status: InstanceStatus, now: float) -> None:
        """How long this standby has been running without streaming while the committed primary is
        healthy and nothing moves it (the keeper's fallback for a standby stuck on a fork)."""
        state = self.node.state
        primary = state.members.get(state.primary or "")
        expected = (
            status.running
            and status.accepting
            and status.in_recovery is True
            and primary is not None
            and primary.name != self.me
            and primary.healthy is True
            and state.current_operation is None
        )
        streaming = self.replication is not None and self.replication.streaming
        if streaming:
            self._stuck_rewound = False
        if not expected or streaming:
            self._not_streaming_since = None
        elif self._not_streaming_since is None:
            self._not_streaming_since = now

    def _diverged(self, status: InstanceStatus) -> bool | None:
        """Is the running instance's WAL off the committed primary's history?

        A standby that streams from the committed primary is not: PostgreSQL refuses to stream a
        timeline that is not a child of the standby's own. Otherwise judge by the REPLAYED position
        (what the received position says about the timeline lags behind while a walreceiver
        switches upstreams, and mistaking that for divergence would rewind a healthy replica)."""
        state = self.node.state
        if status.in_recovery:
            endpoint = endpoint_of(state, state.primary) if state.primary else None
            receiver = status.wal_receiver
            if (
                endpoint is not None
                and streams_from(receiver, endpoint)
                and receiver is not None
                and receiver.received_tli == state.timeline
            ):
                return False
            return k.is_diverged(state, status.timeline, status.replayed_lsn)
        return k.is_diverged(state, status.timeline, status.wal_position)

    def _stopped_diverged(self) -> bool | None:
        """A stopped copy is safe to start as a standby only if it was a standby on the cluster's
        current timeline; anything else (a former primary, an older timeline) is rewound first —
        pg_rewind itself finds out when nothing needs rewinding."""
        if self._stopped_history is None or self.node.state.timeline is None:
            return None
        timeline, was_standby, _ = self._stopped_history
        return not (was_standby and timeline == self.node.state.timeline)

    async def _ensure_slots(self, instance_key: tuple[int | None, int | None]) -> None:
        """The primary keeps a physical slot for every other member, so WAL a replica still needs is
        never recycled (a removed member's slot is dropped). Checked again whenever the instance
        changed (restart, promotion, re-clone: a cloned data directory has no slots)."""
        wanted = sorted(name for name in self.node.state.members if name != self.me)
        if (wanted, instance_key) == self._slots_for:
            return
        created = await self.instance.ensure_slots(wanted, drop_others=True)
        self._slots_for = (wanted, instance_key)
        if created:
            log.info("replication slots created slots=%s", ",".join(created))

    def _send_report(self, status: InstanceStatus) -> None:
        self.node.send_report(
            build_report(
                self.me,
                status,
                state_position=self.node.state.last_position,
                lease_released=self.lease_released,
                timeline_start_lsn=self._timeline_start
                if status.timeline is not None and self._timeline_start_for == status.timeline
                else None,
                stopped_lsn=self._stopped_history[2] if self._stopped_history else None,
                sync_standby_names=self._sync_names,
                replication=self.replication,
                pending_restart=self.pending_restart_names,
            )
        )

    def _on_report(self, node_id: int, body: bytes) -> None:
        now = time.monotonic()
        try:
            obs = parse_report(body, now)
        except ValueError as exc:
            log.warning("dropping malformed member report node_id=%d error=%s", node_id, exc)
            return
        member = self.node.state.members.get(obs.name)
        if member is None or member.node_id != node_id:
            # A node speaks only for itself: a report about another member is dropped.
            log.warning("dropping a report about %s from node %d (not that member)", obs.name[:64], node_id)
            return
        self.observations[obs.name] = obs
        if obs.name == self.node.state.primary and obs.role == "primary" and obs.pg_running:
            self.streaming.observe_primary(obs.name, obs.wal_position, obs.standbys, now)
        self._wake_arbiter.set()

    # ------------------------------------------------------------------------------ arbiter

    def _arbiter_input(self, now: float) -> ArbiterInput:
        state = self.node.state
        primary = state.primary
        if primary is not None:
            obs = self.observations.get(primary)
            down = obs is None or now - obs.observed_at > self.settings.report_timeout_s or not obs.pg_running
            if obs is not None and obs.pg_running and obs.role == "primary":
                self._primary_last_ok_at = obs.observed_at
            if not down:
                self._primary_down_since = None
            elif self._primary_down_since is None:
                self._primary_down_since = now
        op = state.current_operation
        key = op.started_position if op is not None else None
        if key != self._operation_key:
            self._operation_key, self._operation_since = key, (now if key is not None else None)
        due = None
        if op is not None and op.kind == "switchover" and op.scheduled_at is not None \
                and op.scheduled_at <= datetime.now(UTC):
            due = op
        return ArbiterInput(
            now=now,
            state=state,
            observations=dict(self.observations),
            lease=self.view,
            settings=self.settings,
            primary_down_since=self._primary_down_since,
            primary_last_ok_at=self._primary_last_ok_at,
            pending_switchover=due,
            operation_since=self._operation_since,
            arbiter_since=self._arbiter_since,
            streaming={
                name: self.streaming.verdict(name, now, self.settings.report_timeout_s)
                for name in state.members
                if name != primary
            },
        )

    def _leading(self, now: float) -> bool:
        """Leader, with the announcement of our term applied (so the state is current for this term)."""
        node = self.node
        if node.role is not Role.LEADER:
            if self._leader_term:
                self._leader_term = 0
                self.view.on_lost_leadership()
                self._primary_down_since = self._primary_last_ok_at = None
                self._operation_key = self._operation_since = None
                self._arbiter_since = None
                self.streaming.reset()
            return False
        state = node.state
        if state.raft_term != node.term or state.raft_leader_node_id != self.config.node_id:
            return False
        if self._leader_term != node.term:
            self._leader_term = node.term
            self._arbiter_since = now
            self.streaming.reset()
            self.view.on_became_leader(now, steady_holder(state))
            log.info("arbiter active term=%d steady_holder=%s", node.term, steady_holder(state))
        return True

    def _decide_lease(self, node_id: int, now: float) -> tuple[bool, str]:
        if not self._leading(now):
            return False, "arbiter not ready (new leader)"
        holder = next((m.name for m in self.node.state.members.values() if m.node_id == node_id), None)
        if holder is None:
            return False, f"node {node_id} is not a member"
        verdict = decide_grant(self._arbiter_input(now), holder)
        return verdict.granted, verdict.reason

    async def _arbiter_loop(self) -> None:
        """Arbitrate on every tick, on every applied change and on every member report (at most
        every ``_ARBITER_MIN_GAP_S``), so a decision waits for no timer."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_arbiter.wait(), self.settings.report_interval_s)
            self._wake_arbiter.clear()
            try:
                await self._arbitrate()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ha step failed step=arbitrate")
            await asyncio.sleep(_ARBITER_MIN_GAP_S)

    def _move_leadership_off_the_primary(self, now: float) -> None:
        """Keep the Raft leader and the primary on different nodes.

        When one node is both, losing it costs an election AND then the full lease wait of the new
        leader (which must presume the last grant happened as late as its own election) before a
        failover; with the leader elsewhere the survivors just wait out the lease. So a leader that
        hosts the steady primary hands leadership to a healthy replica's node."""
        node = self.node
        state = node.state
        if steady_holder(state) != self.me or not node.leader_since:
            self._steady_primary_since = None
            return
        if self._steady_primary_since is None:
            self._steady_primary_since = now  # let the follow-up decisions of a failover commit first
        settled = min(now - node.leader_since, now - self._steady_primary_since, now - self._leadership_moved_at)
        if settled < _LEADER_MOVE_AFTER_S:
            return
        replicas = {
            m.node_id
            for m in state.members.values()
            if m.name != self.me and not m.is_learner and m.healthy and m.reported_role == "replica"
            and is_fresh(self.observations.get(m.name), now, self.settings)
        }
        if not replicas:
            return
        target = node.transfer_leadership(among=replicas)
        if target is not None:
            self._leadership_moved_at = now
            log.info("moving raft leadership off the primary's node target=%d reason=%s", target,
                     "a node loss would otherwise need an election before the failover")

    async def _arbitrate(self) -> None:
        now = time.monotonic()
        if not self._leading(now):
            return
        self._move_leadership_off_the_primary(now)
        inp = self._arbiter_input(now)
        decisions = [d for d in arbitrate(inp) if not isinstance(d, Wait)]
        if not decisions:
            return
        events = [ev for d in decisions for ev in d.to_events()]
        revoked = [d.revokes for d in decisions if getattr(d, "revokes", None)]
        for d in decisions:
            log.info("arbiter decision=%s rule=%s reason=%s", type(d).__name__, d.rule, d.reason)
        for name in revoked:
            assert name is not None
            self.view.revoke(name)
        try:
            result = await self.node.propose(
                Arbitrate(events=tuple(events), based_on=inp.state.last_position, reason=decisions[0].why[:1000])
            )
        except ProposalError as exc:
            log.warning("arbiter decision not committed error=%s", exc)
            for name in revoked:
                assert name is not None
                self.view.restore(name)
            return
        for name in revoked:
            assert name is not None
            if result.events:
                self.view.revoke(name, until_position=result.index)
            else:
                self.view.restore(name)

    # -------------------------------------------------------------------------------- lease

    def _keeper_input(self, now: float) -> k.KeeperInput:
        status = self.status or InstanceStatus(running=False)
        running = status.running and status.accepting
        upstream = None
        receiver = status.wal_receiver
        if receiver is not None:
            for member in self.node.state.members.values():
                if (member.pg_host, member.pg_port) == (receiver.sender_host, receiver.sender_port):
                    upstream = member.name
        pg = k.LocalPostgres(
            has_data=self.instance.initialized,
            running=running,
            in_recovery=status.in_recovery if running else None,
            timeline=status.timeline,
            wal_position=status.wal_position,
            upstream=upstream,
            sync_standby_names=self._sync_names,
        )
        diverged = self._diverged(status) if running else self._stopped_diverged()
        return k.KeeperInput(
            me=self.me,
            now=now,
            state=self.node.state,
            pg=pg,
            lease_valid=self.holder.holds(now),
            settings=self.settings,
            diverged=diverged,
            pg_down_since=self.pg_down_since,
            rewind_failed=self.rewind_failed,
            completed_action_position=self._action_done_position,
            not_streaming_for=None if self._not_streaming_since is None else now - self._not_streaming_since,
            stuck_rewound=self._stuck_rewound,
        )

    async def _lease_loop(self) -> None:
        """Renew every ``renew_interval_s`` while the keeper wants the lease. A node that wants it
        without holding it (a candidate about to promote) asks again every ``_PROMOTE_RETRY_S`` and on
        every committed change, and wakes the keeper the moment it is granted."""
        interval = self.settings.renew_interval_s
        while True:
            started = time.monotonic()
            wait = interval
            try:
                if k.wants_lease(self._keeper_input(started)):
                    held = self.holder.holds(started)
                    token = self.holder.on_renew_sent(started)
                    granted, reason = await self.node.request_lease(timeout=interval * 2)
                    if granted:
                        self.holder.on_renew_ok(token)
                        self._tell_guard()
                        self.lease_released = False
                        if not held:
                            self._wake_keeper.set()
                    else:
                        log.debug("lease not renewed reason=%s", reason)
                        if not held:
                            wait = _PROMOTE_RETRY_S
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease renewal failed")
            self._wake_lease.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_lease.wait(), max(0.0, wait - (time.monotonic() - started)))

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

    def _release_lease(self) -> None:
        self.holder.release()
        self._tell_guard()

    async def _fence_watch(self) -> None:
        """Fence the moment the lease runs out while PostgreSQL may accept writes (not on the keeper's
        schedule: a clone or rewind in progress must not delay it)."""
        while True:
            await asyncio.sleep(_FENCE_WATCH_S)
            await self.guard.ensure_running()
            status = self.status
            writable = status is not None and status.running and status.in_recovery is False
            if self._initializing or self._demoting:
                # initdb runs a private, socket-only server; a demotion is already stopping cleanly.
                continue
            if writable and self.holder.must_fence(time.monotonic()):
                await self._fence("lease expired (not renewed in time)")

    async def _on_demote_stopped(self) -> None:
        """Switchover: PostgreSQL stopped cleanly and accepts no writes. Give the lease up and report
        the final WAL position now, so the candidate can promote while we restart as a standby."""
        self._release_lease()
        self.lease_released = True
        self._stopped_history = None
        async with self._observing:
            self.status = InstanceStatus(running=False)
            self._sync_names = None
            await self._read_stopped_history()
            self._send_report(self.status)

    async def _fence(self, reason: str) -> None:
        log.warning("fencing postgres member=%s reason=%s", self.me, reason)
        await self.instance.fence()
        self.status = InstanceStatus(running=False)
        self._release_lease()
        self.facts.report(NodeFenced(name=self.me, reason=reason[:1000], lease_expired_at_ms=int(time.time() * 1000)))

    def _reconcile_following(self, status: InstanceStatus, now: float) -> None:
        """The committed ``following`` of this replica catches up with what it streams from."""
        state = self.node.state
        primary = state.primary
        member = state.members.get(self.me)
        if primary is None or primary == self.me or member is None or member.following == primary:
            return
        endpoint = endpoint_of(state, primary)
        if endpoint is None or not streams_from(status.wal_receiver, endpoint):
            return
        if now - self._following_reported_at < _FOLLOWING_REPORT_EVERY_S:
            return
        self._following_reported_at = now
        self._following = primary
        self.facts.report(ReplicaFollowing(name=self.me, primary=primary))

    def _report_following(self, primary: str) -> None:
        """Record whom we follow, once per change (not on every re-point)."""
        member = self.node.state.members.get(self.me)
        if member is not None and member.following == primary and self._following == primary:
            return
        self._following = primary
        self.facts.report(ReplicaFollowing(name=self.me, primary=primary))

    def _fact_still_true(self, event: FactEvent) -> bool:
        """Is a fact that could not be committed yet still worth committing (not superseded)?"""
        state = self.node.state
        status = self.status
        if isinstance(event, (ReplicaFollowing, ReplicaRejoined)):
            return state.primary == event.primary
        if isinstance(event, NodeFenced):
            return status is None or not status.running
        if isinstance(event, MemberActionCompleted):
            member = state.members.get(self.me)
            return member is not None and member.pending_action == event.action
        return True

    # ------------------------------------------------------------------------------- keeper

    async def _keeper_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_keeper.wait(), self.settings.report_interval_s)
            self._wake_keeper.clear()
            if self.status is None:
                continue
            action = k.next_action(self._keeper_input(time.monotonic()))
            if isinstance(action, k.Nothing):
                continue
            line = f"{type(action).__name__}: {action.why}"
            if line != self._last_action:
                log.info("keeper action=%s rule=%s reason=%s", type(action).__name__, action.rule, action.reason)
                self._last_action = line
            try:
                await self._execute(action)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("keeper action failed action=%s error=%s", type(action).__name__, exc)
                await asyncio.sleep(self.settings.report_interval_s)
            await self._observe()

    async def _execute(self, action: k.Action) -> None:
        inst = self.instance
        state = self.node.state
        if isinstance(action, k.Fence):
            await self._fence(action.why)
        elif isinstance(action, k.InitDb):
            self._initializing = True
            try:
                await inst.initdb_primary(start=False)
            finally:
                self._initializing = False
        elif isinstance(action, k.StartPostgres):
            if action.role == "standby" and action.upstream:
                endpoint = endpoint_of(state, action.upstream)
                if endpoint is not None:
                    await inst.follow(endpoint, wait=False)
                    return
            await inst.start()
        elif isinstance(action, k.RestartCrashed):
            await inst.start()
        elif isinstance(action, k.Promote):
            if not self.holder.holds(time.monotonic()):
                return
            timeline = await inst.promote()
            log.info("promoted member=%s timeline=%s", self.me, timeline)
        elif isinstance(action, k.Demote):
            endpoint = endpoint_of(state, action.follow)
            if endpoint is None:
                return
            # The demotion starts with a clean stop (no new writes from then on); the watchdog must not
            # turn it into an immediate stop, which would lose the WAL the candidate is waiting for.
            self._demoting = True
            try:
                await inst.demote(endpoint, on_stopped=self._on_demote_stopped)
                await self._observe()
            finally:
                self._demoting = False
            self._release_lease()
            self.lease_released = True
            self._report_following(action.follow)
        elif isinstance(action, k.Follow):
            endpoint = endpoint_of(state, action.primary)
            if endpoint is not None:
                # Do not wait for the walreceiver: the upstream may be down right now, and the keeper
                # must stay free to promote this node if it is chosen.
                await inst.follow(endpoint, wait=False)
                self._report_following(action.primary)
        elif isinstance(action, (k.Rewind, k.Clone)):
            endpoint = endpoint_of(state, action.primary)
            if endpoint is None:
                return
            if isinstance(action, k.Clone):
                # Never wipe what we have unless the source is there to clone from right now.
                if inst.initialized and not await _reachable(endpoint.host, endpoint.port):
                    log.warning("not re-cloning: %s is unreachable; keeping the data directory", action.primary)
                    await asyncio.sleep(self.settings.report_interval_s * 4)
                    return
                await self._clone_afresh(endpoint)
                self._not_streaming_since = None
                self._report_following(action.primary)
                return
            if not await _reachable(endpoint.host, endpoint.port):
                # pg_rewind needs its source; an unreachable primary is not a failed rewind.
                await asyncio.sleep(self.settings.report_interval_s * 4)
                return
            result = await inst.rejoin(endpoint, allow_clone=False)
            if result.method == "none" and not result.started:
                # Only a rewind that ran and failed counts (it unlocks the re-clone fallback).
                self.rewind_failed = "connection to server" not in result.rewind.message
                log.warning("rewind failed member=%s message=%s", self.me, result.rewind.message)
                await asyncio.sleep(self.settings.report_interval_s * 4)
                return
            self.rewind_failed = False
            self._stopped_history = None
            if action.stuck:
                self._stuck_rewound = True
            self._not_streaming_since = None
            self.facts.report(ReplicaRejoined(name=self.me, primary=action.primary, method="rewind"))
        elif isinstance(action, k.ConfigureSync):
            await sql.execute(
                inst.spec, f"ALTER SYSTEM SET synchronous_standby_names = {sql.quote_literal(action.standby_names)}"
            )
            await sql.execute(inst.spec, "SELECT pg_reload_conf()")
        elif isinstance(action, (k.RestartPostgres, k.Reinit, k.RefuseMemberAction)):
            await self._member_action(action)
        elif isinstance(action, k.ReportCannotRejoin):
            self.facts.report(
                MemberHealthChanged(name=self.me, healthy=False, pg_running=False, reason=action.why[:1000])
            )

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
            try:
                await self.instance.restart("fast")
                ok, message = True, f"PostgreSQL restarted in {time.monotonic() - started:.1f} s"
            except Exception as exc:
                ok, message = False, f"restart failed: {exc}"
        else:
            kind = "reinit"
            ok, message = await self._reinit(action.primary)
            if ok:
                message = f"{message} in {time.monotonic() - started:.1f} s"
        self._action_done_position = action.position
        log.info("member action done action=%s ok=%s message=%s", kind, ok, message)
        self.facts.report(MemberActionCompleted(name=self.me, action=kind, ok=ok, message=message[:1000]))

    async def _clone_afresh(self, endpoint: PrimaryEndpoint) -> None:
        """Replace the data directory with a fresh clone of ``endpoint`` and start it as its standby
        (callers check first that the source is reachable: nothing is wiped otherwise)."""
        inst = self.instance
        if inst.initialized:
            await inst.stop("fast")
        await inst.clone_from(endpoint, wipe=True)
        await inst.start()
        self.rewind_failed = False
        self._stopped_history = None

    async def _reinit(self, primary: str) -> tuple[bool, str]:
        endpoint = endpoint_of(self.node.state, primary)
        if endpoint is None:
            return False, f"reinit failed: {primary} has no PostgreSQL address"
        if not await _reachable(endpoint.host, endpoint.port):
            return False, f"reinit not started: {primary} ({endpoint.host}:{endpoint.port}) is unreachable; data kept"
        try:
            await self._clone_afresh(endpoint)
        except Exception as exc:
            return False, f"reinit failed: {exc}"
        self.facts.report(ReplicaRejoined(name=self.me, primary=primary, method="clone"))
        return True, f"re-cloned from {primary}"

    # ---------------------------------------------------------------------- live view (API)

    def local(self) -> LocalLive | None:
        status = self.status
        if status is None:
            return None
        running = status.running and status.accepting
        rep = self.replication
        return LocalLive(
            pg_running=running,
            in_recovery=status.in_recovery if running else None,
            streaming=bool(rep is not None and rep.streaming),
            reason=rep.reason if rep is not None else ("PostgreSQL is not running" if not running else "primary"),
            receive_lag_bytes=rep.receive_lag_bytes if rep is not None else None,
            replay_lag_bytes=rep.replay_lag_bytes if rep is not None else None,
            pending_restart=self.pending_restart_names,
        )

    def members_live(self) -> dict[str, MemberLive]:
        """Every member as this arbiter last heard of it (only while this node leads Raft)."""
        if not self._leader_term:
            return {}
        now = time.monotonic()
        state = self.node.state
        primary = self.observations.get(state.primary or "")
        primary_pos = primary.wal_position if primary is not None and primary.role == "primary" else None
        rows = self.streaming.rows if self.streaming.primary == state.primary else {}
        out: dict[str, MemberLive] = {}
        for name in state.members:
            o = self.observations.get(name)
            fresh = is_fresh(o, now, self.settings)
            streaming: bool | None = None
            why = ""
            if name != state.primary:
                streaming, why = self.streaming.verdict(name, now, self.settings.report_timeout_s)
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
        if self._leader_term:
            now = time.monotonic()
            return {
                name: o.pending_restart
                for name, o in self.observations.items()
                if name in self.node.state.members and is_fresh(o, now, self.settings)
            }
        return {self.me: self.pending_restart_names}

    def lease_seconds_left(self) -> float | None:
        """Seconds until this node must fence (None: it holds no lease)."""
        now = time.monotonic()
        if not self.holder.holds(now):
            return None
        return self.holder.time_left(now)
